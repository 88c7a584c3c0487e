#!/usr/bin/env python3
"""Cost of secure aggregation: the same simulation with and without it.

Both runs use the same experiment (learners, data, init, shuffling, topology); the
secure one double-masks every model per receiver (fixed point, AES-CTR self and pairwise
masks, Shamir-shared self-mask seeds), sends uint64 instead of float32, commits to one
dropout set per round and unmasks the sum. Runs alternate, the best of each is kept.

    python scripts/bench_secagg.py                     # 16 nodes x 20 rounds, random-regular:4, MLP, digits
    python scripts/bench_secagg.py --transport tcp --repeats 5
    python scripts/bench_secagg.py --drop 2            # 2 nodes crash mid-run (after round 9)

Prints per-round wall time of each and the ratio secure / plain (target <= 2.0). With
``--drop`` it prints the rounds every survivor completed and both accuracies (target:
every round completes, accuracy within 1 point of plain gossip with the same crashes);
round times then include the round that waits ``--round-timeout`` for the crashed ones.
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
    seconds = time.perf_counter() - started
    summary = dict(result.summary)
    failed = set(summary.get("failed_nodes", ()))
    rounds = {name: sum(1 for row in result.rows if row["node"] == name) for name in experiment.names}
    summary["every_survivor_every_round"] = all(n == config.rounds for name, n in rounds.items() if name not in failed)
    summary["rounds_without_neighbours"] = sum(1 for row in result.rows if not row["received_from"])
    return seconds, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--topology", default="random-regular:4")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--transport", default="inproc")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--drop", type=int, default=0, help="nodes that crash after round rounds/2 - 1")
    parser.add_argument("--round-timeout", type=float, default=2.0, help="with --drop: seconds a round waits")
    args = parser.parse_args()
    base: dict = dict(
        nodes=args.nodes, rounds=args.rounds, topology=args.topology, model=args.model,
        transport=args.transport, dataset="digits",
    )
    if args.drop:
        # spread over the names (1, 9, ...): a fixed, documented choice, not a friendly one
        step = args.nodes // args.drop
        crash = args.rounds // 2 - 1
        base.update(fail=tuple(f"node={1 + k * step},round={crash}" for k in range(args.drop)),
                    round_timeout=args.round_timeout)
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
        "dropped": list(base.get("fail", ())),
        "every_survivor_every_round": {k: v["every_survivor_every_round"] for k, v in summaries.items()},
        "rounds_without_neighbours": {k: v["rounds_without_neighbours"] for k, v in summaries.items()},
        "plain_seconds_per_round": best_plain / args.rounds,
        "secure_seconds_per_round": best_secure / args.rounds,
        "ratio_secure_over_plain": best_secure / best_plain,
        "plain_accuracy": summaries["plain"]["mean_accuracy"],
        "secure_accuracy": summaries["secure"]["mean_accuracy"],
        "bytes_ratio": summaries["secure"]["bytes_sent_total"] / summaries["plain"]["bytes_sent_total"],
    }, indent=2))


if __name__ == "__main__":
    main()
