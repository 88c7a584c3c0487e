#!/usr/bin/env python3
"""Peak memory and round time with models of real size (issue 14).

Each configuration runs in a fresh process (its peak RSS is its own): 8 nodes on a
ring, 3 rounds, SGD with momentum (the default), a wide MLP on digits
(``scripts/wide_models.py``), over inproc and tcp, and the plain loop
(``p2pfl.simulation.reference``) for the time per round.

    python scripts/bench_model_size.py                 # 1M and 10.6M parameters
    python scripts/bench_model_size.py --with-50m      # also 50M (needs ~12 GB)

Model copies per node = (peak RSS - baseline RSS) / (nodes x model bytes), where the
baseline is the child's RSS with python, torch and p2pfl imported, before any model.
A node's floor is its model, gradient and momentum (3 copies) plus what it sends and
receives in a round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_memory import peak_rss_mb, rss_mb

SCRIPTS = Path(__file__).resolve().parent
MODELS = ["mlp_1m", "mlp_10m"]


def child(model: str, transport: str, nodes: int, rounds: int, steps: int) -> dict[str, object]:
    """One configuration, in this process (``transport`` "plain": the reference loop)."""
    import numpy as np  # noqa: F401  (imported before the baseline, as the run needs it)

    from p2pfl.simulation.config import ExperimentConfig
    from p2pfl.simulation.reference import run_reference
    from p2pfl.simulation.setup import build_experiment
    from p2pfl.simulation.simulator import run_simulation

    baseline = rss_mb()
    config = ExperimentConfig(
        nodes=nodes, topology="ring", model=f"wide_models:{model}", rounds=rounds, local_steps=steps,
        transport="inproc" if transport == "plain" else transport, round_timeout=600.0,
    )
    experiment = build_experiment(config)
    weights = experiment.learners[0].get_weights()
    model_bytes = sum(int(a.nbytes) for a in weights.values())
    params = sum(int(a.size) for a in weights.values())
    del weights
    started = time.perf_counter()
    accuracy = float("nan")
    if transport == "plain":
        run_reference(experiment)
    else:
        result = run_simulation(config, experiment=experiment)
        accuracy = result.summary["mean_accuracy"]
    wall = time.perf_counter() - started
    peak = peak_rss_mb()
    return {
        "model": model, "params": params, "model_mb": model_bytes / 2**20, "transport": transport,
        "nodes": nodes, "rounds": rounds, "baseline_mb": baseline, "peak_mb": peak,
        "copies_per_node": (peak - baseline) * 2**20 / (nodes * model_bytes),
        "s_per_round": wall / rounds, "mean_accuracy": accuracy,
    }


def run_child(model: str, transport: str, args: argparse.Namespace) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, __file__, "--child", model, transport,
               "--nodes", str(args.nodes), "--rounds", str(args.rounds), "--steps", str(args.steps)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    row: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "TRANSPORT"), help=argparse.SUPPRESS)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="local steps per round (default: 4)")
    parser.add_argument("--models", nargs="*", default=MODELS, help=f"models to run (default: {MODELS})")
    parser.add_argument("--transports", nargs="*", default=["inproc", "tcp", "plain"])
    parser.add_argument("--with-50m", action="store_true", help="also the 50M-parameter model (~12 GB)")
    parser.add_argument("--json", action="store_true", help="one JSON line per configuration")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.nodes, args.rounds, args.steps)))
        return
    models = [*args.models, *(["mlp_50m"] if args.with_50m else [])]
    if not args.json:
        print("| model (params) | transport | baseline MB | peak RSS MB | copies / node | s / round |")
        print("|---|---|---:|---:|---:|---:|")
    for model in models:
        for transport in args.transports:
            row = run_child(model, transport, args)
            if args.json:
                print(json.dumps(row), flush=True)
                continue
            print(
                f"| {model} ({row['params']:,}) | {transport} | {row['baseline_mb']:.0f} | {row['peak_mb']:.0f} "
                f"| {row['copies_per_node']:.1f} | {row['s_per_round']:.2f} |", flush=True,
            )


if __name__ == "__main__":
    main()
