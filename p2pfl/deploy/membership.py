"""Who a deployed node talks to: schedule, peer endpoints, public keys, and their reloads.

The membership comes from the public consortium file (which is also the allow-list)
or, without one, from node.toml's static ``peers`` / ``topology``. While the node runs,
:func:`watch_membership` reloads the allow-list on SIGHUP or when the file changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from p2pfl._files import modified_time
from p2pfl.deploy.config import OrgNodeConfig, resolve
from p2pfl.deploy.consortium_file import allow_list_loader, load_consortium
from p2pfl.errors import ConfigError
from p2pfl.security import AllowList
from p2pfl.topology import RoundPlan, StaticSchedule, build_topology
from p2pfl.topology.schedule import GossipSchedule

log = logging.getLogger(__name__)

__all__ = [
    "RELOAD_POLL_SECONDS", "Membership", "NeighbourListSchedule", "load_membership",
    "watch_membership",
]

#: How often the consortium file's modification time is checked for an allow-list reload.
RELOAD_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Membership:
    """Who this node talks to: schedule, peer endpoints, public keys (if any)."""

    schedule: GossipSchedule
    endpoints: Mapping[str, str]
    keys_loader: Callable[[], dict[str, str]] | None  # name -> public key, re-read on reload
    watch_file: Path | None  # the file whose change triggers a reload
    consortium_name: str
    own_endpoint: str | None = None  # where the others reach this node (None: only its bind is known)


def load_membership(config: OrgNodeConfig, base: Path) -> Membership:
    """Schedule and peers from the consortium file, or from static ``peers``/``topology``."""
    if config.consortium:
        path = resolve(base, config.consortium)
        consortium = load_consortium(path)
        topology_path = resolve(path.parent, consortium.topology)
        topology = build_topology(str(topology_path), seed=consortium.seed, mixing=consortium.mixing)
        if config.name not in topology.names:
            raise ConfigError("name", f"{config.name!r} is not a member of {path}: members are {topology.names}")
        endpoints = {m.name: m.endpoint for m in consortium.members if m.name != config.name}
        # Kept apart from the peers' endpoints: it is what discovery announces, not a peer to dial.
        own = next((m.endpoint for m in consortium.members if m.name == config.name), None)
        return Membership(
            StaticSchedule(topology), endpoints, allow_list_loader(path), path, consortium.name, own_endpoint=own
        )
    if config.topology:
        # a file is relative to node.toml, like every path there; otherwise a generator spec
        as_file = resolve(base, config.topology)
        spec = str(as_file) if as_file.is_file() else config.topology
        topology = build_topology(spec, seed=config.seed, mixing=config.mixing)
        if config.name not in topology.names:
            raise ConfigError("topology", f"{config.name!r} is not a node of {config.topology}")
        schedule: GossipSchedule = StaticSchedule(topology)
    else:
        schedule = NeighbourListSchedule(config.name, tuple(config.peers))
    missing = [p for p in schedule.peers(config.name) if p not in config.peers]
    if missing:
        raise ConfigError("peers", f"no endpoint for neighbour(s) {missing}: add name = \"tcp://host:port\"")
    return Membership(schedule, dict(config.peers), None, None, "static")


class NeighbourListSchedule:
    """A node that only knows its own neighbour list: uniform weights 1/(degree + 1).

    Exactly Metropolis–Hastings when every node has the same degree; for other graphs
    give the whole topology (a consortium file or ``topology``) so weights stay doubly
    stochastic.
    """

    def __init__(self, name: str, peers: tuple[str, ...]) -> None:
        self._name = name
        self._peers = tuple(sorted(peers))
        share = 1.0 / (len(self._peers) + 1)
        self._plan = RoundPlan(send_to=self._peers, weights={n: share for n in (name, *self._peers)}, node=name)

    def plan(self, node: str, round: int) -> RoundPlan:
        return self._plan

    def peers(self, node: str) -> tuple[str, ...]:
        return self._peers


async def watch_membership(
    allowlist: AllowList, watch_file: Path | None, on_change: Callable[[set[str]], None]
) -> None:
    """Reload the allow-list (and the membership) on SIGHUP or when the file changes."""
    loop = asyncio.get_running_loop()
    hangup = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on the main thread / Windows
        loop.add_signal_handler(signal.SIGHUP, hangup.set)
    last = modified_time(watch_file)
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RELOAD_POLL_SECONDS):
                    await hangup.wait()
            if hangup.is_set() or modified_time(watch_file) != last:
                hangup.clear()
                last = modified_time(watch_file)
                added, removed = allowlist.reload()  # logs what changed; keeps the old list on errors
                if added or removed:
                    on_change(added | removed)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGHUP)

