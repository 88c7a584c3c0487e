#!/usr/bin/env python3
"""Cost of CurveZMQ encryption: the same TCP simulation with and without Curve.

Both runs are identical (same learners, rounds, topology, TCP loopback links); one
encrypts and authenticates every link (CurveZMQ + ZAP allow-list, sender checked
against the authenticated key on every message), the other does not.

    python scripts/bench_curve.py                 # 16 nodes x 40 rounds, MLP on digits
    python scripts/bench_curve.py --repeats 5 --rounds 20

Prints the median wall time of each and the ratio curve / insecure (target <= 1.10).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.setup import build_experiment
from p2pfl.simulation.simulator import run_simulation


def timed(config: ExperimentConfig) -> float:
    experiment = build_experiment(config)
    started = time.perf_counter()
    result = run_simulation(config, experiment=experiment)
    elapsed = time.perf_counter() - started
    if result.summary["messages_rejected"] or result.summary["rounds_completed"] != config.rounds:
        raise SystemExit(f"run went wrong: {result.summary}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--topology", default="ring")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    plain = ExperimentConfig(
        nodes=args.nodes, rounds=args.rounds, topology=args.topology, model=args.model, transport="tcp"
    )
    curve = dataclasses.replace(plain, curve=True)
    insecure_times, curve_times = [], []
    for _ in range(args.repeats):  # alternate so machine drift hits both alike
        insecure_times.append(timed(plain))
        curve_times.append(timed(curve))
    result = {
        "nodes": args.nodes, "rounds": args.rounds, "topology": args.topology, "model": args.model,
        "repeats": args.repeats,
        "insecure_seconds_median": statistics.median(insecure_times),
        "curve_seconds_median": statistics.median(curve_times),
        "ratio": statistics.median(curve_times) / statistics.median(insecure_times),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
