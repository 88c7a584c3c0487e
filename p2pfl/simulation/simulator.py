"""Run many :class:`~p2pfl.node.node.Node` s on this machine over real ZeroMQ sockets.

The simulator only arranges: it builds the nodes a deployment would build, binds them,
tells each where its peers listen, runs them all, and records what they report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from p2pfl.aggregation import build_aggregator
from p2pfl.attacks import attacker_aggregator
from p2pfl.config import to_dict
from p2pfl.learning.learner import Weights
from p2pfl.node.node import Node, NodeConfig
from p2pfl.node.peers import StartCondition
from p2pfl.node.records import summary_json
from p2pfl.privacy.accounting import privacy_summary
from p2pfl.simulation.churn import check_joins, check_outages, parse_joins, parse_outages
from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.pacing import PacedExecutor
from p2pfl.simulation.recorder import MetricsRecorder, RoundSummary
from p2pfl.simulation.setup import Experiment, build_experiment, claimed_cpu, torch_threads
from p2pfl.simulation.worker import PhasedWorker, loop_idle_event, new_simulation_loop, pinned_thread
from p2pfl.topology import spectral_gap
from p2pfl.transport import ZmqTransport

log = logging.getLogger(__name__)


@dataclass(repr=False)
class SimulationResult:
    """What a finished simulation returns (``summary`` is also ``summary.json``)."""

    summary: dict[str, Any]
    rounds: list[RoundSummary]
    rows: list[dict[str, Any]]
    final_weights: dict[str, Weights]
    rejected: Counter[str] = field(default_factory=Counter)

    def __repr__(self) -> str:
        # Short on purpose: asyncio.run() formats its main task's result on the way out,
        # and the generated repr printed every node's weights (~0.1 s of a 16x40 run).
        return (
            f"SimulationResult(rounds={len(self.rounds)}, nodes={len(self.final_weights)}, "
            f"rejected={sum(self.rejected.values())})"
        )


async def simulate(
    config: ExperimentConfig,
    *,
    progress: Callable[[RoundSummary], None] | None = None,
    experiment: Experiment | None = None,
) -> SimulationResult:
    """Run the experiment described by ``config``.

    Every node's training runs in one shared worker thread that takes turns with the
    event loop (see :mod:`p2pfl.simulation.worker`): on a loop from
    :func:`~p2pfl.simulation.worker.new_simulation_loop` (``run_simulation`` uses one)
    a training phase waits for the loop to go idle; on any other loop it starts at once.
    With ``config.pin_cpu`` (and ``torch_threads = 1``) the calling thread and the worker
    stay on the core the run starts on until it ends (on another one if a simulation
    beside this one holds it).

    Args:
        config: the experiment.
        progress: called after each round closes across all nodes.
        experiment: a pre-built experiment (tests and benchmarks); built from ``config``
            otherwise.
    """
    with claimed_cpu(config) as cpu:
        return await _simulate(config, cpu, progress, experiment)


async def _simulate(
    config: ExperimentConfig,
    cpu: int | None,
    progress: Callable[[RoundSummary], None] | None,
    experiment: Experiment | None,
) -> SimulationResult:
    experiment = experiment or build_experiment(config)
    out_dir = Path(config.out) if config.out else None
    recorder = MetricsRecorder(experiment.names, out_dir, progress)
    started = time.perf_counter()
    context = zmq.Context()
    # One worker: the learners take turns with torch's global RNG anyway, and a single
    # thread keeps those turns free of contention (see PhasedWorker for the turn-taking).
    executor = PhasedWorker(idle=loop_idle_event(asyncio.get_running_loop()), cpu=cpu)
    try:
        with _endpoints(config.transport) as endpoint_for, torch_threads(config.torch_threads):
            security_for, authenticator = _link_security(config.curve, experiment.names, context)
            secure_for = _secure_aggregation(config.secure_aggregation, experiment.names)
            aggregator = build_aggregator(config.aggregator)  # one instance: it logs once, not per node
            outages = parse_outages(config.fail, config.recover)
            check_outages(outages, experiment.names, config.rounds)
            joins = parse_joins(config.join, outages)
            check_joins(joins, experiment.names, config.rounds)
            loop = asyncio.get_running_loop()

            def executor_for(name: str) -> Any:
                factor = config.slowdown if name in experiment.slow else 1.0
                if factor == 1.0 and not config.step_seconds:
                    return executor
                return PacedExecutor(executor, loop, factor=factor, step_seconds=config.step_seconds)

            def make_node(name: str, learner: Any, endpoint: str, start_round: int = 0) -> Node:
                return Node(
                    NodeConfig(
                        name=name, rounds=config.rounds, round_timeout=config.round_timeout,
                        start_round=start_round, mode=config.mode, staleness=config.staleness,
                        staleness_grace=config.staleness_grace,
                    ),
                    learner,
                    experiment.schedule,
                    ZmqTransport(context, endpoint, security=security_for(name)),
                    executor=executor_for(name),
                    observer=recorder,
                    aggregator=attacker_aggregator(aggregator, learner),
                    secure=secure_for(name),
                )

            learner_of = dict(zip(experiment.names, experiment.learners, strict=True))
            nodes = [
                make_node(name, learner_of[name], endpoint_for(i))
                for i, name in enumerate(experiment.names) if name not in joins
            ]
            # a recovered node is a new Node; a joiner has none until it joins
            incarnations: dict[str, list[Node]] = {name: [] for name in experiment.names}
            for node in nodes:
                incarnations[node.name].append(node)
            async with contextlib.AsyncExitStack() as stack:
                if authenticator is not None:
                    await stack.enter_async_context(authenticator)
                for node in nodes:
                    await stack.enter_async_context(node)
                endpoints: dict[str, str] = {node.name: node.endpoint for node in nodes}  # type: ignore[misc]
                for i, name in enumerate(experiment.names):
                    if name in joins:  # where it will listen (links open before it binds)
                        endpoints[name] = _concrete(endpoint_for(i))
                        recorder.node_down(name)
                for node in nodes:
                    for peer in experiment.schedule.peers(node.name):
                        node.add_peer(peer, endpoints[peer])
                        if peer in joins:
                            node.peers.suspect(peer)  # not there yet: not waited for until heard from

                async def start_late(name: str, start_round: int) -> Node:
                    """Start ``name`` (back from a crash, or joining) and greet its neighbours."""
                    node = make_node(name, learner_of[name], endpoints[name], start_round)
                    await stack.enter_async_context(node)
                    for peer in experiment.schedule.peers(name):
                        node.add_peer(peer, endpoints[peer])
                    incarnations[name].append(node)
                    recorder.node_up(name)
                    with contextlib.suppress(TimeoutError):  # all neighbours down: go alone
                        async with asyncio.timeout(config.round_timeout):
                            await node.wait_until_ready(StartCondition.parse("min:1"), hello_interval=0.05)
                    return node

                async def join(name: str, after_round: int) -> None:
                    await recorder.wait_for_round(after_round)
                    log.info("node %s joins after round %d", name, after_round)
                    node = await start_late(name, 0)  # afresh: the initial model, round 0
                    await node.run()

                async def lifecycle(node: Node) -> None:
                    outage = outages.get(node.name)
                    if outage is None:
                        await node.run()
                        return
                    await node.run(until_round=outage.fail_round)
                    await node.close(graceful=False)  # a crash: no goodbye
                    recorder.node_down(node.name)
                    log.info("node %s crashed after round %d", node.name, outage.fail_round)
                    if outage.recover_round is None:
                        return
                    await recorder.wait_for_round(outage.recover_round)
                    log.info("node %s restarts after round %d", node.name, outage.recover_round)
                    # back with the state it had (as restored from its checkpoint), same address
                    revived = await start_late(node.name, outage.fail_round + 1)
                    await revived.run()

                # pinned only now: ZeroMQ's I/O thread, started with the first socket,
                # keeps every core (it inherits its creator's at birth)
                with pinned_thread(cpu):
                    async with asyncio.TaskGroup() as group:
                        for node in nodes:
                            group.create_task(lifecycle(node), name=f"run-{node.name}")
                        for name, after_round in joins.items():
                            group.create_task(join(name, after_round), name=f"join-{name}")
    finally:
        recorder.close()
        executor.shutdown(wait=True)
        context.term()
    wall = time.perf_counter() - started
    rejected: Counter[str] = Counter()
    every_node = [node for lives in incarnations.values() for node in lives]
    for node in every_node:
        rejected.update(node.stats.rejected)
    failed = [name for name in experiment.names if name in outages and outages[name].recover_round is None]
    summary = _summary(config, experiment, recorder, every_node, wall, rejected, failed)
    if out_dir is not None:
        (out_dir / "summary.json").write_text(summary_json(summary))
    return SimulationResult(summary, recorder.rounds, recorder.rows, recorder.final_weights, rejected)


def run_simulation(
    config: ExperimentConfig,
    *,
    progress: Callable[[RoundSummary], None] | None = None,
    experiment: Experiment | None = None,
) -> SimulationResult:
    """Blocking wrapper around :func:`simulate` for scripts.

    Runs it on an event loop that lets the shared training worker take turns with it
    (:func:`~p2pfl.simulation.worker.new_simulation_loop`), as ``p2pfl simulate`` does.
    """
    with asyncio.Runner(loop_factory=new_simulation_loop) as runner:
        return runner.run(simulate(config, progress=progress, experiment=experiment))


def _link_security(curve: bool, names: list[str], context: zmq.Context) -> tuple[Any, Any]:
    """Per-node CurveSecurity (fresh keys, everyone allow-listed) and the context's ZAP handler."""
    if not curve:
        return (lambda name: None), None
    from p2pfl.security import AllowList, CurveSecurity, curve_authenticator, generate_keypair

    keypairs = {name: generate_keypair() for name in names}
    allowlist = AllowList(lambda: {name: pair.public for name, pair in keypairs.items()})
    return (lambda name: CurveSecurity(keypairs[name], allowlist)), curve_authenticator(context, allowlist)


