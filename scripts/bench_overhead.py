#!/usr/bin/env python3
"""Cost of the node/wire/transport machinery: networked simulation vs a plain loop.

Both do the same work: the same learners (same data, init, shuffling), the same local
steps, the same per-round evaluation on the test set, the same averaging and the same
consensus-distance bookkeeping. The simulation adds nodes, asyncio, the wire format and
ZeroMQ sockets; the plain loop (p2pfl.simulation.reference) has none of it.

    python scripts/bench_overhead.py                      # 16 nodes x 40 rounds, MLP, digits, inproc
    python scripts/bench_overhead.py --transport tcp --repeats 5

Prints the wall time of each and the ratio simulation / plain loop (target <= 1.2):
the median of back-to-back pairs' ratios, plus the ratio of medians and of minimums.
Both sides run as users run them: the simulation through ``run_simulation`` (the
``p2pfl simulate`` path), the plain loop through ``run_reference``; with the default
``pin_cpu`` both keep their threads on the core they start on. Both runs of a pair start
on the same core, and the pairs take the cores in turn: on a VM one core can run much
slower than the other for minutes (a busy neighbour), which would otherwise decide a
pair's ratio by which core each run happened to start on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.reference import run_reference
from p2pfl.simulation.setup import build_experiment
from p2pfl.simulation.simulator import run_simulation
from p2pfl.simulation.worker import pinned_thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--topology", default="ring")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--transport", default="inproc")
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    config = ExperimentConfig(
        nodes=args.nodes, rounds=args.rounds, topology=args.topology, model=args.model,
        transport=args.transport,
    )
    def plain_run() -> float:
        experiment = build_experiment(config)
        started = time.perf_counter()
        run_reference(experiment, on_round=lambda summary: None)
        return time.perf_counter() - started

    def networked_run() -> float:
        experiment = build_experiment(config)
        started = time.perf_counter()
        run_simulation(config, experiment=experiment)
        return time.perf_counter() - started

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [None]
    plain, networked = [], []
    for repeat in range(args.repeats):
        # back-to-back pairs on one core, in alternating order: the VM's speed drifts
        # (the plain loop alone varies 1.7-3.5 s), so each pair compares like with like
        with pinned_thread(cores[repeat % len(cores)]):
            if repeat % 2:
                networked.append(networked_run())
                plain.append(plain_run())
            else:
                plain.append(plain_run())
                networked.append(networked_run())
    pair_ratios = [n / p for n, p in zip(networked, plain, strict=True)]
    result = {
        "nodes": args.nodes, "rounds": args.rounds, "topology": args.topology,
        "model": args.model, "transport": args.transport, "repeats": args.repeats,
        "torch_threads": config.torch_threads,  # both sides (ExperimentConfig default: 1)
        "plain_seconds": [round(x, 3) for x in plain],
        "simulation_seconds": [round(x, 3) for x in networked],
        "plain_seconds_median": statistics.median(plain),
        "simulation_seconds_median": statistics.median(networked),
        "ratio_of_medians": statistics.median(networked) / statistics.median(plain),
        # best of each side, as timeit reports: the runs least slowed by the machine
        "ratio_of_minimums": min(networked) / min(plain),
        "pair_ratios": [round(r, 3) for r in pair_ratios],
        "pair_cores": [cores[repeat % len(cores)] for repeat in range(args.repeats)],
        "ratio": statistics.median(pair_ratios),  # median of the back-to-back pairs' ratios
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
