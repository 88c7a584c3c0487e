"""Catching up: a node that fell behind takes a fresh model from its neighbours.

After a restart (or a partition) a node may be several rounds behind its neighbours,
who stopped waiting for it. Training on from its old model would drag them back, so it
asks the neighbours that are ahead for their latest averaged weights ("sync-request"),
averages the replies ("sync") uniformly, and joins them at their round. A replier
whose model of that round already went out resends it right after its reply; it is
kept here, since the node's inbox still refuses rounds that far ahead.

A model in the clear is what secure aggregation hides, so under it nothing is sent:
sync requests are refused (and counted), and a node behind rejoins at the round after
its neighbours' with its own weights. Without it, a sync reply goes only to a neighbour
really behind (at least :data:`BEHIND` rounds), at most once per neighbour and round
deadline, and is counted (``NodeStats.sync_replies_sent``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable

import numpy as np

from p2pfl import wire
from p2pfl.errors import WireError
from p2pfl.learning.learner import Weights
from p2pfl.node.arrivals import Arrivals
from p2pfl.node.exchange import Frames
from p2pfl.node.link import NodeLink
from p2pfl.wire import Kind, Message

log = logging.getLogger(__name__)

#: A requester this many rounds behind (or more) is answered: catching up starts there.
BEHIND = 2


class CatchUp:
    """A node's catching up: asking when behind, and answering neighbours that are.

    Args:
        link: the node's sending, neighbours and inbox.
        rounds: the node's number of rounds (a round joined is never past the last).
        sent: this node's model message of a round, if it can be resent as it is.
        share_models: False under secure aggregation: no model ever leaves in the clear,
            so requests are refused and a node behind rejoins with its own weights.
    """

    def __init__(
        self, link: NodeLink, rounds: int, sent: Callable[[int], Frames | None], *, share_models: bool = True
    ) -> None:
        self._link = link
        self._rounds = rounds
        self._sent = sent
        self._share_models = share_models
        #: (round it starts, the node's averaged weights): what a "sync" answer carries
        self.latest: tuple[int, Weights] | None = None
        self._replies: dict[str, Message] = {}
        self._wanted: set[str] = set()
        self._arrived = Arrivals()
        self._models: dict[str, Message] = {}  # repliers' models of the round they are in

    async def attempt(self, round_: int) -> tuple[int, Weights | None] | None:
        """Join the neighbours' round with their model, if most of them are far ahead.

        A majority of the neighbours heard from must agree, the round joined follows the
        median of their replies and is never past the last round: one lying neighbour
        can neither make the node skip training nor end it.

        Returns:
            The round to join and the weights to start it from (None: the node's own,
            under secure aggregation), or None (not behind).
        """
        link, peers, name = self._link, self._link.peers, self._link.name
        present = {p for p in peers.present() if not peers.is_suspected(p)}
        ahead = [p for p in peers.ahead_of(round_ + 1) if p in present]
        if not ahead or 2 * len(ahead) <= len(present):
            return None
        if not self._share_models:
            return self._rejoin(round_, ahead)
        request = wire.encode(kind=Kind.SYNC_REQUEST, sender=name, round=round_, samples=0, tensors={})
        link.send(tuple(ahead), request, control=True)
        replies = await self.gather(ahead, timeout=link.round_timeout)
        try:
            if 2 * len(replies) <= len(present):
                log.warning("node %s: neighbours %s seem ahead but too few sent a model to catch up with",
                            name, ", ".join(ahead))
                return None
            # Join the neighbours' current round: they resend their model of it with the sync
            # reply, and wait for ours now that they heard from us again.
            current, weights = average(replies)
            target = min(current, self._rounds - 1)
            if target <= round_:
                return None
            link.inbox.advance(target)  # from now on their messages of that round are in the window
            for model in self.kept_models(target):
                with contextlib.suppress(WireError):  # e.g. a duplicate that came the normal way
                    link.inbox.offer(model)
        finally:
            self.finish()
        log.info("node %s: behind at round %d; took the model of %s and joins at round %d",
                 name, round_, ", ".join(sorted(replies)), target)
        return target, weights

    def _rejoin(self, round_: int, ahead: list[str]) -> tuple[int, None] | None:
        """Under secure aggregation: join the round after the neighbours' (median of what
        they last said), with this node's own weights. Their models of the round they are
        in went out while it was away; they stop waiting for its model of that round once
        they hear it is past it."""
        rounds = sorted(self._link.peers.last_round(p) or 0 for p in ahead)
        theirs = rounds[(len(rounds) - 1) // 2]  # the lower median: one liar cannot move it
        target = min(theirs + 1, self._rounds - 1)
        if target <= round_:
            return None
        self._link.inbox.advance(target)
        log.info("node %s: behind at round %d; neighbours %s are at round %d: rejoins at round %d with "
                 "its own model (secure aggregation: no model is sent in the clear)",
                 self._link.name, round_, ", ".join(ahead), theirs, target)
        return target, None

    def answer(self, message: Message) -> None:
        """A neighbour behind asks for our latest averaged model ("sync-request").

        Raises:
            WireError: ``sync_refused`` (secure aggregation is on), ``sync_not_behind``
                (the requester is not :data:`BEHIND` rounds behind this node) or
                ``sync_rate_limited`` (it was answered less than a round deadline ago);
                the node counts them as rejections.
        """
        if not self._share_models:
            raise WireError("sync_refused", f"{message.sender} asks for a model in the clear; "
                            "secure aggregation is on: catch-up sends none")
        if self.latest is None:
            return  # nothing averaged yet: the requester is not behind us
        round_, weights = self.latest
        if message.round > round_ - BEHIND:
            raise WireError("sync_not_behind", f"{message.sender} asks at round {message.round}, "
                            f"this node is at round {round_}: not {BEHIND} rounds behind")
        if not self._link.may_answer(message.sender, "sync", interval=self._link.round_timeout):
            raise WireError("sync_rate_limited", f"{message.sender} was sent a model less than "
                            f"{self._link.round_timeout:g} s ago")
        frames = wire.encode(kind=Kind.SYNC, sender=self._link.name, round=round_, samples=0, tensors=weights)
        self._link.send((message.sender,), frames, control=True)
        self._link.stats.sync_replies_sent += 1
        model = self._sent(round_)
        if model is not None:  # our model of the round it is about to join went out while it was away
            self._link.send((message.sender,), model, control=True)

    def offer(self, message: Message) -> None:
        """A "sync" message arrived (ignored unless this node asked that peer)."""
        if message.sender in self._wanted:
            self._replies[message.sender] = message
            self._arrived.notify()

    def keep_model(self, message: Message) -> bool:
        """Keep a model of the round its sender's sync reply named; False if it is none."""
        reply = self._replies.get(message.sender)
        if reply is None or reply.round != message.round or message.sender in self._models:
            return False
        self._models[message.sender] = message
        return True

    def kept_models(self, round_: int) -> list[Message]:
        """The kept models of ``round_`` (the round joined), forgetting all kept ones."""
        models = [m for m in self._models.values() if m.round == round_]
        self._models = {}
        return models

    async def gather(self, peers: Iterable[str], timeout: float) -> dict[str, Message]:
        """Wait for the replies of ``peers`` (all, or whoever answered by ``timeout``)."""
        self._wanted = set(peers)
        self._replies = {}
        self._models = {}
        await self._arrived.until(lambda: self._wanted <= self._replies.keys(), timeout)
        replies, self._wanted = dict(self._replies), set()
        return replies

    def finish(self) -> None:
        """The attempt is decided: models arriving from now on go to the inbox."""
        self._replies = {}


def average(replies: dict[str, Message]) -> tuple[int, Weights]:
    """The neighbours' round and the uniform average of the replies' weights.

    The round is the (lower) median of the replies' rounds, so a single neighbour
    claiming a far round cannot move it.
    """
    rounds = sorted(message.round for message in replies.values())
    round_ = rounds[(len(rounds) - 1) // 2]
    peers = sorted(replies)
    weights: Weights = {}
    for name in replies[peers[0]].tensors:
        acc = np.zeros_like(replies[peers[0]].tensors[name], dtype=np.float64)
        for peer in peers:
            acc += replies[peer].tensors[name]
        weights[name] = (acc / len(peers)).astype(replies[peers[0]].tensors[name].dtype)
    return round_, weights
