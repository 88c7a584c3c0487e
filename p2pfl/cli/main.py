"""Entry point of the ``p2pfl`` command: parses, dispatches, maps errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from p2pfl.errors import (
    ConfigError,
    DataError,
    NodeError,
    P2PFLError,
    PeersGoneError,
    TopologyError,
    TransportError,
)

# Expected failures end with one line on stderr and a numbered exit code, not a traceback.
# The first match wins: a subclass comes before its base.
EXIT_CODES: dict[type[P2PFLError], int] = {
    ConfigError: 2,
    TopologyError: 3,
    DataError: 4,
    TransportError: 5,
    PeersGoneError: 7,
    NodeError: 6,
}


def build_parser() -> argparse.ArgumentParser:
    from p2pfl import __version__
    from p2pfl.cli import consortium, data, node, report, simulate, topology, watch

    parser = argparse.ArgumentParser(
        prog="p2pfl", description="Serverless federated learning over ZeroMQ."
    )
    parser.add_argument("--version", action="version", version=f"p2pfl {__version__}")
    parser.add_argument(
        "--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default) or ERROR"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (simulate, topology, data, report, node, watch, consortium):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except P2PFLError as exc:
        return _failed(exc)
    except BaseExceptionGroup as group:  # an asyncio TaskGroup wraps what its body raised
        expected = _only_error(group)
        if expected is None:
            raise
        return _failed(expected)
    except KeyboardInterrupt:
        print("p2pfl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (p2pfl ... | head): quiet, like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no 2nd error at exit
        return 141  # 128 + SIGPIPE


def _failed(exc: P2PFLError) -> int:
    print(f"p2pfl: error: {exc}", file=sys.stderr)
    for kind, code in EXIT_CODES.items():
        if isinstance(exc, kind):
            return code
    return 1


def _only_error(group: BaseExceptionGroup) -> P2PFLError | None:
    """The expected error a group holds, if it holds only that one."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    return inner if isinstance(inner, P2PFLError) else None


if __name__ == "__main__":
    sys.exit(main())
