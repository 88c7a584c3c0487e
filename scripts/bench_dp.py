#!/usr/bin/env python3
"""Accuracy under differential privacy: 10 nodes on breast_cancer, ε ≤ 3 at δ = 1e-5.

Runs the networked simulation without DP, with sample-level DP-SGD (Opacus; the noise
chosen so that every node's ε after the last round is ≤ the target) and with
update-level DP (each round's update clipped and noised, ε for the node's whole
contribution), for a few seeds, and prints a Markdown table of ε and final accuracy.

    python scripts/bench_dp.py                        # logreg, iid, 10 rounds, 3 seeds
    python scripts/bench_dp.py --model mlp --partition dirichlet:0.5 --seeds 0 1 2 3 4

Needs Opacus (pip install 'p2pfl-gossip[privacy]').
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.simulator import run_simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--topology", default="ring")
    parser.add_argument("--model", default="logreg")
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--target-epsilon", type=float, default=3.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--update-noise", type=float, default=0.5,
                        help="also run update-level DP with this fixed noise multiplier (0 = skip)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    base = dict(
        nodes=args.nodes, dataset="breast_cancer", topology=args.topology, model=args.model,
        partition=args.partition, rounds=args.rounds, batch_size=args.batch_size, lr=args.lr,
        delta=args.delta, clip=args.clip,
    )
    eps = args.target_epsilon
    variants: list[tuple[str, dict[str, Any]]] = [
        ("no DP", {}),
        (f"DP-SGD (sample), target eps {eps:g}", {"dp": "sample", "target_epsilon": eps}),
        (f"update-level DP, target eps {eps:g}", {"dp": "update", "target_epsilon": eps}),
    ]
    if args.update_noise > 0:
        variants.append((f"update-level DP, noise {args.update_noise:g}", {"dp": "update", "noise": args.update_noise}))

    print(f"breast_cancer, {args.nodes} nodes, {args.topology}, {args.model}, partition {args.partition}, "
          f"{args.rounds} rounds, batch {args.batch_size}, lr {args.lr:g}, clip {args.clip:g}, "
          f"delta {args.delta:g}, seeds {' '.join(map(str, args.seeds))}\n")
    print("| run | eps (max over nodes) | noise multiplier | mean accuracy | min node accuracy | seconds |")
    print("|---|---|---|---|---|---|")
    for label, extra in variants:
        summaries = []
        started = time.perf_counter()
        for seed in args.seeds:
            config = ExperimentConfig(**base, **extra, seed=seed)  # type: ignore[arg-type]
            summaries.append(run_simulation(config).summary)
        seconds = (time.perf_counter() - started) / len(args.seeds)
        print(f"| {label} | {_eps(summaries)} | {_noise(summaries)} | {_spread(summaries, 'mean_accuracy')} "
              f"| {_spread(summaries, 'min_accuracy')} | {seconds:.1f} |", flush=True)


def _spread(summaries: list[dict[str, Any]], key: str) -> str:
    values = [s[key] for s in summaries]
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _eps(summaries: list[dict[str, Any]]) -> str:
    values = [s["epsilon_max"] for s in summaries]
    return "∞ (none)" if None in values else f"{max(values):.2f}"


def _noise(summaries: list[dict[str, Any]]) -> str:
    low = [s["noise_multiplier_min"] for s in summaries if s["noise_multiplier_min"] is not None]
    high = [s["noise_multiplier_max"] for s in summaries if s["noise_multiplier_max"] is not None]
    if not low:
        return "–"
    return f"{min(low):.2f}" if min(low) == max(high) else f"{min(low):.2f}–{max(high):.2f}"


if __name__ == "__main__":
    main()
