"""``p2pfl watch``: live membership table of a consortium, read from its MQTT broker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import tomllib
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from p2pfl.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from p2pfl.discovery import MemberStatus
    from p2pfl.discovery.broker import BrokerLogin

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
the node.toml beside it; so do the user name, password file and TLS files (discovery_username,
discovery_password_file, discovery_ca_file, ...) unless given as flags. With a consortium.toml
that lists signing keys (directly or beside a node.toml), only announcements signed by their
member are shown, and the header counts the refused ones; with a bare name, nothing is verified.
With --once, exit code 2 (and the consortium names the broker knows) when no node of the
consortium has announced itself."""

#: flag -> node.toml key: the broker login, from the flags or else from a node.toml.
LOGIN_FLAGS = {
    "username": "discovery_username", "password_file": "discovery_password_file",
    "ca_file": "discovery_ca_file", "cert_file": "discovery_cert_file", "key_file": "discovery_key_file",
}


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "watch", help="live table of a consortium's nodes (MQTT discovery)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--broker",
        help=f"mqtt://HOST:PORT or mqtts://HOST:PORT (TLS) (default: from the consortium file, else {DEFAULT_BROKER})",
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
    login = parser.add_argument_group("broker login (default: the node.toml's discovery_* keys, if one is given)")
    login.add_argument("--username", help="MQTT user name")
    login.add_argument("--password-file", metavar="FILE", help="file holding the MQTT password (mode 0600)")
    login.add_argument("--ca-file", metavar="PEM", help="CA certificate of the broker's, for mqtts://")
    login.add_argument("--cert-file", metavar="PEM", help="client certificate, for brokers that require one")
    login.add_argument("--key-file", metavar="PEM", help="the client certificate's private key")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.timeout > 0:
        raise ConfigError("--timeout", f"must be a positive number of seconds, got {args.timeout}")
    target = locate(args.consortium, args.broker)
    login = target.login({flag: getattr(args, flag) for flag in LOGIN_FLAGS})
    keys = target.signing_keys()
    if target.members is not None and keys is None:
        print(f"p2pfl watch: warning: {target.members} lists no signing keys (an older p2pfl wrote it): "
              "announcements are shown unverified", file=sys.stderr)
    seconds = args.timeout if args.timeout is not None or not args.once else ONCE_SECONDS
    return asyncio.run(_watch(target.broker, target.name, seconds, args.once, sys.stdout, sys.stderr,
                              login=login, signing_keys=keys))


@dataclass(frozen=True)
class WatchTarget:
    """What ``--consortium NAME|FILE`` and ``--broker`` resolve to.

    Attributes:
        name: the consortium's name.
        broker: the broker URL.
        members: the consortium.toml (with the members' signing keys), if one was found.
        node: a node.toml whose ``discovery_*`` keys give the login defaults, if one was found.
    """

    name: str
    broker: str
    members: Path | None = None
    node: Path | None = None

    def login(self, flags: dict[str, str | None]) -> BrokerLogin:
        """The broker login: each flag given, else the node.toml's key (relative to it)."""
        from p2pfl.discovery.broker import BrokerLogin

        node = _read_toml(self.node) if self.node is not None else {}
        folder = self.node.parent if self.node is not None else Path()
        values: dict[str, str] = {}
        for flag, key in LOGIN_FLAGS.items():
            value = flags.get(flag)
            if value is None and isinstance(node.get(key), str) and node[key]:
                value = node[key] if flag == "username" else str(folder / Path(node[key]).expanduser())
            values[flag] = value or ""
        if not values["username"] and values["password_file"] and isinstance(node.get("name"), str):
            values["username"] = node["name"]  # as the node itself does
        return BrokerLogin(**values)

    def signing_keys(self) -> dict[str, str] | None:
        """The members' signing keys, or None (no consortium.toml, or one that lists none)."""
        if self.members is None:
            return None
        from p2pfl.deploy.consortium_file import load_consortium

        return load_consortium(self.members).signing_keys() or None


def resolve_consortium(value: str, broker: str | None) -> tuple[str, str]:
    """The consortium's name and broker from ``--consortium NAME|FILE`` and ``--broker``."""
    target = locate(value, broker)
    return target.name, target.broker


def locate(value: str, broker: str | None) -> WatchTarget:
    """Resolve ``--consortium NAME|FILE`` and ``--broker``.

    A value ending in ``.toml`` or containing a ``/`` is a file: consortium.toml (or a
    description, with ``[training] discovery``) or a node.toml (``consortium = "..."``).

    Raises:
        ConfigError: the file is missing, unreadable or names no consortium.
    """
    path = Path(value)
    if path.suffix != ".toml" and "/" not in value and "\\" not in value:
        return WatchTarget(value, broker or DEFAULT_BROKER)
    document = _read_toml(path)
    found = _discovery(document)
    node: Path | None = None
    linked = document.get("consortium")
    if isinstance(linked, str) and "bind" in document:  # a node.toml: its consortium file is beside it
        node, path = path, path.parent / linked
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
    listed = document.get("members")
    # a consortium.toml lists keys; a description lists hosts and ports
    keyed = isinstance(listed, list) and any(isinstance(m, dict) and "public_key" in m for m in listed)
    members = path if keyed else None
    return WatchTarget(name, broker or found or DEFAULT_BROKER, members, node)


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
    broker: str, consortium: str, seconds: float | None, once: bool, out: TextIO, err: TextIO,
    *, login: BrokerLogin | None = None, signing_keys: dict[str, str] | None = None,
) -> int:
    from p2pfl.discovery import consortia_on, watch_consortium

    live = out.isatty() and not once
    changes = None if once or live else ChangeLog(out)
    latest: dict[str, MemberStatus] = {}
    hint: str | None = None
    loop = asyncio.get_running_loop()
    refused: Counter[str] | None = Counter() if signing_keys is not None else None
    header = _Header(broker, consortium, refused)
    watching = watch_consortium(broker, consortium, login=login, signing_keys=signing_keys, refused=refused)
    async with aclosing(watching) as snapshots:
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
                        hint = not_found(consortium, broker, await consortia_on(broker, login=login)) + "; still watching"
                        if changes is not None:
                            print(f"p2pfl watch: {hint}", file=err, flush=True)
                if changes is not None:
                    changes.update(latest)
                elif live:
                    _show(out, header, latest, live, hint)
    if once:
        if not latest:
            raise ConfigError("--consortium", not_found(consortium, broker, await consortia_on(broker, login=login)))
        _show(out, header, latest, live=False)
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


@dataclass(frozen=True)
class _Header:
    broker: str
    consortium: str
    refused: Counter[str] | None  # None: signatures are not checked

    def line(self, members: dict[str, MemberStatus]) -> str:
        online = sum(m.state == "online" for m in members.values())
        text = f"consortium {self.consortium} on {self.broker}: {online} online, {len(members)} known"
        if self.refused is not None:
            counts = ", ".join(f"{reason} {n}" for reason, n in sorted(self.refused.items()))
            text += f", signatures checked ({sum(self.refused.values())} refused{': ' + counts if counts else ''})"
        return f"{text} (at {time.strftime('%H:%M:%S')})"


def _show(
    out: TextIO, header: _Header, members: dict[str, MemberStatus], live: bool, hint: str | None = None,
) -> None:
    body = format_table(members) if members else hint or "no node has announced itself yet"
    text = f"{header.line(members)}\n{body}\n"
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
