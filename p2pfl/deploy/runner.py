"""One organisation's long-lived node process: ``p2pfl node --config node.toml``.

It builds the organisation's learner from its own code, joins the consortium with
CurveZMQ on every link (plain text only with ``insecure``), waits for its start
condition, checkpoints after every round, resumes from its last checkpoint when
restarted, reloads the allow-list on SIGHUP or when the consortium file changes, stops
cleanly on SIGINT/SIGTERM, and saves its final model as a plain torch state_dict.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import inspect
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import zmq

from p2pfl.deploy.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    restore_learner,
    save_checkpoint,
    save_final_model,
)
from p2pfl.deploy.config import OrgNodeConfig, require_secure_neighbourhood, resolve
from p2pfl.errors import ConfigError, P2PFLError
from p2pfl.learning.learner import Learner, TorchLearner, Weights
from p2pfl.node.node import Node, NodeConfig, RoundMetrics
from p2pfl.node.peers import StartCondition
from p2pfl.node.records import NodeStats, json_line, metrics_row
from p2pfl.topology import RoundPlan, StaticSchedule, build_topology
from p2pfl.topology.schedule import GossipSchedule
from p2pfl.transport import ZmqTransport

log = logging.getLogger(__name__)

#: How often the consortium file's modification time is checked for an allow-list reload.
RELOAD_POLL_SECONDS = 2.0
#: How long a stopping node waits for its last progress reports to reach the MQTT broker.
PROGRESS_FLUSH_SECONDS = 5.0


@dataclass(frozen=True)
class Membership:
    """Who this node talks to: schedule, peer endpoints, public keys (if any)."""

    schedule: GossipSchedule
    endpoints: Mapping[str, str]
    keys_loader: Callable[[], dict[str, str]] | None  # name -> public key, re-read on reload
    watch_file: Path | None  # the file whose change triggers a reload
    consortium_name: str
    own_endpoint: str | None = None  # where the others reach this node (None: only its bind is known)


@dataclass(frozen=True)
class RunOutcome:
    """How a node process ended."""

    completed: bool
    last_round: int  # last finished round (-1 if none)
    final_model: Path | None


def build_learner(config: OrgNodeConfig, base: Path) -> Learner:
    """Import ``module:function`` and call it with ``learner_args``.

    The node.toml folder is importable, so an organisation can keep its learner module
    next to its config. ``index`` (which init writes into every node.toml) is passed
    only to a function that takes it; any other argument mismatch, an import failure
    or an exception from the function is a ConfigError naming ``learner``/``learner_args``.
    """
    factory = import_learner(config.learner, base)
    learner = _call_learner(config.learner, factory, learner_kwargs(config.learner, factory, config.learner_args))
    for method in ("train", "evaluate", "get_weights", "set_weights"):
        if not callable(getattr(learner, method, None)):
            raise ConfigError(
                "learner", f"{config.learner} returned {type(learner).__name__} without {method}(); "
                "return a p2pfl.TorchLearner or another Learner"
            )
    if isinstance(learner, TorchLearner):  # the schedule in node.toml wins
        learner.local_epochs = config.local_epochs
        learner.local_steps = config.local_steps or None
    return learner


def import_learner(spec: str, base: Path) -> Callable[..., Any]:
    """The function ``module:function`` names, with ``base`` (node.toml's folder) importable."""
    module_name, _, function_name = spec.partition(":")
    folder = str(base.resolve())  # absolute: the node may run from any working directory
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)  # first, so a same-named module elsewhere cannot shadow it
    importlib.invalidate_caches()  # the module may have been written after the interpreter started
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not _is_package_of(exc.name, module_name):
            raise _import_failed(module_name, exc) from exc
        file = module_name.replace(".", "/") + ".py"
        raise ConfigError(
            "learner", f"cannot import {module_name!r} for {spec}: put {file} next to node.toml in {folder}, "
            "or install it / add its folder to PYTHONPATH"
        ) from None
    except Exception as exc:  # the module's own code failed while importing
        raise _import_failed(module_name, exc) from exc
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ConfigError(
            "learner", f"{module_name} ({getattr(module, '__file__', '?')}) has no function {function_name!r}: "
            "fix the name after ':' in learner"
        )
    return factory


