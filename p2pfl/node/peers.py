"""What a node knows of its neighbours' liveness, and when it may start training."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from p2pfl.node.arrivals import Arrivals
from p2pfl.settings import parse_start


@dataclass(frozen=True)
class StartCondition:
    """When a node starts its first round.

    ``all``: every neighbour has said hello; ``min:N``: at least N have; ``at:TIME``: at
    an ISO-8601 time (UTC if no zone given); ``none``: at once.
    """

    kind: str
    count: int = 0
    at: datetime | None = None

    @classmethod
    def parse(cls, spec: str) -> StartCondition:
        """Parse ``all``, ``none``, ``min:N`` or ``at:2026-12-01T10:00:00Z``."""
        kind, count, at = parse_start(spec)  # the grammar lives with the setting it checks
        return cls(kind, count=count, at=at)

    def holds(self, present: int, neighbours: int, now: datetime | None = None) -> bool:
        if self.kind == "all":
            return present >= neighbours
        if self.kind == "min":
            return present >= min(self.count, neighbours)
        if self.kind == "at":
            assert self.at is not None
            return (now or datetime.now(UTC)) >= self.at
        return True

    def __str__(self) -> str:
        if self.kind == "min":
            return f"min:{self.count}"
        if self.kind == "at":
            assert self.at is not None
            return f"at:{self.at.isoformat()}"
        return self.kind


class PeerTracker:
    """What a node knows of each neighbour: when and at which round it was last heard
    from (any valid message counts), and whether it is thought to be down.

    A neighbour that missed a round's deadline, or said goodbye, is *suspected*: rounds
    stop waiting for it until it is heard from again, so one dead neighbour costs one
    deadline, not one per round.
    """

    def __init__(self, peers: Iterable[str]) -> None:
        self.peers = tuple(sorted(peers))
        self._heard: dict[str, tuple[float, int]] = {}
        self._suspected: set[str] = set()
        self._finished: dict[str, int] = {}  # peer -> its last round: it completed the run
        self._changed = Arrivals()

    def set_peers(self, peers: Iterable[str]) -> None:
        self.peers = tuple(sorted(peers))
        self._changed.notify()

    def heard(self, peer: str, round: int) -> bool:
        """Record a valid message; returns True if the peer was suspected until now."""
        first = peer not in self._heard
        self._heard[peer] = (time.monotonic(), round)
        if first:
            self._changed.notify()
        if peer in self._suspected and peer not in self._finished:  # a finished peer never comes back
            self._suspected.discard(peer)
            return True
        return False

    def suspect(self, peer: str) -> bool:
        """Stop waiting for ``peer``; returns True if it was not suspected before."""
        if peer in self._suspected:
            return False
        self._suspected.add(peer)
        return True

    def is_suspected(self, peer: str) -> bool:
        return peer in self._suspected

    def finish(self, peer: str, last_round: int) -> bool:
        """``peer`` completed the run (said so in a goodbye or a greeting): never wait for
        it again. Returns True if this is news."""
        self._suspected.add(peer)
        if peer in self._finished:
            return False
        self._finished[peer] = last_round
        self._changed.notify()
        return True

    def finished(self) -> dict[str, int]:
        """Neighbours that said they completed the run, with their last round."""
        return {p: r for p, r in self._finished.items() if p in self.peers}

    def live(self) -> set[str]:
        """Neighbours heard from that have not said they completed the run."""
        return self.present() - self._finished.keys()

    def lead(self) -> int:
        """The highest round any neighbour was heard at (-1 if none)."""
        return max((self._heard[p][1] for p in self.peers if p in self._heard), default=-1)

    def ahead_of(self, round: int) -> list[str]:
        """Neighbours heard at a round later than ``round``."""
        return [p for p in self.peers if p in self._heard and self._heard[p][1] > round]

    def present(self) -> set[str]:
        """Neighbours heard from at least once."""
        return set(self._heard) & set(self.peers)

    def absent(self) -> list[str]:
        return [p for p in self.peers if p not in self._heard]

    def heard_since(self, peer: str, moment: float) -> bool:
        """Whether ``peer`` was heard from after ``moment`` (``time.monotonic()``)."""
        entry = self._heard.get(peer)
        return entry is not None and entry[0] > moment

    def last_round(self, peer: str) -> int | None:
        entry = self._heard.get(peer)
        return entry[1] if entry else None

    async def wait_for_news(self, timeout: float) -> None:
        """Return when a new neighbour is heard from, or after ``timeout`` seconds."""
        await self._changed.next(timeout)


@runtime_checkable
class ReportsFinished(Protocol):
    """A :class:`PeerPresence` that also knows who completed the run (MQTT discovery does)."""

    def has_finished(self, peer: str) -> bool:
        """True only when the peer is known to have done all its rounds and left."""
        ...


class PeerPresence(Protocol):
    """Live membership from outside the node (e.g. MQTT discovery with Last Will)."""

    def is_offline(self, peer: str) -> bool:
        """True only when the peer is known to be down (unknown peers are not offline)."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the event loop after any membership change."""
        ...