def _secure_aggregation(on: bool, names: list[str]) -> Callable[[str], Any]:
    """Per-node secure aggregation (fresh X25519 keys per node, everyone's public keys
    known to all); a restarted node gets a fresh state with the same key."""
    if not on:
        return lambda name: None
    from p2pfl.privacy.secagg import SecureAggregation, generate_keys

    keys = generate_keys(names)
    return lambda name: SecureAggregation(keys[name])


def _concrete(endpoint: str) -> str:
    """``endpoint`` with a free loopback port for ``:0`` (for a node that binds later)."""
    if not endpoint.endswith(":0"):
        return endpoint  # inproc and ipc names: peers may connect before the bind
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"{endpoint[:-2]}:{port}"


@contextlib.contextmanager
def _endpoints(transport: str) -> Any:
    run_id = uuid.uuid4().hex[:8]
    if transport == "inproc":
        yield lambda i: f"inproc://p2pfl-{run_id}-{i}"
    elif transport == "ipc":
        with tempfile.TemporaryDirectory(prefix="p2pfl-ipc-") as directory:
            yield lambda i: f"ipc://{directory}/{i}.sock"
    else:
        yield lambda i: "tcp://127.0.0.1:0"


def _summary(
    config: ExperimentConfig,
    experiment: Experiment,
    recorder: MetricsRecorder,
    nodes: list[Node],
    wall: float,
    rejected: Counter[str],
    failed: list[str],
) -> dict[str, Any]:
    final_round = [row for row in recorder.rows if row["round"] == config.rounds - 1]
    accuracies = [row["test_accuracy"] for row in final_round]
    # what the attackers' own models score says nothing about the defence: report both
    honest = [row["test_accuracy"] for row in final_round if row["node"] not in experiment.attackers]
    last = recorder.rounds[-1] if recorder.rounds else None
    return {
        "nodes": experiment.topology.n,
        "rounds": config.rounds,
        "failed_nodes": failed,  # crashed and never came back
        "rounds_completed": _rounds_completed(nodes, [n for n in experiment.names if n not in failed]),
        "mean_accuracy": sum(accuracies) / len(accuracies) if accuracies else None,
        "min_accuracy": min(accuracies) if accuracies else None,
        "max_accuracy": max(accuracies) if accuracies else None,
        "attackers": list(experiment.attackers),
        "mode": config.mode,
        "slow_nodes": list(experiment.slow),
        "honest_mean_accuracy": sum(honest) / len(honest) if honest else None,
        "honest_min_accuracy": min(honest) if honest else None,
        "consensus_distance": last.consensus_distance if last else None,
        "wall_seconds": wall,
        "bytes_sent_total": sum(node.stats.bytes_sent for node in nodes),
        "control_bytes_sent_total": sum(node.stats.control_bytes_sent for node in nodes),
        "sync_replies_sent_total": sum(node.stats.sync_replies_sent for node in nodes),  # models sent to catch up
        "bytes_received_total": sum(node.stats.bytes_received for node in nodes),
        "messages_rejected": dict(rejected),
        "non_finite_models": sum(node.stats.non_finite_models for node in nodes),
        "topology": experiment.topology.spec,
        "spectral_gap": spectral_gap(experiment.topology.mixing) if not config.fanout else None,
        # epsilon_max, epsilon_mean, delta, noise_multiplier_min/max (None without DP)
        **privacy_summary(final_round, config.delta, experiment.learners),
        "config": to_dict(config),
    }


def _rounds_completed(nodes: list[Node], alive: list[str]) -> int:
    """The last round every node alive at the end finished: a node back from a crash
    skips rounds, and one that crashed for good would pin the count at its crash."""
    done: dict[str, int] = dict.fromkeys(alive, 0)
    for node in nodes:
        if node.name in done:
            done[node.name] = max([done[node.name], *(m.round + 1 for m in node.history)])
    return min(done.values(), default=0)
