"""``p2pfl simulate``: run N nodes on this machine over real ZeroMQ sockets."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from p2pfl.cli._flags import add_setting_flags
from p2pfl.config import config_from_mapping, load_toml, parse_overrides
from p2pfl.simulation.config import ExperimentConfig


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "simulate",
        help="simulate a topology of nodes on this machine",
        description="Run N nodes over real ZeroMQ sockets. Settings come from the defaults, "
        "then --config FILE (TOML), then flags, then key=value overrides.",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any config key")
    parser.add_argument("--config", help="TOML experiment file (keys as the flags, with _)")
    add_setting_flags(parser, ExperimentConfig)  # every key, help and default from p2pfl.settings
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(handler=run)


def resolve_config(args: argparse.Namespace) -> ExperimentConfig:
    config = load_toml(ExperimentConfig, args.config) if args.config else ExperimentConfig()
    keys = (f.name for f in dataclasses.fields(ExperimentConfig))
    flags = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
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
