#!/usr/bin/env python3
"""Asynchronous vs synchronous gossip with stragglers: time to the same accuracy.

Both runs use the same experiment (data, partition, init, topology) and the same
emulated hardware: every node's step takes ``--step-seconds`` of wall time, the
``--slow-nodes`` (chosen with the seed) ``--slowdown`` times as long (see
``p2pfl.simulation.pacing``: nodes behave as if each had its own machine, so the shared
cores of this one do not hide the stragglers). Sync runs ``--rounds`` rounds; its final
mean accuracy is the target. Async runs up to ``--async-rounds`` clock ticks; its time
to target is the first moment the mean of every node's latest accuracy reaches it.

    python scripts/bench_async.py        # 16 nodes, ring, digits, Dirichlet(0.5), 2 nodes 5x slower

Prints both times and the ratio async / sync (target <= 0.5).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.setup import build_experiment
from p2pfl.simulation.simulator import run_simulation


def time_to_accuracy(rows: list[dict[str, Any]], nodes: int, target: float, started: float) -> float | None:
    """Seconds from ``started`` until the mean of all nodes' latest accuracies >= target."""
    latest: dict[str, float] = {}
    for row in sorted(rows, key=lambda r: r["timestamp"]):
        latest[row["node"]] = row["test_accuracy"]
        if len(latest) == nodes and sum(latest.values()) / nodes >= target - 1e-9:  # summation order
            return row["timestamp"] - started
    return None


def _run(config: ExperimentConfig) -> tuple[float, float, list[dict[str, Any]], dict[str, Any]]:
    experiment = build_experiment(config)  # data and models: outside the timing
    started = time.time()
    result = run_simulation(config, experiment=experiment)
    return started, time.time() - started, result.rows, result.summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--topology", default="ring")
    parser.add_argument("--partition", default="dirichlet:0.5")
    parser.add_argument("--rounds", type=int, default=40, help="sync rounds")
    parser.add_argument("--async-rounds", type=int, default=160, help="async clock ticks at most")
    parser.add_argument("--slow-nodes", type=int, default=2)
    parser.add_argument("--slowdown", type=float, default=5.0)
    parser.add_argument("--step-seconds", type=float, default=0.15)
    parser.add_argument("--staleness", type=float, default=0.5)
    parser.add_argument("--staleness-grace", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = dict(
        nodes=args.nodes, topology=args.topology, partition=args.partition, dataset="digits",
        slow_nodes=args.slow_nodes, slowdown=args.slowdown, step_seconds=args.step_seconds,
        seed=args.seed, round_timeout=60.0,
    )
    sync_started, sync_wall, sync_rows, sync_summary = _run(ExperimentConfig(**base, rounds=args.rounds))
    target = sync_summary["mean_accuracy"]
    async_started, async_wall, async_rows, async_summary = _run(
        ExperimentConfig(**base, rounds=args.async_rounds, mode="async", staleness=args.staleness,
                               staleness_grace=args.staleness_grace)
    )
    reached = time_to_accuracy(async_rows, args.nodes, target, async_started)
    print(json.dumps({
        "nodes": args.nodes, "topology": args.topology, "slow_nodes": sync_summary["slow_nodes"],
        "slowdown": args.slowdown, "step_seconds": args.step_seconds,
        "sync_rounds": args.rounds, "sync_final_accuracy": target, "sync_wall_seconds": sync_wall,
        "sync_time_to_target": time_to_accuracy(sync_rows, args.nodes, target, sync_started),
        "async_time_to_target": reached,
        "async_ticks_to_target": next(
            (r["round"] for r in sorted(async_rows, key=lambda r: r["timestamp"])
             if reached is not None and r["timestamp"] - async_started >= reached), None),
        "async_final_accuracy": async_summary["mean_accuracy"], "async_wall_seconds": async_wall,
        "ratio_async_over_sync": None if reached is None else reached / sync_wall,
    }, indent=2))


if __name__ == "__main__":
    main()
