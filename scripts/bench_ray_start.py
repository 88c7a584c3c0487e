#!/usr/bin/env python3
"""A sharded run's set-up: the driver's build, the shards' start (until every node is bound),
the shards' peak memory, and the run.

    python scripts/bench_ray_start.py                  # 1,200 logreg nodes, random-regular:4, 2 rounds, 2 shards
    python scripts/bench_ray_start.py --nodes 200      # a quick look

Starts a local Ray (``--cluster ray``) with ``--shards`` shards of ``nodes / shards`` nodes.
"bound" is the driver's own log line, from the actors' creation until every shard has
built its nodes and bound their sockets. The peak RSS (``VmHWM``) of each shard's process
is read from ``/proc`` as each round closes (Linux, local Ray only). Each shard needs
about 24 open files per node: 1,000 nodes in a shard pass Ray's usual limit of 20,000.
"""

from __future__ import annotations

import argparse
import glob
import logging
import time

from p2pfl.simulation.cluster import driver_experiment, run_cluster
from p2pfl.simulation.config import ExperimentConfig


class _Bound(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.line = ""

    def emit(self, record: logging.LogRecord) -> None:
        if "shards bound" in record.getMessage():
            self.line = record.getMessage()


def _shard_peaks(seen: dict[str, int]) -> list[int]:
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as handle:
                if b"ShardActor" not in handle.read():
                    continue
            with open(path.replace("cmdline", "status")) as handle:
                status = handle.read()
        except OSError:  # gone meanwhile
            continue
        peak = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM"))
        seen[path] = max(seen.get(path, 0), peak)
    return sorted(value // 2**20 for value in seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="logreg")
    parser.add_argument("--topology", default="random-regular:4")
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args()
    bound = _Bound()
    logging.getLogger("p2pfl.simulation.cluster").addHandler(bound)
    logging.getLogger("p2pfl.simulation.cluster").setLevel(logging.INFO)
    config = ExperimentConfig(
        nodes=args.nodes, model=args.model, topology=args.topology, rounds=args.rounds, seed=1, cluster="ray",
        shard_size=-(-args.nodes // args.shards), round_timeout=600,
    )
    started = time.perf_counter()
    experiment = driver_experiment(config)
    print(f"driver build: {time.perf_counter() - started:.1f} s")
    seen: dict[str, int] = {}
    peaks: list[int] = []

    def closed(summary: object) -> None:
        peaks[:] = _shard_peaks(seen)

    started = time.perf_counter()
    result = run_cluster(config, progress=closed, experiment=experiment)
    summary = result.summary
    print(f"{bound.line.partition(': ')[2] or 'shards bound: (no log line)'}")
    print(f"shards' peak RSS: {', '.join(f'{peak} MiB' for peak in peaks)}")
    print(f"run: {time.perf_counter() - started:.1f} s in all, wall_seconds {summary['wall_seconds']:.1f} s; "
          f"accuracy {summary['mean_accuracy']:.4f}, consensus distance {summary['consensus_distance']:.6g}")


if __name__ == "__main__":
    main()
