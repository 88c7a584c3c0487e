"""Run many :class:`~p2pfl.node.node.Node` s on this machine over real ZeroMQ sockets.

The simulator only arranges: it builds the nodes a deployment would build, binds them,
tells each where its peers listen, runs them all, and records what they report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from p2pfl.config import to_dict
from p2pfl.learning.learner import Weights
from p2pfl.node.node import Node, NodeConfig
from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.recorder import MetricsRecorder, RoundSummary
from p2pfl.simulation.setup import Experiment, build_experiment, torch_threads
from p2pfl.topology import spectral_gap
from p2pfl.transport import ZmqTransport

log = logging.getLogger(__name__)


@dataclass
class SimulationResult:
    """What a finished simulation returns (``summary`` is also ``summary.json``)."""

    summary: dict[str, Any]
    rounds: list[RoundSummary]
    rows: list[dict[str, Any]]
    final_weights: dict[str, Weights]
    rejected: Counter[str] = field(default_factory=Counter)


async def simulate(
    config: ExperimentConfig,
    *,
    progress: Callable[[RoundSummary], None] | None = None,
    experiment: Experiment | None = None,
) -> SimulationResult:
    """Run the experiment described by ``config``.

    Args:
        config: the experiment.
        progress: called after each round closes across all nodes.
        experiment: a pre-built experiment (tests and benchmarks); built from ``config``
            otherwise.
    """
    experiment = experiment or build_experiment(config)
    out_dir = Path(config.out) if config.out else None
    recorder = MetricsRecorder(experiment.names, out_dir, progress)
    started = time.perf_counter()
    context = zmq.Context()
    # One worker: the learners take turns with torch's global RNG anyway, and a single
    # thread keeps those turns free of contention.
    executor = ThreadPoolExecutor(1, thread_name_prefix="p2pfl-train")
    try:
        with _endpoints(config.transport) as endpoint_for, torch_threads(config.torch_threads):
            security_for, authenticator = _link_security(config.curve, experiment.names, context)
            nodes = [
                Node(
                    NodeConfig(name=name, rounds=config.rounds, round_timeout=config.round_timeout),
                    learner,
                    experiment.schedule,
                    ZmqTransport(context, endpoint_for(i), security=security_for(name)),
                    executor=executor,
                    observer=recorder,
                )
                for i, (name, learner) in enumerate(zip(experiment.names, experiment.learners, strict=True))
            ]
            async with contextlib.AsyncExitStack() as stack:
                if authenticator is not None:
                    await stack.enter_async_context(authenticator)
                for node in nodes:
                    await stack.enter_async_context(node)
                endpoints = {node.name: node.endpoint for node in nodes}
                for node in nodes:
                    for peer in experiment.schedule.peers(node.name):
                        node.add_peer(peer, endpoints[peer])  # type: ignore[arg-type]
                async with asyncio.TaskGroup() as group:
                    for node in nodes:
                        group.create_task(node.run(), name=f"run-{node.name}")
    finally:
        recorder.close()
        executor.shutdown(wait=True)
        context.term()
    wall = time.perf_counter() - started
    rejected: Counter[str] = Counter()
    for node in nodes:
        rejected.update(node.stats.rejected)
    summary = _summary(config, experiment, recorder, nodes, wall, rejected)
    if out_dir is not None:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return SimulationResult(summary, recorder.rounds, recorder.rows, recorder.final_weights, rejected)


def run_simulation(
    config: ExperimentConfig, *, progress: Callable[[RoundSummary], None] | None = None
) -> SimulationResult:
    """Blocking wrapper around :func:`simulate` for scripts."""
    return asyncio.run(simulate(config, progress=progress))


def _link_security(curve: bool, names: list[str], context: zmq.Context) -> tuple[Any, Any]:
    """Per-node CurveSecurity (fresh keys, everyone allow-listed) and the context's ZAP handler."""
    if not curve:
        return (lambda name: None), None
    from p2pfl.security import AllowList, CurveSecurity, curve_authenticator, generate_keypair

    keypairs = {name: generate_keypair() for name in names}
    allowlist = AllowList(lambda: {name: pair.public for name, pair in keypairs.items()})
    return (lambda name: CurveSecurity(keypairs[name], allowlist)), curve_authenticator(context, allowlist)


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
) -> dict[str, Any]:
    final_round = [row for row in recorder.rows if row["round"] == config.rounds - 1]
    accuracies = [row["test_accuracy"] for row in final_round]
    last = recorder.rounds[-1] if recorder.rounds else None
    return {
        "nodes": experiment.topology.n,
        "rounds": config.rounds,
        "rounds_completed": min(len(node.history) for node in nodes),
        "mean_accuracy": sum(accuracies) / len(accuracies) if accuracies else None,
        "min_accuracy": min(accuracies) if accuracies else None,
        "max_accuracy": max(accuracies) if accuracies else None,
        "consensus_distance": last.consensus_distance if last else None,
        "wall_seconds": wall,
        "bytes_sent_total": sum(node.stats.bytes_sent for node in nodes),
        "bytes_received_total": sum(node.stats.bytes_received for node in nodes),
        "messages_rejected": dict(rejected),
        "topology": experiment.topology.spec,
        "spectral_gap": spectral_gap(experiment.topology.mixing) if not config.fanout else None,
        "config": to_dict(config),
    }
