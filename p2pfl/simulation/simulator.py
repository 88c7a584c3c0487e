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
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import zmq

from p2pfl.aggregation import build_aggregator
from p2pfl.assembly import build_node, plain_links, simulated_links, simulated_secure_aggregation
from p2pfl.config import to_dict
from p2pfl.learning.learner import Weights
from p2pfl.node.node import Node
from p2pfl.node.records import NodeStats, RoundMetrics, RoundObserver, metrics_summary, summary_json
from p2pfl.privacy.accounting import privacy_summary
from p2pfl.simulation.churn import Churn
from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.divergence import divergence_hint
from p2pfl.simulation.limits import check_memory, needs, prepare_limits
from p2pfl.simulation.outputs import SUMMARY_FILE, check_model_names, save_models
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
    names = experiment.names
    out_dir = Path(config.out) if config.out else None
    if out_dir is not None and config.save_models:
        check_model_names(names)  # before the run, not after it
    degrees = _link_counts(config, experiment)
    check_memory(degrees, _model_bytes(experiment))
    context = zmq.Context()
    try:  # before any socket: thousands of nodes need more than the defaults allow
        prepare_limits(context, needs(config.transport, degrees), config.transport)
    except BaseException:
        context.term()
        raise
    recorder = MetricsRecorder(names, out_dir, progress, divergence_hint(config.gossip))
    started = time.perf_counter()
    # One worker: the learners take turns with torch's global RNG anyway, and a single
    # thread keeps those turns free of contention (see PhasedWorker for the turn-taking).
    executor = PhasedWorker(idle=loop_idle_event(asyncio.get_running_loop()), cpu=cpu)
    churn: Churn | None = None
    interrupted = False
    try:
        with _endpoints(config.transport) as endpoint_for, torch_threads(config.torch_threads):
            make_node = _NodeFactory(config, experiment, context, executor, recorder)
            churn = Churn.from_config(config, names, recorder)
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(make_node.links.authenticator)
                nodes = [make_node(name, endpoint_for(i)) for i, name in enumerate(names) if name not in churn.joins]
                for node in nodes:
                    await stack.enter_async_context(node)
                # where each joiner will listen: its neighbours' links open before it binds
                endpoints = {name: _concrete(endpoint_for(i)) for i, name in enumerate(names) if name in churn.joins}
                endpoints.update({node.name: node.endpoint for node in nodes})  # type: ignore[misc]  # all bound
                for node in nodes:
                    make_node.link(node, endpoints, absent=churn.joins)

                async def spawn(name: str, start_round: int) -> Node:
                    node = make_node(name, endpoints[name], start_round)
                    await stack.enter_async_context(node)
                    make_node.link(node, endpoints)
                    return node

                # pinned only now: ZeroMQ's I/O thread, started with the first socket,
                # keeps every core (it inherits its creator's at birth)
                with pinned_thread(cpu):
                    async with asyncio.TaskGroup() as group:
                        churn.start(group, nodes, spawn)
    except asyncio.CancelledError:  # Ctrl-C (asyncio.Runner cancels the run): keep what it did
        interrupted = True
        raise
    finally:
        recorder.close()
        executor.shutdown(wait=True)
        context.term()
        if interrupted and churn is not None:
            keep_results(config, experiment, recorder, churn.nodes, churn.failed, time.perf_counter() - started,
                             interrupted=True)
    assert churn is not None  # set before the first await; the run would have raised otherwise
    return keep_results(
        config, experiment, recorder, churn.nodes, churn.failed, time.perf_counter() - started, interrupted=False
    )


def _link_counts(config: ExperimentConfig, experiment: Experiment) -> list[int]:
    """How many peers each node may open a link to during the run.

    Links open at a node's first send to a peer: with ``fanout`` (any peer may be drawn)
    a node reaches at most ``fanout`` new peers a round, and as many more answering those
    that reached it, not all ``nodes - 1``.
    """
    cap = 2 * config.fanout * config.rounds if config.fanout else None
    counts = [len(experiment.schedule.peers(name)) for name in experiment.names]
    return counts if cap is None else [min(count, cap) for count in counts]


def _model_bytes(experiment: Experiment) -> int:
    """Bytes of one node's model (every node trains the same architecture)."""
    if not experiment.learners:
        return 0
    return sum(int(array.nbytes) for array in experiment.learners[0].get_weights().values())


def keep_results(
    config: ExperimentConfig, experiment: Experiment, recorder: MetricsRecorder, nodes: Sequence[NodeOutcome],
    failed: list[str], wall: float, *, interrupted: bool,
) -> SimulationResult:
    """The run's result; with ``out``, its models (if ``save_models``) and then
    ``summary.json`` (written last: a run folder with a summary is complete)."""
    rejected: Counter[str] = Counter()
    for node in nodes:
        rejected.update(node.stats.rejected)
    summary = _summary(config, experiment, recorder, nodes, wall, rejected, failed, interrupted)
    if config.out:
        out_dir = Path(config.out)
        if config.save_models:
            final = {name: recorder.final_weights[name] for name in experiment.names if name in recorder.final_weights}
            # the average of the models that count: not the crashed nodes', not the attackers'
            kept = [name for name in final if name not in failed and name not in experiment.attackers]
            save_models(out_dir, final, kept)
        (out_dir / SUMMARY_FILE).write_text(summary_json(summary))
    return SimulationResult(summary, recorder.rounds, recorder.rows, recorder.final_weights, rejected)


