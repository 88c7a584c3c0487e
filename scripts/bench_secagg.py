#!/usr/bin/env python3
"""Cost of secure aggregation: the same simulation with and without it.

Both runs use the same experiment (learners, data, init, shuffling, topology); the
secure one masks every model per receiver (fixed point, AES-CTR pairwise masks), sends
uint64 instead of float32 and unmasks the sum. Runs alternate, the best of each is kept.

    python scripts/bench_secagg.py                     # 16 nodes x 20 rounds, random-regular:4, MLP, digits
    python scripts/bench_secagg.py --transport tcp --repeats 5

Prints per-round wall time of each and the ratio secure / plain (target <= 1.5).
"""

from __future__ import annotations

import argparse
import json
import time

from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.setup import build_experiment
from p2pfl.simulation.simulator import run_simulation


def _timed(config: ExperimentConfig) -> tuple[float, dict]:
    experiment = build_experiment(config)  # data and models: outside the timing
    started = time.perf_counter()
    result = run_simulation(config, experiment=experiment)
    return time.perf_counter() - started, result.summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--topology", default="random-regular:4")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--transport", default="inproc")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = dict(
        nodes=args.nodes, rounds=args.rounds, topology=args.topology, model=args.model,
        transport=args.transport, dataset="digits",
    )
    plain_cfg = ExperimentConfig(**base)
    secure_cfg = ExperimentConfig(**base, secure_aggregation=True)
    plain, secure = [], []
    summaries = {}
    for _ in range(args.repeats):
        seconds, summaries["plain"] = _timed(plain_cfg)
        plain.append(seconds)
        seconds, summaries["secure"] = _timed(secure_cfg)
        secure.append(seconds)
    best_plain, best_secure = min(plain), min(secure)
    print(json.dumps({
        "nodes": args.nodes, "rounds": args.rounds, "topology": args.topology, "transport": args.transport,
        "plain_seconds_per_round": best_plain / args.rounds,
        "secure_seconds_per_round": best_secure / args.rounds,
        "ratio_secure_over_plain": best_secure / best_plain,
        "plain_accuracy": summaries["plain"]["mean_accuracy"],
        "secure_accuracy": summaries["secure"]["mean_accuracy"],
        "bytes_ratio": summaries["secure"]["bytes_sent_total"] / summaries["plain"]["bytes_sent_total"],
    }, indent=2))


if __name__ == "__main__":
    main()
