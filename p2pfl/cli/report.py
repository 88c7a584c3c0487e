"""``p2pfl report DIR``: PNG plots of a simulation's metrics.jsonl."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from p2pfl.report import write_report  # loads matplotlib only when it draws


def register(commands: Any) -> None:
    parser = commands.add_parser("report", help="plot a run's metrics (accuracy, consensus, bytes)")
    parser.add_argument("directory", help="a simulation's --out directory")
    parser.add_argument("--to", help="where to write the PNGs (default: the run directory)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    written = write_report(Path(args.directory), Path(args.to) if args.to else None)
    for path in written:
        print(path)
    return 0
