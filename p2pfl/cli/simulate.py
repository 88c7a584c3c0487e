"""``p2pfl simulate``: run N nodes on this machine over real ZeroMQ sockets."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pfl.cli._flags import add_setting_flags
from p2pfl.config import config_from_mapping, load_toml, parse_overrides
from p2pfl.errors import ConfigError
from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.outputs import (
    AVERAGE_MODEL,
    METRICS_FILE,
    MODELS_DIR,
    SUMMARY_FILE,
    clear_run,
    previous_run,
)


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
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace the run already in --out DIR: its metrics, summary, models and plots are removed first",
    )
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
    out = Path(config.out) if config.out else None
    if out is not None and previous_run(out) and not args.overwrite:
        raise ConfigError(
            "out", f"{out} already holds a run ({', '.join(previous_run(out))}); pass --overwrite to "
            "replace it, or give another folder",
        )
    # imported only now: config errors and --print-config need no torch or zmq
    from p2pfl.simulation.recorder import make_out_dir
    from p2pfl.simulation.setup import Experiment, build_experiment
    from p2pfl.simulation.simulator import run_simulation

    runner = run_simulation
    build: Callable[[ExperimentConfig], Experiment] = build_experiment
    if config.cluster:  # the same result and outputs, the nodes sharded over Ray actors
        from p2pfl.simulation.cluster import driver_experiment, import_ray, run_cluster

        import_ray()  # a missing Ray is one line, before anything is built
        runner, build = run_cluster, driver_experiment

    bar: _progress_bar | None = None
    started = False  # for the line printed on Ctrl-C: whether the run began, and how far it got
    rounds_done = 0

    def closed(summary: Any) -> None:
        nonlocal rounds_done
        rounds_done = summary.round + 1
        if bar is not None:
            bar.update_round(summary)

    try:
        # build first, so a bad topology, dataset or --out fails before a progress bar is
        # drawn, and before --overwrite removes the previous run
        experiment = build(config)
        if out is not None:
            clear_run(out)  # its plots too: none of them may be left beside the new metrics
            make_out_dir(out)
        started = True
        bar = None if args.quiet else _progress_bar(config.rounds)
        try:
            result = runner(config, progress=closed, experiment=experiment)
        finally:
            if bar is not None:
                bar.close()
    except KeyboardInterrupt:
        print(f"p2pfl: {_what_was_kept(config, started, rounds_done)}", file=sys.stderr)
        return 130
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
    if out is not None:
        models = f" and {out / MODELS_DIR}/ (each node's model, {AVERAGE_MODEL}.pt)" if config.save_models else ""
        print(f"wrote {out / METRICS_FILE}, {out / SUMMARY_FILE}{models}")
    else:
        print(NOTHING_SAVED, file=sys.stderr)
    return 0


NOTHING_SAVED = "nothing saved: pass --out DIR to keep metrics, summary and models"


def _what_was_kept(config: ExperimentConfig, started: bool, rounds_done: int) -> str:
    """One line: how far an interrupted run got, what it left and where."""
    if not started:
        return "interrupted before the run started; nothing saved"
    if not config.out:
        return f"interrupted after {rounds_done} rounds; {NOTHING_SAVED}"
    out = Path(config.out)
    try:
        summary = json.loads((out / SUMMARY_FILE).read_text())
    except (OSError, ValueError):  # stopped before the nodes started: the run wrote no summary
        return f"interrupted before the first round; nothing saved but an empty {out / METRICS_FILE}"
    models = sorted((out / MODELS_DIR).glob("*.pt")) if config.save_models else []
    nodes = sum(path.stem != AVERAGE_MODEL for path in models)
    saved = f" and {nodes} node models with their average in {out / MODELS_DIR}/" if models else ""
    return (
        f"interrupted after {summary['rounds_completed']} of {summary['rounds']} rounds; kept "
        f"{out / METRICS_FILE}, {out / SUMMARY_FILE} (\"interrupted\": true){saved}"
    )


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
