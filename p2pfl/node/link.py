"""A node's side of its exchanges: sending to neighbours, and waiting for them in a round.

:class:`NodeLink` is the :class:`~p2pfl.node.exchange.Link` a node hands its exchange:
it knows the neighbours' addresses and which of them are thought down (a missed
deadline, a goodbye, a broker's offline report), so a round does not wait for them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

from p2pfl import wire
from p2pfl.errors import TransportError
from p2pfl.node.exchange import Frames
from p2pfl.node.inbox import RoundInbox
from p2pfl.node.peers import PeerPresence, PeerTracker
from p2pfl.node.records import NodeStats
from p2pfl.topology.schedule import GossipSchedule, RoundPlan
from p2pfl.transport import ZmqTransport
from p2pfl.wire import Kind, Message

log = logging.getLogger(__name__)


class NodeLink:
    """Sends for a node and collects its rounds; implements :class:`~p2pfl.node.exchange.Link`.

    Args:
        name: the node's name.
        round_timeout: seconds a round waits for its neighbours' models.
        schedule: the node's current schedule (replaced when membership changes).
        transport: the node's sockets.
        inbox: the round inbox accepted models go to.
        peers: what the node knows of its neighbours' liveness.
        stats: the node's counters (bytes sent, sends dropped).
        presence: optional live membership; a neighbour it reports offline is not waited for.
    """

    def __init__(
        self,
        name: str,
        round_timeout: float,
        schedule: GossipSchedule,
        transport: ZmqTransport,
        inbox: RoundInbox,
        peers: PeerTracker,
        stats: NodeStats,
        presence: PeerPresence | None = None,
    ) -> None:
        self.name = name
        self.round_timeout = round_timeout
        self.schedule = schedule
        self.transport = transport
        self.inbox = inbox
        self.peers = peers
        self.stats = stats
        self.presence = presence
        self.addresses: dict[str, str] = {}
        #: this node's last round once it completed the run: its goodbye and its answers
        #: to greetings then say so, and a neighbour restarting late learns it is over
        self.finished: int | None = None
        self._said_bye = False
        self._blocked: set[str] = set()  # peers whose queue was full at the last send
        self._replied: dict[tuple[str, str], float] = {}  # (peer, kind) -> when we last answered
        self._reported_offline: dict[str, float] = {}  # when presence first said so
        self._presence_since = 0.0  # when this node subscribed to presence

    def plan(self, node: str, round_: int) -> RoundPlan:
        return self.schedule.plan(node, round_)

    def send(self, peers: Sequence[str], frames: Frames, *, control: bool = False) -> int:
        """Queue ``frames`` for each peer; returns the bytes actually queued.

        ``control`` messages (greetings, goodbyes, catch-up) are counted apart from the
        rounds' model traffic, and a full queue drops them without a warning.
        """
        size = sum(len(f) for f in frames)
        sent = 0
        for peer in peers:
            endpoint = self.addresses.get(peer)
            if endpoint is None:
                log.error("node %s: no address for peer %s; not sending to it", self.name, peer)
                continue
            try:
                self.transport.connect(peer, endpoint)
            except TransportError as exc:  # e.g. a peer revoked from the allow-list
                log.error("node %s: cannot link to %s: %s; not sending to it", self.name, peer, exc)
                continue
            if self.transport.send(peer, frames):
                sent += size
                if peer in self._blocked:
                    self._blocked.discard(peer)
                    log.info("node %s: %s takes messages again", self.name, peer)
            else:
                self.stats.sends_dropped += 1
                # once per outage, not every round: a dead neighbour must not flood the log
                if not control and peer not in self._blocked:
                    self._blocked.add(peer)
                    log.warning("node %s: queue to %s is full (down or far behind); dropping "
                                "messages to it until it takes them again", self.name, peer)
        if control:
            self.stats.control_bytes_sent += sent
        else:
            self.stats.bytes_sent += sent
        return sent

    def greet(self, peers: Sequence[str], *, reply: bool) -> None:
        """Say hello ("I am up, at this round"); ``reply`` marks an answer to a greeting."""
        meta: dict[str, bool] = {"reply": reply}
        if self.finished is not None:
            meta["finished"] = True
        self.send(tuple(peers), self._control(Kind.HELLO, meta), control=True)

    def say_bye(self) -> None:
        """Tell every neighbour not to wait for this node (once); ``finished`` if it completed the run."""
        if self._said_bye:
            return
        self._said_bye = True
        meta = {"finished": True} if self.finished is not None else {}
        self.send(tuple(self.addresses), self._control(Kind.BYE, meta), control=True)

    def _control(self, kind: Kind, meta: dict[str, bool]) -> Frames:
        # a finished node names its last round; otherwise the round it is in
        round_ = self.finished if self.finished is not None else self.inbox.current_round
        return wire.encode(kind=kind, sender=self.name, round=round_, samples=0, tensors={}, meta=meta)

    def may_answer(self, peer: str, kind: str, *, interval: float = 0.5) -> bool:
        """At most one answer of a kind per peer and ``interval`` seconds (two a second by
        default): requests cannot make us flood."""
        now = time.monotonic()
        if now - self._replied.get((peer, kind), -math.inf) <= interval:
            return False
        self._replied[(peer, kind)] = now
        return True

    async def collect(
        self, round_: int, plan: RoundPlan, going_on: str
    ) -> tuple[dict[str, Message], tuple[str, ...]]:
        """Wait for the round's models; a neighbour that misses the deadline is suspected.

        A neighbour already heard at a later round is not waited for either: its model of
        this round went out before (lost, or sent before we were its neighbour) and will
        not come now.
        """

        def moved_past(peer: str) -> bool:
            last = self.peers.last_round(peer)
            return last is not None and last > round_

        received = await self.inbox.collect(
            round_, plan.expect_from, self.round_timeout,
            skip=lambda peer: self._not_worth_waiting_for(peer) or moved_past(peer),
        )
        missing = tuple(p for p in plan.expect_from if p not in received)
        for peer in missing:
            if moved_past(peer):
                log.info("node %s round %d: %s is already past this round; %s without it",
                         self.name, round_, peer, going_on)
            elif self.peers.suspect(peer):
                log.warning(
                    "node %s round %d: no model from %s; %s without it and not waiting for it "
                    "again until it is heard from", self.name, round_, peer, going_on,
                )
        return received, missing

    def watch_presence(self) -> None:
        """Follow the presence reports from now on (the node is starting)."""
        if self.presence is not None:
            self._presence_since = time.monotonic()
            self.presence.subscribe(self._on_presence_change)

    def _not_worth_waiting_for(self, peer: str) -> bool:
        """A peer thought down (missed a deadline, left, reported offline) or revoked."""
        if peer not in self.peers.peers or self.peers.is_suspected(peer):
            return True
        if self.presence is None or not self.presence.is_offline(peer):
            return False
        # Direct traffic newer than the broker's word wins: a broker that goes down
        # publishes every member's Last Will, and then cannot say they are back. (What
        # the broker held before we subscribed counts as said when we subscribed.)
        reported = self._reported_offline.get(peer, self._presence_since)
        return not self.peers.heard_since(peer, reported)

    def _on_presence_change(self) -> None:
        if self.presence is None:  # subscribed only when there is one
            return
        for peer in self.peers.peers:
            if self.presence.is_offline(peer):
                self._reported_offline.setdefault(peer, time.monotonic())
            else:
                self._reported_offline.pop(peer, None)
        self.inbox.poke()  # a round under way reconsiders whom it waits for