class _NodeFactory:
    """Builds the simulation's nodes through :mod:`p2pfl.assembly`, as a deployment would."""

    def __init__(
        self, config: ExperimentConfig, experiment: Experiment, context: zmq.Context,
        executor: PhasedWorker, recorder: RoundObserver,
    ) -> None:
        self.config = config
        self.experiment = experiment
        self.context = context
        self.executor = executor
        self.recorder = recorder
        self.links = simulated_links(experiment.names, context) if config.curve else plain_links()
        self.secure_for = simulated_secure_aggregation(experiment.names) if config.secure_aggregation else None
        self.aggregator = build_aggregator(config.aggregator)  # one instance: it logs once, not per node
        self.learner_of = experiment.learner_of

    def __call__(self, name: str, endpoint: str, start_round: int = 0, **hooks: Any) -> Node:
        return build_node(
            self.config, name, self.learner_of[name], self.experiment.schedule, self.transport(name, endpoint),
            start_round=start_round, aggregator=self.aggregator,
            secure=self.secure_for(name) if self.secure_for is not None else None,
            executor=self._executor_for(name), observer=self.recorder, **hooks,
        )

    def transport(self, name: str, endpoint: str) -> ZmqTransport:
        """The sockets of node ``name``, listening at ``endpoint`` (a cluster shard adds a second)."""
        return ZmqTransport(self.context, endpoint, security=self.links.security_for(name))

    def link(self, node: Node, endpoints: Mapping[str, str], absent: Collection[str] = ()) -> None:
        """Tell ``node`` where its neighbours listen; ``absent`` ones are not waited for
        until heard from."""
        for peer in self.experiment.schedule.peers(node.name):
            node.add_peer(peer, endpoints[peer])
            if peer in absent:
                node.peers.suspect(peer)

    def _executor_for(self, name: str) -> Any:
        factor = self.config.slowdown if name in self.experiment.slow else 1.0
        if factor == 1.0 and not self.config.step_seconds:
            return self.executor
        loop = asyncio.get_running_loop()
        return PacedExecutor(self.executor, loop, factor=factor, step_seconds=self.config.step_seconds)


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


class NodeOutcome(Protocol):
    """What a summary reads of a node: a :class:`Node`, or its report from a cluster shard."""

    name: str
    stats: NodeStats
    history: list[RoundMetrics]


def _summary(
    config: ExperimentConfig,
    experiment: Experiment,
    recorder: MetricsRecorder,
    nodes: Sequence[NodeOutcome],
    wall: float,
    rejected: Counter[str],
    failed: list[str],
    interrupted: bool = False,
) -> dict[str, Any]:
    completed = _rounds_completed(nodes, [n for n in experiment.names if n not in failed])
    # interrupted: the accuracies are those of the last round every node finished
    last_round = completed - 1 if interrupted else config.rounds - 1
    final_round = [row for row in recorder.rows if row["round"] == last_round]
    accuracies = [row["test_accuracy"] for row in final_round]
    # what the attackers' own models score says nothing about the defence: report both
    honest = [row["test_accuracy"] for row in final_round if row["node"] not in experiment.attackers]
    last = recorder.rounds[-1] if recorder.rounds else None
    return {
        "nodes": experiment.topology.n,
        "rounds": config.rounds,
        "failed_nodes": failed,  # crashed and never came back
        "rounds_completed": completed,
        "interrupted": interrupted,  # stopped by Ctrl-C: the rounds completed so far
        "mean_accuracy": sum(accuracies) / len(accuracies) if accuracies else None,
        "min_accuracy": min(accuracies) if accuracies else None,
        "max_accuracy": max(accuracies) if accuracies else None,
        "metrics": metrics_summary(final_round),  # the learners' own (--metrics): mean/min/max
        "attackers": list(experiment.attackers),
        "mode": config.mode,
        "compress": config.compress,  # the codec models travelled with ("" = none)
        "gossip": config.gossip,  # the gossip algorithm: plain or choco[:GAMMA]
        "slow_nodes": list(experiment.slow),
        "samples_dealt": experiment.samples_dealt,  # > 1: too few samples, nodes share them
        "honest_mean_accuracy": sum(honest) / len(honest) if honest else None,
        "honest_min_accuracy": min(honest) if honest else None,
        "consensus_distance": last.consensus_distance if last else None,
        "diverged_at_round": recorder.divergence.diverged_at,  # accuracy fell as the models drifted apart
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


def _rounds_completed(nodes: Sequence[NodeOutcome], alive: list[str]) -> int:
    """The last round every node alive at the end finished: a node back from a crash
    skips rounds, and one that crashed for good would pin the count at its crash."""
    done: dict[str, int] = dict.fromkeys(alive, 0)
    for node in nodes:
        if node.name in done:
            done[node.name] = max([done[node.name], *(m.round + 1 for m in node.history)])
    return min(done.values(), default=0)
