#!/usr/bin/env python3
"""Cost of the node/wire/transport machinery: networked simulation vs a plain loop.

Both do the same work: the same learners (same data, init, shuffling), the same local
steps, the same per-round evaluation on the test set, the same averaging and the same
consensus-distance bookkeeping. The simulation adds nodes, asyncio, the wire format and
ZeroMQ sockets; the plain loop (p2pfl.simulation.reference) has none of it.

    python scripts/bench_overhead.py                      # 16 nodes x 40 rounds, MLP, digits, inproc
    python scripts/bench_overhead.py --transport tcp --repeats 5

Prints the wall time of each and the ratio simulation / plain loop (target <= 1.2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.reference import run_reference
from p2pfl.simulation.setup import build_experiment
from p2pfl.simulation.simulator import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--topology", default="ring")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--transport", default="inproc")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = ExperimentConfig(
        nodes=args.nodes, rounds=args.rounds, topology=args.topology, model=args.model,
        transport=args.transport,
    )
    plain, networked = [], []
    for _ in range(args.repeats):
        # alternate, so drifting machine load hits both sides alike
        experiment = build_experiment(config)
        started = time.perf_counter()
        run_reference(experiment, on_round=lambda summary: None)
        plain.append(time.perf_counter() - started)

        experiment = build_experiment(config)
        started = time.perf_counter()
        asyncio.run(simulate(config, experiment=experiment))
        networked.append(time.perf_counter() - started)
    result = {
        "nodes": args.nodes, "rounds": args.rounds, "topology": args.topology,
        "model": args.model, "transport": args.transport, "repeats": args.repeats,
        "torch_threads": config.torch_threads,  # both sides (ExperimentConfig default: 1)
        "plain_seconds_median": statistics.median(plain),
        "simulation_seconds_median": statistics.median(networked),
        "ratio": statistics.median(networked) / statistics.median(plain),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
