#!/usr/bin/env python3
"""The same experiment in one process and sharded over Ray (``--cluster``): same results? time ratio.

    python scripts/bench_ray.py                              # 64 nodes, MLP, digits, random-regular:4, 5 rounds, 2 shards
    python scripts/bench_ray.py --nodes 16 --rounds 3        # a quick look
    python scripts/bench_ray.py --cluster auto               # on the Ray cluster this machine is part of

Runs the one-process simulation (``run_simulation``), then the sharded one
(``run_cluster``, ``--shards`` actors of nodes/shards nodes each); prints both wall times
(the runs' own ``wall_seconds``, from the first node start to the last round; plus the
sharded run's total with Ray's start and the actors' set-up), their ratio, and whether every node's
accuracy in every round is identical (sync mode: it must be). With ``--cluster ray`` the
local Ray gets ``--shards`` CPUs and a 100 MB object store.
"""

from __future__ import annotations

import argparse
import json
import math
import time

from p2pfl.simulation.cluster import import_ray, run_cluster
from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.simulator import run_simulation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--topology", default="random-regular:4")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--cluster", default="ray", help="ray (a local Ray), auto or ray://HOST:PORT")
    args = parser.parse_args()
    settings = dict(nodes=args.nodes, topology=args.topology, rounds=args.rounds, seed=0, model="mlp",
                    dataset="digits")
    one = run_simulation(ExperimentConfig(**settings))
    ray = import_ray()
    started = time.perf_counter()
    if args.cluster == "ray":  # started here, small: only metrics go through Ray
        ray.init(address="local", num_cpus=args.shards, include_dashboard=False, object_store_memory=100 * 2**20,
                 configure_logging=False)
    else:
        ray.init(address=args.cluster, configure_logging=False)
    try:
        sharded = run_cluster(ExperimentConfig(**settings, cluster=args.cluster,
                                               shard_size=math.ceil(args.nodes / args.shards)))
    finally:
        ray.shutdown()
    total = time.perf_counter() - started

    def accuracies(rows: list[dict]) -> dict:
        return {(row["node"], row["round"]): row["test_accuracy"] for row in rows}

    one_wall, ray_wall = one.summary["wall_seconds"], sharded.summary["wall_seconds"]
    print(json.dumps({
        **settings, "shards": args.shards, "cluster": args.cluster,
        "identical_accuracies": accuracies(one.rows) == accuracies(sharded.rows),
        "mean_accuracy": [one.summary["mean_accuracy"], sharded.summary["mean_accuracy"]],
        "one_process_seconds": round(one_wall, 2), "ray_seconds": round(ray_wall, 2),
        "ray_seconds_with_start": round(total, 2), "ratio_ray_over_one": round(ray_wall / one_wall, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
