"""Catching up: a node that fell behind takes a fresh model from its neighbours.

After a restart (or a partition) a node may be several rounds behind its neighbours,
who stopped waiting for it. Training on from its old model would drag them back, so it
asks the neighbours that are ahead for their latest averaged weights ("sync-request"),
averages the replies ("sync") uniformly, and joins them at their round. A replier
whose model of that round already went out resends it right after its reply; it is
kept here, since the node's inbox still refuses rounds that far ahead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import numpy as np

from p2pfl.learning.learner import Weights
from p2pfl.wire import Message


class CatchUp:
    """Collects "sync" replies for the node's current catch-up attempt."""

    def __init__(self) -> None:
        self._replies: dict[str, Message] = {}
        self._wanted: set[str] = set()
        self._arrived = asyncio.Event()
        self._models: dict[str, Message] = {}  # repliers' models of the round they are in

    def offer(self, message: Message) -> None:
        """A "sync" message arrived (ignored unless this node asked that peer)."""
        if message.sender in self._wanted:
            self._replies[message.sender] = message
            self._arrived.set()

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
        try:
            async with asyncio.timeout(timeout):
                while not self._wanted <= self._replies.keys():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            pass
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
