"""Entry point of the ``p2pfl`` command: parses, dispatches, maps errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from p2pfl import __version__
from p2pfl.cli import consortium, data, node, report, simulate, topology, watch
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


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2pfl", description="Serverless federated learning over ZeroMQ."
    )
    _add_global_options(parser, default="WARNING")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (simulate, topology, data, report, node, watch, consortium):
        module.register(commands)
    for command in _subcommands(parser):  # `p2pfl simulate --log-level INFO` works too
        _add_global_options(command, default=argparse.SUPPRESS)  # absent: the top level's value stays
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, default: str) -> None:
    parser.add_argument("--version", action="version", version=f"p2pfl {__version__}")
    parser.add_argument(
        "--log-level", default=default, type=str.upper, choices=LOG_LEVELS, metavar="LEVEL",
        help="DEBUG, INFO, WARNING (default) or ERROR",
    )


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command and action parser under ``parser`` (``simulate``, ``topology show``, ...)."""
    found = []
    for action in parser._actions:  # argparse keeps its sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            for command in dict.fromkeys(action.choices.values()):  # aliases map to one parser
                found += [command, *_subcommands(command)]
    return found


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost parser that ``args`` went through (``p2pfl topology show``'s for it)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return _chosen(action.choices[getattr(args, action.dest)], args)
    return parser


def _unrecognized(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """argparse's complaint about ``extras``, with the closest option for a misspelt one."""
    options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    flags = [extra.partition("=")[0] for extra in extras if extra.startswith("-")]
    hints = [(flag, close) for flag in flags if (close := _closest(flag, options))]
    text = f"unrecognized arguments: {' '.join(extras)}"
    if len(flags) == 1 and hints:
        return f"{text} (did you mean {hints[0][1]}?)"
    return text + (f" ({'; '.join(f'{flag}: did you mean {close}?' for flag, close in hints)})" if hints else "")


def _closest(word: str, options: Sequence[str]) -> str | None:
    """The option fewest typing slips away from ``word`` (a swapped pair counts as one
    slip, so ``--nodse`` is ``--nodes``, not ``--noise``), if it is close at all."""
    scored = [(_slips(word, option), option) for option in options]
    best = min(scored, default=None)
    return best[1] if best is not None and best[0] <= max(1, (len(word) - 2) // 3) else None


def _slips(a: str, b: str) -> int:
    """Edits (insert, delete, replace, swap two neighbours) that turn ``a`` into ``b``."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        chosen = _chosen(parser, args)
        chosen.error(_unrecognized(chosen, extras))
    logging.basicConfig(
        level=getattr(logging, args.log_level),
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
