"""Catching up: a node that fell behind takes a fresh model from its neighbours.

After a restart (or a partition) a node may be several rounds behind its neighbours,
who stopped waiting for it. Training on from its old model would drag them back, so it
asks the neighbours that are ahead for their latest averaged weights ("sync-request"),
averages the replies ("sync") uniformly, and joins them at their round.
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

    def offer(self, message: Message) -> None:
        """A "sync" message arrived (ignored unless this node asked that peer)."""
        if message.sender in self._wanted:
            self._replies[message.sender] = message
            self._arrived.set()

    async def gather(self, peers: Iterable[str], timeout: float) -> dict[str, Message]:
        """Wait for the replies of ``peers`` (all, or whoever answered by ``timeout``)."""
        self._wanted = set(peers)
        self._replies = {}
        try:
            async with asyncio.timeout(timeout):
                while not self._wanted <= self._replies.keys():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            pass
        replies, self._wanted, self._replies = self._replies, set(), {}
        return replies


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