def _is_package_of(missing: str, module_name: str) -> bool:
    """Whether the missing module is ``module_name`` itself or one of its parent packages."""
    return module_name == missing or module_name.startswith(missing + ".")


def _import_failed(module_name: str, exc: BaseException) -> ConfigError:
    log.debug("importing %s failed", module_name, exc_info=exc)
    return ConfigError("learner", f"importing {module_name} failed: {type(exc).__name__}: {exc}")


def learner_kwargs(spec: str, factory: Callable[..., Any], args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` checked against the function's signature; ``index`` dropped if it is not taken.

    Raises:
        ConfigError: ``learner_args`` names an argument the function does not take, or
            leaves out one it requires.
    """
    kwargs = dict(args)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have none: let the call decide
        return kwargs
    if "index" in kwargs and not _accepts(signature, "index"):
        # init writes every member's position; a learner that does not ask for it has no use for it
        del kwargs["index"]
    try:
        signature.bind(**kwargs)
    except TypeError:
        raise ConfigError("learner_args", _mismatch(spec, signature, kwargs)) from None
    return kwargs


def _accepts(signature: inspect.Signature, name: str) -> bool:
    parameter = signature.parameters.get(name)
    if parameter is not None:
        return parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    return any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())


def _mismatch(spec: str, signature: inspect.Signature, kwargs: Mapping[str, Any]) -> str:
    """What is wrong between learner_args and the signature, and what the function takes."""
    unexpected = [name for name in kwargs if not _accepts(signature, name)]
    required = [
        p for p in signature.parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    # learner_args are keywords: a positional-only parameter can never be given
    missing = [p.name for p in required if p.kind is p.POSITIONAL_ONLY or p.name not in kwargs]
    problems = []
    if unexpected:
        problems.append(f"does not take {', '.join(unexpected)}")
    if missing:
        problems.append(f"requires {', '.join(missing)}, which learner_args does not give as keywords")
    shown = signature.replace(return_annotation=inspect.Signature.empty)
    return (
        f"{spec}{shown} {' and '.join(problems) or 'cannot be called with these arguments'} "
        f"(learner_args has {', '.join(kwargs) or 'nothing'}): make learner_args in node.toml "
        "(or the description's [training]) match the function's arguments"
    )


def _call_learner(spec: str, factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> Any:
    """``factory(**kwargs)``; the organisation's own code failing is a configuration error."""
    try:
        return factory(**kwargs)
    except P2PFLError:
        raise  # already names its field and the fix (e.g. the bundled learner's index)
    except Exception as exc:
        log.debug("%s(...) raised", spec, exc_info=exc)  # the traceback, for --log-level debug
        raise ConfigError("learner", f"{spec}(...) failed: {type(exc).__name__}: {exc}") from exc


def load_membership(config: OrgNodeConfig, base: Path) -> Membership:
    """Schedule and peers from the consortium file, or from static ``peers``/``topology``."""
    if config.consortium:
        from p2pfl.consortium.public import allow_list_loader, load_consortium

        path = resolve(base, config.consortium)
        consortium = load_consortium(path)
        topology_path = resolve(path.parent, consortium.topology)
        topology = build_topology(str(topology_path), seed=consortium.seed, mixing=consortium.mixing)
        if config.name not in topology.names:
            raise ConfigError("name", f"{config.name!r} is not a member of {path}: members are {topology.names}")
        endpoints = {m.name: m.endpoint for m in consortium.members if m.name != config.name}
        # Kept apart from the peers' endpoints: it is what discovery announces, not a peer to dial.
        own = next((m.endpoint for m in consortium.members if m.name == config.name), None)
        return Membership(
            StaticSchedule(topology), endpoints, allow_list_loader(path), path, consortium.name, own_endpoint=own
        )
    if config.topology:
        # a file is relative to node.toml, like every path there; otherwise a generator spec
        as_file = resolve(base, config.topology)
        spec = str(as_file) if as_file.is_file() else config.topology
        topology = build_topology(spec, seed=config.seed, mixing=config.mixing)
        if config.name not in topology.names:
            raise ConfigError("topology", f"{config.name!r} is not a node of {config.topology}")
        schedule: GossipSchedule = StaticSchedule(topology)
    else:
        schedule = NeighbourListSchedule(config.name, tuple(config.peers))
    missing = [p for p in schedule.peers(config.name) if p not in config.peers]
    if missing:
        raise ConfigError("peers", f"no endpoint for neighbour(s) {missing}: add name = \"tcp://host:port\"")
    return Membership(schedule, dict(config.peers), None, None, "static")


class NeighbourListSchedule:
    """A node that only knows its own neighbour list: uniform weights 1/(degree + 1).

    Exactly Metropolis–Hastings when every node has the same degree; for other graphs
    give the whole topology (a consortium file or ``topology``) so weights stay doubly
    stochastic.
    """

    def __init__(self, name: str, peers: tuple[str, ...]) -> None:
        self._name = name
        self._peers = tuple(sorted(peers))
        share = 1.0 / (len(self._peers) + 1)
        self._plan = RoundPlan(send_to=self._peers, weights={n: share for n in (name, *self._peers)}, node=name)

    def plan(self, node: str, round: int) -> RoundPlan:
        return self._plan

    def peers(self, node: str) -> tuple[str, ...]:
        return self._peers


class RoundRecorder:
    """Writes each finished round: its ``metrics.jsonl`` line, then the checkpoint.

    Runs in the node's worker (the node's ``checkpoint`` hook). A crash between the two
    writes leaves one line more than the checkpoint covers; :meth:`trim` drops such
    lines on resume, so the log and the checkpoint always agree.
    """

    def __init__(self, state_dir: Path, name: str, learner: Learner) -> None:
        self.state_dir = state_dir
        self.name = name
        self.learner = learner
        self.path = state_dir / "metrics.jsonl"
        self.stats: Callable[[], NodeStats] | None = None  # the node's counters, once it exists

    def trim(self, last_round: int) -> None:
        """Keep only rows up to ``last_round`` (the checkpoint's round)."""
        if not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line).get("round", -1) <= last_round]
        if len(kept) != len(rows):
            self.path.write_text("".join(line + "\n" for line in kept))

    def __call__(self, metrics: RoundMetrics) -> None:
        with self.path.open("a") as handle:
            handle.write(json_line(metrics_row(metrics)))
        save_checkpoint(self.state_dir, self.name, metrics.round, self.learner)
        if self.stats is not None:
            write_stats(self.state_dir, self.stats())
        log.info(
            "round %d done: accuracy %.4f, loss %.4f, from %s%s", metrics.round, metrics.test_accuracy,
            metrics.test_loss, ",".join(metrics.received_from) or "nobody",
            f", missing {','.join(metrics.missing)}" if metrics.missing else "",
        )


def write_stats(state_dir: Path, stats: NodeStats) -> Path:
    """``stats.json``: the node's message counters (refused messages by reason), replaced
    atomically so a reader never sees half a file."""
    path = state_dir / "stats.json"
    # Called from the worker (after each round) while the event loop updates the counters:
    # copy each field at once (dict() of the Counter is a single C-level copy), no deep walk.
    row: dict[str, Any] = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
    row["rejected"] = dict(sorted(dict(stats.rejected).items()))
    # one temporary file per thread: the last round's write and the final one may overlap
    temporary = state_dir / f".stats.json.{threading.get_ident()}.tmp"
    temporary.write_text(json.dumps(row, indent=2) + "\n")
    temporary.replace(path)
    return path


class ProgressQueue:
    """A RoundObserver handing each round's metrics to the progress publisher."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[RoundMetrics] = asyncio.Queue(maxsize=64)

    def on_round_end(self, metrics: RoundMetrics, weights: Weights) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # the broker is behind: skip a report
            self.queue.put_nowait(metrics)


async def run_org_node(config: OrgNodeConfig, base: Path) -> RunOutcome:
    """Run the node until its last round, or until cancelled (SIGINT/SIGTERM).

    Args:
        config: the node's config.
        base: folder that relative paths in ``config`` are relative to.
    """
    state_dir = resolve(base, config.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)  # this process is the node's own
    membership = load_membership(config, base)
    learner = build_learner(config, base)
    recorder = RoundRecorder(state_dir, config.name, learner)
    start_round = 0
    saved = load_checkpoint(state_dir, config.name)
    if saved is not None:
        restore_learner(learner, saved.learner, source=state_dir / CHECKPOINT_FILE)
        start_round = saved.round + 1
        log.info("resuming from checkpoint after round %d", saved.round)
    recorder.trim(start_round - 1)
    if start_round >= config.rounds:
        log.info("all %d rounds were already done", config.rounds)
        return RunOutcome(True, config.rounds - 1, save_final_model(state_dir, learner))

    context = zmq.Context()
    try:
        async with contextlib.AsyncExitStack() as stack:
            security, allowlist, keypair = await _link_security(config, base, membership, context, stack)
            progress = ProgressQueue()
            presence = await _presence(config, membership, security, allowlist, stack, base, keypair)
            node = Node(
                NodeConfig(
                    name=config.name, rounds=config.rounds, round_timeout=config.round_timeout,
                    start_round=start_round, mode=config.mode, staleness=config.staleness,
                    staleness_grace=config.staleness_grace,
                ),
                learner,
                membership.schedule,
                ZmqTransport(context, config.bind, security=security),
                observer=progress if presence else None,
                presence=presence,
                checkpoint=recorder,
                secure=_secure_aggregation(config, membership, allowlist, keypair, start_round),
            )
            recorder.stats = lambda: node.stats
            await stack.enter_async_context(node)
            log.info("node %s listening on %s (%s)", config.name, node.endpoint,
                     "plain text" if security is None else "CurveZMQ")
            for peer in membership.schedule.peers(config.name):
                node.add_peer(peer, membership.endpoints[peer])
            async with asyncio.TaskGroup() as group:
                # background duties that live exactly as long as the training
                duties = []
                if allowlist is not None:
                    duties.append(group.create_task(_reload_membership(
                        allowlist, membership.watch_file,
                        lambda changed: _apply_membership(node, config, base, changed),
                    )))
                if presence is not None:
                    duties.append(group.create_task(_publish_progress(presence, progress.queue)))
                try:
                    await node.wait_until_ready(
                        StartCondition.parse(config.start), hello_interval=config.hello_interval
                    )
                    await node.run()
                    if presence is not None:  # says "finished" (not "stopped") when it leaves the broker
                        presence.finish(config.rounds - 1)
                finally:
                    if presence is not None:  # the last round's progress must reach the broker before we leave
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(progress.queue.join(), PROGRESS_FLUSH_SECONDS)
                    for task in duties:
                        task.cancel()
                    with contextlib.suppress(OSError):  # the counters must not mask why we stop
                        write_stats(state_dir, node.stats)
                    log.info("messages: %d accepted, refused %s", node.stats.messages_accepted,
                             dict(node.stats.rejected) or "none")
    finally:
        context.term()
    path = save_final_model(state_dir, learner)
    log.info("training finished after %d rounds; final model saved to %s", config.rounds, path)
    return RunOutcome(True, config.rounds - 1, path)


def _apply_membership(node: Node, config: OrgNodeConfig, base: Path, changed: set[str]) -> None:
    """After a reload: the consortium file may have gained or lost members."""
    try:
        membership = load_membership(config, base)
    except Exception as exc:  # a half-edited file must not stop training: keep the old one
        log.error("consortium file changed but cannot be used (%s); keeping the current membership", exc)
        return
    node.update_membership(membership.schedule, membership.endpoints, relink=changed)


def _secure_aggregation(
    config: OrgNodeConfig, membership: Membership, allowlist: Any, keypair: Any, start_round: int
) -> Any:
    """Secure aggregation keyed by this member's Curve key (an X25519 key) and the
    consortium allow-list's public keys, or None when off."""
    if not config.secure_aggregation:
        return None
    from p2pfl.privacy.secagg import SecAggKeys, SecureAggregation

    if allowlist is None or keypair is None:
        raise ConfigError("secure_aggregation", "needs the consortium's public keys and this node's key pair")
    require_secure_neighbourhood(membership.schedule.plan(config.name, start_round))
    log.info("node %s: secure aggregation on (neighbours see only weighted sums of models)", config.name)
    return SecureAggregation(SecAggKeys.from_curve(config.name, keypair.secret, allowlist.key_for))


async def _link_security(
    config: OrgNodeConfig, base: Path, membership: Membership, context: zmq.Context,
    stack: contextlib.AsyncExitStack,
) -> tuple[Any, Any, Any]:
    """CurveSecurity, allow-list and this node's key pair (all None with --insecure)."""
    if config.insecure:
        log.warning(
            "node %s runs with --insecure: links are NOT encrypted or authenticated; "
            "anyone who can reach %s can send models", config.name, config.bind,
        )
        return None, None, None
    from p2pfl.security import AllowList, CurveSecurity, curve_authenticator, read_secret_key

    if membership.keys_loader is None:
        raise ConfigError("consortium", "CurveZMQ needs the members' public keys: give a consortium file")
    keypair = read_secret_key(resolve(base, config.secret_key))
    allowlist = AllowList(membership.keys_loader)
    if allowlist.key_for(config.name) != keypair.public:
        raise ConfigError(
            "secret_key", f"the key in {config.secret_key} is not the key the consortium lists for "
            f"{config.name!r}: use this member's own key file"
        )
    await stack.enter_async_context(curve_authenticator(context, allowlist))
    return CurveSecurity(keypair, allowlist), allowlist, keypair


async def _presence(
    config: OrgNodeConfig, membership: Membership, security: Any, allowlist: Any,
    stack: contextlib.AsyncExitStack, base: Path, keypair: Any,
) -> Any:
    if not config.discovery:
        return None
    from p2pfl.deploy.discovery import presence_options
    from p2pfl.discovery import MqttPresence
    from p2pfl.security import fingerprint

    own = fingerprint(security.public_key) if security is not None else "insecure"

    def is_member(name: str, announced: str) -> bool:
        if allowlist is None:
            return name in membership.endpoints or name == config.name
        key = allowlist.key_for(name)
        return key is not None and fingerprint(key) == announced

    # the reachable endpoint from the consortium file; a bind address like 0.0.0.0 is no use to others
    endpoint = membership.own_endpoint or config.bind
    options = presence_options(config, base, membership.watch_file, keypair.secret if keypair else None)
    presence = MqttPresence(
        config.discovery, membership.consortium_name, config.name, endpoint, own, is_member, **options
    )
    return await stack.enter_async_context(presence)


async def _publish_progress(presence: Any, progress: asyncio.Queue[RoundMetrics]) -> None:
    while True:
        metrics = await progress.get()
        try:
            await presence.publish_progress(metrics.round, metrics.test_accuracy, metrics.test_loss)
        except Exception as exc:  # the broker is optional: training must not depend on it
            log.warning("could not publish progress to the broker: %s", exc)
        finally:
            progress.task_done()  # run_org_node waits for the last report before leaving


async def _reload_membership(
    allowlist: Any, watch_file: Path | None, on_change: Callable[[set[str]], None]
) -> None:
    """Reload the allow-list (and the membership) on SIGHUP or when the file changes."""
    loop = asyncio.get_running_loop()
    hangup = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on the main thread / Windows
        loop.add_signal_handler(signal.SIGHUP, hangup.set)
    last = _mtime(watch_file)
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RELOAD_POLL_SECONDS):
                    await hangup.wait()
            if hangup.is_set() or _mtime(watch_file) != last:
                hangup.clear()
                last = _mtime(watch_file)
                added, removed = allowlist.reload()  # logs what changed; keeps the old list on errors
                if added or removed:
                    on_change(added | removed)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGHUP)


def _mtime(path: Path | None) -> float | None:
    try:
        return path.stat().st_mtime if path is not None else None
    except OSError:
        return None
