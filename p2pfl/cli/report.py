"""``p2pfl report DIR``: PNG plots of a simulation's metrics.jsonl; ``p2pfl report DIR DIR
... --to OUT``: one figure comparing the runs (accuracy against rounds and bytes)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from p2pfl.errors import ConfigError
from p2pfl.report import write_report  # loads matplotlib only when it draws
from p2pfl.report_compare import COMPARE_FILE, write_comparison


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "report", help="plot a run's metrics (accuracy, consensus, bytes), or compare several runs"
    )
    parser.add_argument(
        "directory", nargs="+",
        help=f"a simulation's --out directory; several: one {COMPARE_FILE} comparing them (needs --to)",
    )
    parser.add_argument("--to", help="where to write the PNGs (default: the run directory)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    directories = [Path(d) for d in args.directory]
    if len(directories) > 1:
        if not args.to:
            raise ConfigError("to", f"comparing {len(directories)} runs: give --to FOLDER for {COMPARE_FILE}")
        print(write_comparison(directories, Path(args.to)))
        return 0
    written = write_report(directories[0], Path(args.to) if args.to else None)
    for path in written:
        print(path)
    return 0
