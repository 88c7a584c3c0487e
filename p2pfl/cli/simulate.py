"""``p2pfl simulate``: run N nodes on this machine over real ZeroMQ sockets."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from p2pfl.config import config_from_mapping, load_toml, parse_overrides
from p2pfl.simulation.config import TRANSPORTS, ExperimentConfig

# flag -> (type, help); each flag is the ExperimentConfig field of the same name
_FLAGS: dict[str, tuple[type, str]] = {
    "nodes": (int, "number of nodes (default 16, or the topology file's count)"),
    "topology": (str, "ring, line, star, complete, torus[:RxC], grid[:RxC], hypercube, "
                 "random-regular[:D], erdos-renyi[:P], small-world[:K,P], exponential, or a file"),
    "mixing": (str, "metropolis (default), max-degree, or file (edge weights)"),
    "fanout": (int, "time-varying gossip: each round send to this many random peers"),
    "dataset": (str, "digits, breast_cancer, csv:PATH or npz:PATH"),
    "partition": (str, "iid, dirichlet:ALPHA, shards:K or quantity:ALPHA"),
    "model": (str, "mlp, cnn, logreg or module:function(input_shape, num_classes)"),
    "rounds": (int, "communication rounds"),
    "local_epochs": (int, "local epochs per round"),
    "local_steps": (int, "exact local steps per round (overrides --local-epochs)"),
    "lr": (float, "SGD learning rate"),
    "momentum": (float, "SGD momentum"),
    "weight_decay": (float, "SGD weight decay"),
    "batch_size": (int, "local batch size"),
    "seed": (int, "seed: fixes the whole run"),
    "transport": (str, f"one of {', '.join(TRANSPORTS)}"),
    "round_timeout": (float, "seconds a node waits for its neighbours each round"),
    "mode": (str, "sync (rounds with a barrier, default) or async (no barrier: merge what "
             "arrived, weighted by staleness)"),
    "staleness": (float, "async: a model s clock ticks older than the grace counts "
                  "(1+s)^-STALENESS of its mixing weight (0.5; 0 = no discount)"),
    "staleness_grace": (int, "async: clock ticks of lag that are not discounted (5)"),
    "slow_nodes": (int, "number of slow nodes (chosen with the seed)"),
    "slowdown": (float, "how many times slower the slow nodes' steps are"),
    "step_seconds": (float, "emulated step time of a normal node, so nodes behave as if on their "
                     "own hardware (0 = as fast as this machine runs them)"),
    "test_fraction": (float, "held-out share of the dataset"),
    "device": (str, "torch device: cpu, cuda, ..."),
    "aggregator": (str, "mean (default), median, trimmed-mean:B, krum:F, multi-krum:F,M, "
                   "clipped-gossip[:TAU]"),
    "attack": (str, "what --attackers nodes do: sign-flip, scale[:K], noise[:SIGMA], nan, inf, "
               "stale, label-flip"),
    "attackers": (int, "number of attacking nodes (chosen with the seed)"),
    "dp": (str, "differential privacy: sample (DP-SGD via Opacus) or update (noised round update)"),
    "target_epsilon": (float, "with --dp: choose the noise so epsilon after all rounds is <= this"),
    "noise": (float, "with --dp: noise multiplier (noise std / clip) instead of --target-epsilon"),
    "clip": (float, "with --dp: L2 clip of per-sample gradients (sample) or round updates (update)"),
    "delta": (float, "with --dp: delta of the reported (epsilon, delta), default 1e-5"),
    "out": (str, "output directory for metrics.jsonl and summary.json"),
}

# on/off flags; each is a bool field of ExperimentConfig
_SWITCHES: dict[str, str] = {
    "secure_aggregation": "secure aggregation: each node learns only the weighted sum of its "
    "neighbours' models (pairwise masks; needs >= 3 neighbours per node, aggregator mean)",
}

# flags that may be given several times; each is a tuple field of ExperimentConfig
_REPEATABLE: dict[str, str] = {
    "fail": "crash a node after a round: node=NAME,round=R (repeatable)",
    "recover": "restart a crashed node once the others finished a round: node=NAME,round=R (repeatable)",
    "join": "start a node late, afresh, once the others finished a round: node=NAME,round=R (repeatable)",
}


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "simulate",
        help="simulate a topology of nodes on this machine",
        description="Run N nodes over real ZeroMQ sockets. Settings come from the defaults, "
        "then --config FILE (TOML), then flags, then key=value overrides.",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any config key")
    parser.add_argument("--config", help="TOML experiment file (keys as the flags, with _)")
    for name, text in _REPEATABLE.items():
        parser.add_argument("--" + name, dest=name, action="append", default=None, help=text)
    for name, (kind, text) in _FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=text)
    for name, text in _SWITCHES.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true", default=None, help=text)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(handler=run)


def resolve_config(args: argparse.Namespace) -> ExperimentConfig:
    config = load_toml(ExperimentConfig, args.config) if args.config else ExperimentConfig()
    flags = {
        name: getattr(args, name) for name in (*_FLAGS, *_REPEATABLE, *_SWITCHES) if getattr(args, name) is not None
    }
    config = config_from_mapping(ExperimentConfig, flags, base=config)
    return config_from_mapping(ExperimentConfig, parse_overrides(args.overrides), base=config)


def run(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    if args.print_config:
        print(json.dumps(dataclasses.asdict(config), indent=2))
        return 0
    # imported only now: config errors and --print-config need no torch or zmq
    from p2pfl.simulation.recorder import make_out_dir
    from p2pfl.simulation.setup import build_experiment
    from p2pfl.simulation.simulator import run_simulation

    # build first, so a bad topology, dataset or --out fails before a progress bar is drawn
    experiment = build_experiment(config)
    if config.out:
        make_out_dir(Path(config.out))
    bar = None if args.quiet else _progress_bar(config.rounds)
    try:
        result = run_simulation(config, progress=bar.update_round if bar else None, experiment=experiment)
    finally:
        if bar is not None:
            bar.close()
    summary = result.summary
    failed = f" ({len(summary['failed_nodes'])} failed)" if summary["failed_nodes"] else ""
    print(
        f"{summary['nodes']} nodes{failed}, {summary['rounds_completed']} rounds in "
        f"{summary['wall_seconds']:.1f}s: accuracy mean {summary['mean_accuracy']:.4f} "
        f"min {summary['min_accuracy']:.4f} max {summary['max_accuracy']:.4f}, "
        f"consensus distance {summary['consensus_distance']:.3g}"
    )
    if summary["messages_rejected"]:
        print(f"rejected messages: {summary['messages_rejected']}", file=sys.stderr)
    if config.out:
        print(f"wrote {config.out}/metrics.jsonl and {config.out}/summary.json")
    return 0


class _progress_bar:
    """tqdm bar over rounds showing accuracy and consensus distance."""

    def __init__(self, rounds: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=rounds, unit="round", dynamic_ncols=True, file=sys.stderr)

    def update_round(self, summary: Any) -> None:
        self._bar.set_postfix(
            acc=f"{summary.mean_accuracy:.3f}", min=f"{summary.min_accuracy:.3f}",
            consensus=f"{summary.consensus_distance:.2e}", refresh=False,
        )
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
