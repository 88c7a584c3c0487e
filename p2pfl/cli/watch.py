"""``p2pfl watch``: live membership table of a consortium, read from its MQTT broker."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from contextlib import aclosing
from typing import Any, TextIO

from p2pfl.discovery import MemberStatus, watch_consortium  # aiomqtt loads only once it connects
from p2pfl.errors import ConfigError

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
ONCE_SECONDS = 2.0
COLUMNS = ("NAME", "STATE", "ROUND", "ACCURACY", "ENDPOINT", "FINGERPRINT", "UPDATED")
FINGERPRINT_WIDTH = 16
# Cursor home + clear to end of screen: redraws in place without scrolling the terminal.
REDRAW = "\x1b[H\x1b[J"


def register(commands: Any) -> None:
    parser = commands.add_parser("watch", help="live table of a consortium's nodes (MQTT discovery)")
    parser.add_argument("--broker", default=DEFAULT_BROKER, help=f"mqtt://HOST:PORT (default {DEFAULT_BROKER})")
    parser.add_argument("--consortium", required=True, help="consortium name")
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
    seconds = args.timeout if args.timeout is not None or not args.once else ONCE_SECONDS
    return asyncio.run(_watch(args.broker, args.consortium, seconds, args.once, sys.stdout))


async def _watch(broker: str, consortium: str, seconds: float | None, once: bool, out: TextIO) -> int:
    live = out.isatty() and not once
    latest: dict[str, MemberStatus] = {}
    loop = asyncio.get_running_loop()
    async with aclosing(watch_consortium(broker, consortium)) as snapshots:
        try:
            # The clock starts once subscribed (first snapshot), so a slow connection does not
            # eat the collection time; retained announcements arrive right after that.
            async with asyncio.timeout(None) as deadline:
                async for latest in snapshots:
                    if seconds is not None and deadline.when() is None:
                        deadline.reschedule(loop.time() + seconds)
                    if not once:
                        _show(out, broker, consortium, latest, live)
        except TimeoutError:
            pass
    if once:
        _show(out, broker, consortium, latest, live=False)
    return 0


def _show(out: TextIO, broker: str, consortium: str, members: dict[str, MemberStatus], live: bool) -> None:
    online = sum(m.state == "online" for m in members.values())
    header = (
        f"consortium {consortium} on {broker}: {online} online, {len(members)} known"
        f" (at {time.strftime('%H:%M:%S')})"
    )
    body = format_table(members) if members else "no node has announced itself yet"
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
