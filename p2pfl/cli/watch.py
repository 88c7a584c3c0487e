"""``p2pfl watch``: live membership table of a consortium, read from its MQTT broker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import tomllib
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from p2pfl.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from p2pfl.discovery import MemberStatus

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
ONCE_SECONDS = 2.0
COLUMNS = ("NAME", "STATE", "ROUND", "ACCURACY", "ENDPOINT", "FINGERPRINT", "UPDATED")
FINGERPRINT_WIDTH = 16
# Cursor home + clear to end of screen: redraws in place without scrolling the terminal.
REDRAW = "\x1b[H\x1b[J"

DESCRIPTION = """\
Show the nodes of a consortium as its MQTT broker reports them: a table redrawn in place on a
terminal; one line per change (time, name, state, round, accuracy) when the output is a file or
a pipe; one table with --once.

States:
  online    connected and training (or waiting to start)
  finished  did all its rounds and left; ROUND is its last round
  stopped   was stopped mid-run (SIGINT/SIGTERM) and left; start it again to resume
  offline   vanished without saying goodbye (killed, crashed, network lost: its MQTT Last
            Will) or failed with an error
  left      left without saying why (a node of an older p2pfl version)

--consortium takes the consortium's name or a file (a value ending in .toml or containing a
'/'): its consortium.toml, a member's node.toml, or the description given to `p2pfl consortium
init`. Unless --broker is given, the broker then comes from the file's discovery key, else from
the node.toml beside it. With --once, exit code 2 (and the consortium names the broker knows)
when no node of the consortium has announced itself."""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "watch", help="live table of a consortium's nodes (MQTT discovery)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--broker", help=f"mqtt://HOST:PORT (default: from the consortium file, else {DEFAULT_BROKER})"
    )
    parser.add_argument(
        "--consortium", required=True, metavar="NAME|FILE", help="the consortium's name or its consortium.toml"
    )
    parser.add_argument(
        "--once", action="store_true", help="collect for --timeout seconds, print one table, exit"
    )
    parser.add_argument(
        "--timeout", type=float,
        help=f"seconds to collect with --once (default {ONCE_SECONDS:g}); otherwise stop watching after this long",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.timeout > 0:
        raise ConfigError("--timeout", f"must be a positive number of seconds, got {args.timeout}")
    consortium, broker = resolve_consortium(args.consortium, args.broker)
    seconds = args.timeout if args.timeout is not None or not args.once else ONCE_SECONDS
    return asyncio.run(_watch(broker, consortium, seconds, args.once, sys.stdout, sys.stderr))


def resolve_consortium(value: str, broker: str | None) -> tuple[str, str]:
    """The consortium's name and broker from ``--consortium NAME|FILE`` and ``--broker``.

    A value ending in ``.toml`` or containing a ``/`` is a file: consortium.toml (or a
    description, with ``[training] discovery``) or a node.toml (``consortium = "..."``).

    Raises:
        ConfigError: the file is missing, unreadable or names no consortium.
    """
    path = Path(value)
    if path.suffix != ".toml" and "/" not in value and "\\" not in value:
        return value, broker or DEFAULT_BROKER
    document = _read_toml(path)
    found = _discovery(document)
    linked = document.get("consortium")
    if isinstance(linked, str) and "bind" in document:  # a node.toml: its consortium file is beside it
        path = path.parent / linked
        document = _read_toml(path)
        found = found or _discovery(document)
    name = document.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(
            "--consortium", f"{path} names no consortium (no 'name' key): give its consortium.toml or its name"
        )
    if found is None:
        beside = path.parent / "node.toml"
        found = _discovery(_read_toml(beside)) if beside.is_file() else None
    return name, broker or found or DEFAULT_BROKER


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            "--consortium", f"file {path} does not exist (a value ending in .toml or with a '/' is a file)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("--consortium", f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--consortium", f"{path} is not valid TOML: {exc}") from None


def _discovery(document: dict[str, Any]) -> str | None:
    """The broker URL in a consortium, description or node file, if it names one."""
    training = document.get("training")
    for value in (document.get("discovery"), training.get("discovery") if isinstance(training, dict) else None):
        if isinstance(value, str) and value:
            return value
    return None


def not_found(consortium: str, broker: str, known: list[str]) -> str:
    """What to say when no node of ``consortium`` has announced itself."""
    names = f"the names known on this broker: {', '.join(known)}" if known else "no consortium is known on this broker"
    return f"no node of consortium {consortium!r} has announced itself on {broker}; check the name ({names})"


async def _watch(
    broker: str, consortium: str, seconds: float | None, once: bool, out: TextIO, err: TextIO
) -> int:
    from p2pfl.discovery import consortia_on, watch_consortium

    live = out.isatty() and not once
    changes = None if once or live else ChangeLog(out)
    latest: dict[str, MemberStatus] = {}
    hint: str | None = None
    loop = asyncio.get_running_loop()
    async with aclosing(watch_consortium(broker, consortium)) as snapshots:
        # The clock starts once subscribed (first snapshot), so a slow connection does not
        # eat the collection time; retained announcements arrive right after that.
        latest = await anext(snapshots)
        start = loop.time()
        end = None if seconds is None else start + seconds
        hint_at = None if once else start + ONCE_SECONDS  # when to say that nobody is there
        async with aclosing(_until(snapshots, latest, end, hint_at)) as updates:
            async for latest in updates:
                if hint_at is not None and loop.time() >= hint_at:
                    hint_at = None
                    if not latest:
                        hint = not_found(consortium, broker, await consortia_on(broker)) + "; still watching"
                        if changes is not None:
                            print(f"p2pfl watch: {hint}", file=err, flush=True)
                if changes is not None:
                    changes.update(latest)
                elif live:
                    _show(out, broker, consortium, latest, live, hint)
    if once:
        if not latest:
            raise ConfigError("--consortium", not_found(consortium, broker, await consortia_on(broker)))
        _show(out, broker, consortium, latest, live=False)
    return 0


async def _until(
    snapshots: AsyncGenerator[dict[str, MemberStatus], None], first: dict[str, MemberStatus],
    end: float | None, wake: float | None,
) -> AsyncGenerator[dict[str, MemberStatus], None]:
    """``first``, then each new snapshot until ``end``; also the latest again at ``wake``.

    The pending read is a task of its own: a timeout must not cancel it inside the
    snapshot generator, which would end the generator.
    """
    loop = asyncio.get_running_loop()
    latest = first
    yield latest
    pull = asyncio.ensure_future(anext(snapshots))
    try:
        while True:
            due = min((t for t in (end, wake) if t is not None), default=None)
            done, _ = await asyncio.wait({pull}, timeout=None if due is None else max(0.0, due - loop.time()))
            if pull in done:
                try:
                    latest = pull.result()
                except StopAsyncIteration:  # the connection ended
                    return
                pull = asyncio.ensure_future(anext(snapshots))
                yield latest
            elif wake is not None and loop.time() >= wake:
                wake = None
                yield latest
            if end is not None and loop.time() >= end:
                return
    finally:
        pull.cancel()
        with contextlib.suppress(BaseException):  # the generator's own end (or error) as it stops
            await pull


class ChangeLog:
    """Writes one line per member whose state, round or accuracy changed (for a log or a pipe)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._shown: dict[str, tuple[str, int | None, float | None]] = {}

    def update(self, members: dict[str, MemberStatus]) -> None:
        lines = []
        for name in sorted(members):
            member = members[name]
            key = (member.state, member.round, member.accuracy)
            if self._shown.get(name) != key:
                self._shown[name] = key
                lines.append(change_line(member))
        for name in sorted(set(self._shown) - set(members)):  # its messages were cleared off the broker
            del self._shown[name]
            lines.append(f"{time.strftime('%H:%M:%S')} {name} removed")
        if lines:
            self._out.write("".join(line + "\n" for line in lines))
            self._out.flush()


def change_line(member: MemberStatus) -> str:
    """``12:00:03 charite online round 5 accuracy 0.9100`` (round and accuracy when known)."""
    parts = [time.strftime("%H:%M:%S", time.localtime(member.updated)), member.name, member.state]
    if member.round is not None:
        parts += ["round", str(member.round)]
    if member.accuracy is not None:
        parts += ["accuracy", f"{member.accuracy:.4f}"]
    return " ".join(parts)


def _show(
    out: TextIO, broker: str, consortium: str, members: dict[str, MemberStatus], live: bool,
    hint: str | None = None,
) -> None:
    online = sum(m.state == "online" for m in members.values())
    header = (
        f"consortium {consortium} on {broker}: {online} online, {len(members)} known"
        f" (at {time.strftime('%H:%M:%S')})"
    )
    body = format_table(members) if members else hint or "no node has announced itself yet"
    text = f"{header}\n{body}\n"
    out.write(REDRAW + text if live else text + "\n")
    out.flush()


def format_table(members: dict[str, MemberStatus]) -> str:
    """Render members as an aligned text table, one row per node, sorted by name."""
    rows = [COLUMNS] + [_row(members[name]) for name in sorted(members)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _row(member: MemberStatus) -> tuple[str, ...]:
    fingerprint = member.fingerprint or "-"
    if len(fingerprint) > FINGERPRINT_WIDTH:
        fingerprint = fingerprint[: FINGERPRINT_WIDTH - 3] + "..."
    return (
        member.name,
        member.state,
        "-" if member.round is None else str(member.round),
        "-" if member.accuracy is None else f"{member.accuracy:.4f}",
        member.endpoint or "-",
        fingerprint,
        time.strftime("%H:%M:%S", time.localtime(member.updated)),
    )
