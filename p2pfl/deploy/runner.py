"""One organisation's long-lived node process: ``p2pfl node --config node.toml``.

It builds the organisation's learner from its own code, joins the consortium with
CurveZMQ on every link (plain text only with ``insecure``), waits for its start
condition, checkpoints after every round, resumes from its last checkpoint when
restarted, reloads the allow-list on SIGHUP or when the consortium file changes, stops
cleanly on SIGINT/SIGTERM, and saves its final model as a plain torch state_dict.

The parts live beside this orchestration: :mod:`~p2pfl.deploy.learner_loader`,
:mod:`~p2pfl.deploy.membership`, :mod:`~p2pfl.deploy.recorder`,
:mod:`~p2pfl.deploy.checkpoint`; the node itself is put together by :mod:`p2pfl.assembly`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import zmq

from p2pfl import discovery
from p2pfl.assembly import Links, build_node, member_links, member_secure_aggregation, plain_links
from p2pfl.deploy.checkpoint import CHECKPOINT_FILE, load_checkpoint, restore_learner, save_final_model
from p2pfl.deploy.config import OrgNodeConfig, require_secure_neighbourhood, resolve
from p2pfl.deploy.discovery import ConsortiumSigningKeys, presence_options
from p2pfl.deploy.learner_loader import build_learner
from p2pfl.deploy.membership import Membership, load_membership, watch_membership
from p2pfl.deploy.recorder import ProgressQueue, RoundRecorder, publish_progress, write_stats
from p2pfl.errors import ConfigError
from p2pfl.node.node import Node
from p2pfl.node.peers import StartCondition
from p2pfl.privacy.secagg import SecureAggregation
from p2pfl.security import AllowList, KeyPair, fingerprint, read_secret_key
from p2pfl.transport import ZmqTransport

__all__ = ["RunOutcome", "run_org_node"]

log = logging.getLogger(__name__)

#: How long a stopping node waits for its last progress reports to reach the MQTT broker.
PROGRESS_FLUSH_SECONDS = 5.0
#: After its last round a node answers greetings ("finished") this long at most (less when
#: every neighbour finished too), so a neighbour restarting just then learns the run is over.
FINISHED_LINGER_SECONDS = 10.0


@dataclass(frozen=True)
class RunOutcome:
    """How a node process ended."""

    completed: bool
    last_round: int  # last finished round (-1 if none)
    final_model: Path | None


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
            links, keypair = await _link_security(config, base, membership, context, stack)
            security, allowlist = links.security_for(config.name), links.allowlist
            progress = ProgressQueue()
            # one reader of the members' signing keys serves presence and secure aggregation
            signing_keys = (
                ConsortiumSigningKeys(membership.watch_file)
                if membership.watch_file is not None and (config.discovery or config.secure_aggregation) else None
            )
            presence = await _presence(config, membership, security, allowlist, stack, base, keypair, signing_keys)
            node = build_node(
                config, config.name, learner, membership.schedule,
                ZmqTransport(context, config.bind, security=security),
                start_round=start_round,
                secure=_secure_aggregation(config, membership, allowlist, keypair, start_round, signing_keys),
                observer=progress if presence else None,
                presence=presence,
                checkpoint=recorder,
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
                    duties.append(group.create_task(watch_membership(
                        allowlist, membership.watch_file,
                        lambda changed: _apply_membership(node, config, base, changed),
                    )))
                if presence is not None:
                    duties.append(group.create_task(publish_progress(presence, progress.queue)))
                try:
                    start = StartCondition.parse(config.start)
                    if start_round > 0 and start.kind != "none":  # a run under way: rejoin it, or learn it is over
                        await node.wait_to_resume(hello_interval=config.hello_interval)
                    else:
                        await node.wait_until_ready(start, hello_interval=config.hello_interval)
                    await node.run()
                    if presence is not None:  # says "finished" (not "stopped") when it leaves the broker
                        presence.finish(config.rounds - 1)
                    await node.linger(min(config.round_timeout, FINISHED_LINGER_SECONDS))
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
    config: OrgNodeConfig, membership: Membership, allowlist: AllowList | None, keypair: KeyPair | None,
    start_round: int, signing_key_of: Callable[[str], str | None] | None = None,
) -> SecureAggregation | None:
    """Secure aggregation signed by this member's identity (derived from its Curve secret)
    and checking the others' against the consortium file's signing keys, or None when off."""
    if not config.secure_aggregation:
        return None
    if allowlist is None or keypair is None:  # the assembly names what is missing
        return member_secure_aggregation(config.name, keypair, allowlist, lambda _: None)
    require_secure_neighbourhood(membership.schedule.plan(config.name, start_round))
    if signing_key_of is None:
        raise ConfigError("secure_aggregation", "needs the members' signing keys from consortium.toml")
    unknown = [p for p in membership.schedule.peers(config.name) if signing_key_of(p) is None]
    if unknown:  # no silent fallback: without them no relayed key verifies and no round aggregates
        raise ConfigError("signing_key", f"no signing key for {', '.join(unknown)} in the consortium file: "
                          "secure aggregation checks every member's per-run key against it; "
                          "rerun 'p2pfl consortium init ... --force --keep-keys' to write them")
    return member_secure_aggregation(config.name, keypair, allowlist, signing_key_of)


async def _link_security(
    config: OrgNodeConfig, base: Path, membership: Membership, context: zmq.Context,
    stack: contextlib.AsyncExitStack,
) -> tuple[Links, KeyPair | None]:
    """This member's links (CurveZMQ with its key file, plain text with --insecure) and
    its key pair; the context's authenticator is entered into ``stack``."""
    if config.insecure:
        log.warning(
            "node %s runs with --insecure: links are NOT encrypted or authenticated; "
            "anyone who can reach %s can send models", config.name, config.bind,
        )
        return plain_links(), None
    if membership.keys_loader is None:
        raise ConfigError("consortium", "CurveZMQ needs the members' public keys: give a consortium file")
    keypair = read_secret_key(resolve(base, config.secret_key))
    links = member_links(config.name, keypair, membership.keys_loader, context, key_file=config.secret_key)
    await stack.enter_async_context(links.authenticator)
    return links, keypair


async def _presence(
    config: OrgNodeConfig, membership: Membership, security: Any, allowlist: Any,
    stack: contextlib.AsyncExitStack, base: Path, keypair: Any, signing_keys: ConsortiumSigningKeys | None = None,
) -> Any:
    if not config.discovery:
        return None
    if signing_keys is None and membership.watch_file is not None:
        signing_keys = ConsortiumSigningKeys(membership.watch_file)
    own = fingerprint(security.public_key) if security is not None else "insecure"

    def is_member(name: str, announced: str) -> bool:
        if allowlist is None:
            return name in membership.endpoints or name == config.name
        key = allowlist.key_for(name)
        return key is not None and fingerprint(key) == announced

    # the reachable endpoint from the consortium file; a bind address like 0.0.0.0 is no use to others
    endpoint = membership.own_endpoint or config.bind
    options = presence_options(config, base, signing_keys, keypair.secret if keypair else None)
    presence = discovery.MqttPresence(
        config.discovery, membership.consortium_name, config.name, endpoint, own, is_member, **options
    )
    return await stack.enter_async_context(presence)
