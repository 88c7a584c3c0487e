#!/usr/bin/env python3
"""Nodes in one process vs time per node-round and memory per node.

Each size runs in its own process (so its peak RSS is its own): random-regular:4 over
inproc, IID split, default settings otherwise. The bundled digits (1,437 training
samples) cannot give 1,000 nodes two samples each, so the sizes train on a larger set:
digits' training split six times over, five of them with pixel noise (8,622 samples;
the test split is digits' own 360), of which each size takes ``SAMPLES_PER_NODE`` per
node, so a node's step costs the same at every size (4,000 nodes take all 8,622: two
each).

    python scripts/bench_scale.py            # 16, 64, 256, 1,000 nodes (MLP), 4,000 (logreg)

Per size: the run's wall time / (nodes x rounds); peak RSS; and per node, the peak minus
the RSS once every learner was built (model, optimizer state and data are in that),
i.e. what a node costs beyond its model, optimizer and data: its sockets and queues,
the models it receives, aggregates and sends, its share of the recorder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_memory import peak_rss_mb, rss_mb

#: (nodes, model, rounds): rounds shrink as nodes grow so the whole table takes minutes
#: training samples per node: a node's work per round is the same at every size
SAMPLES_PER_NODE = 8

SIZES = [(16, "mlp", 20), (64, "mlp", 10), (256, "mlp", 5), (1000, "mlp", 3), (4000, "logreg", 3)]


def write_dataset(path: Path, train_samples: int, copies: int = 6, seed: int = 0) -> None:
    """``train_samples`` of digits' training split ``copies`` times over (all but the first
    copy with noise), shuffled; its test split as is."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.2, random_state=seed, stratify=digits.target
    )
    rng = np.random.default_rng(seed)
    x = np.concatenate([x_train + (rng.normal(0, 0.5, x_train.shape) if i else 0) for i in range(copies)])
    keep = rng.permutation(len(x))[:train_samples]
    np.savez(path, x_train=x[keep].astype(np.float32), y_train=np.tile(y_train, copies)[keep],
             x_test=x_test.astype(np.float32), y_test=y_test)


def child(nodes: int, model: str, rounds: int, dataset: str) -> dict[str, float]:
    """One size, in this process."""
    from p2pfl.simulation.config import ExperimentConfig
    from p2pfl.simulation.setup import build_experiment
    from p2pfl.simulation.simulator import run_simulation

    config = ExperimentConfig(
        nodes=nodes, topology="random-regular:4", model=model, rounds=rounds,
        dataset=f"npz:{dataset}", partition="iid",
    )
    started = time.perf_counter()
    experiment = build_experiment(config)
    build_seconds = time.perf_counter() - started
    built = rss_mb()
    learner = experiment.learners[0]
    params = sum(int(np.prod(v.shape)) for v in learner.get_weights().values())
    result = run_simulation(config, experiment=experiment)
    peak = peak_rss_mb()
    wall = result.summary["wall_seconds"]
    return {
        "nodes": nodes, "model": model, "params": params, "rounds": rounds,
        "rounds_completed": result.summary["rounds_completed"], "build_s": build_seconds, "wall_s": wall,
        "ms_per_node_round": 1000 * wall / (nodes * rounds), "built_mb": built, "peak_mb": peak,
        "kb_per_node_beyond_learner": 1024 * (peak - built) / nodes,
        "mean_accuracy": result.summary["mean_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=4, metavar=("NODES", "MODEL", "ROUNDS", "NPZ"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="*", help="node counts to run (default: all of the table)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per size")
    args = parser.parse_args()
    if args.child:
        nodes, model, rounds, dataset = args.child
        print(json.dumps(child(int(nodes), model, int(rounds), dataset)))
        return
    sizes = [size for size in SIZES if not args.sizes or size[0] in args.sizes]
    with tempfile.TemporaryDirectory(prefix="p2pfl-bench-scale-") as directory:
        if not args.json:
            print("| nodes | model (params) | rounds | wall s | ms / node-round | peak RSS MB | KB / node beyond model, optimizer, data |")
            print("|---:|---|---:|---:|---:|---:|---:|")
        for nodes, model, rounds in sizes:
            dataset = Path(directory) / f"digits-{nodes}.npz"
            write_dataset(dataset, nodes * SAMPLES_PER_NODE)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(nodes), model, str(rounds), str(dataset)],
                check=True, capture_output=True, text=True,
            ).stdout.strip().splitlines()[-1]
            row = json.loads(out)
            if args.json:
                print(json.dumps(row), flush=True)
                continue
            print(
                f"| {nodes:,} | {model} ({row['params']:,}) | {row['rounds_completed']}/{rounds} | {row['wall_s']:.1f} "
                f"| {row['ms_per_node_round']:.2f} | {row['peak_mb']:.0f} | {row['kb_per_node_beyond_learner']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
