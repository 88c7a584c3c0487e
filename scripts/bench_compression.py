#!/usr/bin/env python3
"""Compressed gossip: final accuracy, bytes per node, rounds and bytes to a target.

    python scripts/bench_compression.py                       # 16 nodes, ring, digits MLP, seeds 0-2
    python scripts/bench_compression.py --topology random-regular:4 --model cnn
    python scripts/bench_compression.py --codecs choco:1+topk:0.3:int4 choco:0.6+topk:0.2:int4

Runs the same experiment (same data, partition, init, shuffling) with ``compress`` off,
``fp16``, ``bf16`` and ``int8`` and prints, per codec, averaged over the seeds: the final
mean accuracy over the nodes and its difference to uncompressed gossip in points; the
model bytes each node sent over the run and the reduction factor; the rounds and bytes
per node until the mean accuracy first reached the target (the uncompressed run's final
mean accuracy minus 1 point, per seed); the wall time. CHOCO rows run ``--choco-factor`` times as many rounds (3 by
default; bytes to the target count every byte until the target is first reached, in
whatever round): ``acc@R`` and ``bytes/node`` are at the same round R as the others,
``last`` at the end of the longer run. Targets (issue 15): fp16 within
0.2 point at half the bytes; int8 >= 3.5x fewer bytes within 0.5 point; CHOCO with topk
>= 10x fewer bytes to the target (``fewer→t``). A row ``GOSSIP+CODEC`` (e.g.
``choco:0.5+topk:0.02``, or ``choco`` alone: dense differences) runs CHOCO gossip with
that codec; a plain codec runs plain gossip. ``topk:F`` and ``randk:F`` alone average
sparse weights, which is not what they are for; ``--codecs`` runs them anyway.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.simulator import run_simulation

CODECS = ("", "fp16", "bf16", "int8", "choco:1+topk:0.3:int4", "choco:0.8+topk:0.2:int4")


def _row(spec: str) -> tuple[str, str]:
    """``(gossip, compress)`` of a row: ``int8``, ``choco``, ``choco:0.3+topk:0.02``."""
    if "+" in spec:
        gossip, codec = spec.split("+", 1)
        return gossip, codec
    return (spec, "") if spec.startswith("choco") else ("plain", spec)


def _run(args: argparse.Namespace, seed: int, codec: str, target: float | None) -> dict[str, Any]:
    """One run; ``target`` None: the uncompressed one, which sets the target itself."""
    gossip, compress = _row(codec)
    rounds = args.rounds * (args.choco_factor if gossip.startswith("choco") else 1)
    config = ExperimentConfig(nodes=args.nodes, rounds=rounds, topology=args.topology,
                              model=args.model, seed=seed, compress=compress, gossip=gossip)
    result = run_simulation(config)
    summary = result.summary
    if target is None:
        target = summary["mean_accuracy"] - 0.01
    reached, spent, cumulative, at_r = None, None, 0, None
    for round_ in result.rounds:
        cumulative += round_.bytes_sent
        if reached is None and round_.mean_accuracy >= target:
            reached, spent = round_.round + 1, cumulative / args.nodes
        if round_.round + 1 == args.rounds:
            at_r = (round_.mean_accuracy, cumulative / args.nodes)
    assert at_r is not None
    return {"accuracy": at_r[0], "bytes": at_r[1], "last": summary["mean_accuracy"],
            "rounds_to_target": reached, "bytes_to_target": spent, "reached": int(reached is not None), "wall": summary["wall_seconds"], "target": target}


def _mean(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.mean(present) if len(present) == len(values) else None  # None: a seed never got there


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--topology", default="ring")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--codecs", nargs="+", default=list(CODECS[1:]), help="besides uncompressed")
    parser.add_argument("--choco-factor", type=int, default=3, help="CHOCO rows run this many times --rounds")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"none": []}
    for seed in args.seeds:
        runs["none"].append(_run(args, seed, "", None))
    targets = {seed: run["target"] for seed, run in zip(args.seeds, runs["none"], strict=True)}
    for codec in args.codecs:
        runs[codec] = [_run(args, seed, codec, targets[seed]) for seed in args.seeds]
    rows = {codec: {key: _mean([r[key] for r in results]) for key in results[0]} for codec, results in runs.items()}
    base = rows["none"]
    print(f"{args.nodes} nodes, {args.topology}, {args.model}, {args.rounds} rounds, seeds {args.seeds}; "
          "target = uncompressed final accuracy - 1 point")
    print(f"{'codec':<26} {'acc@R':>7} {'vs none':>8} {'last':>7} {'bytes/node':>11} {'fewer':>6} "
          f"{'rounds→t':>8} {'bytes→t':>10} {'fewer→t':>8} {'seeds→t':>7} {'wall s':>7}")
    for codec, row in rows.items():
        rounds_to = "-" if row["rounds_to_target"] is None else f"{row['rounds_to_target']:.1f}"
        bytes_to = "-" if row["bytes_to_target"] is None else f"{row['bytes_to_target']:,.0f}"
        fewer_to = ("-" if row["bytes_to_target"] is None or base["bytes_to_target"] is None
                    else f"{base['bytes_to_target'] / row['bytes_to_target']:.2f}x")
        print(f"{codec:<26} {row['accuracy']:>7.4f} {100 * (row['accuracy'] - base['accuracy']):>+7.2f}p "
              f"{row['last']:>7.4f} {row['bytes']:>11,.0f} {base['bytes'] / row['bytes']:>5.2f}x {rounds_to:>8} {bytes_to:>10} "
              f"{fewer_to:>8} {row['reached']:>7.2f} {row['wall']:>7.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
