"""The default weighted mean, summed as the neighbours' models arrive (sync gossip).

A received model is added to one accumulator as soon as its turn comes and then let go,
so a node holds its neighbours' models (whole received frames over tcp) only while one
waits for an earlier one in name order, not until the round's mixing. The terms are
those of :func:`~p2pfl.aggregation.base.mix`, added in the same order, so when every
expected neighbour arrives the result has the same bits; with some missing, the sum is
rescaled to the present ones' total (the same mean, up to float rounding).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from p2pfl.learning.learner import Weights
from p2pfl.wire import Message


class RunningMix:
    """``mix(own_name, own, received, weights)``, one received model at a time.

    Args:
        own_name: this node's key in ``weights``.
        own: this node's tensors after local training (read, never changed).
        weights: mixing weight for ``own_name`` and each expected peer.
    """

    def __init__(self, own_name: str, own: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> None:
        self._own_name = own_name
        self._weights = weights
        self._order = sorted(p for p in weights if p != own_name)  # mix's order of terms
        self._total = sum(weights[p] for p in [own_name, *self._order])  # mix's total when all arrive
        self._own: Mapping[str, np.ndarray] | None = own
        self._acc: Weights = {}
        self._next = 0  # index in _order of the next term to add
        self._waiting: dict[str, Mapping[str, np.ndarray]] = {}  # arrived before their turn
        self._added: list[str] = []
        self._dtypes: dict[str, np.dtype[Any]] = {}

    def add(self, message: Message) -> None:
        """Take ``message``'s model; added now if its turn has come, else when it does."""
        if message.sender in self._weights and message.sender not in self._added:
            self._waiting[message.sender] = message.tensors
            while self._next < len(self._order) and self._order[self._next] in self._waiting:
                self._fold(self._order[self._next])
                self._next += 1

    def result(self) -> Weights:
        """The mean over this node and the peers added (call once, when the round closes)."""
        for peer in sorted(self._waiting):  # after a missing one in name order
            self._fold(peer)
        self._start()
        if len(self._added) < len(self._order):
            present = sum(self._weights[p] for p in [self._own_name, *sorted(self._added)])
            for tensor in self._acc.values():
                tensor *= self._total / present
        mixed, self._acc = self._acc, {}
        return {name: tensor.astype(self._dtypes[name], copy=False) for name, tensor in mixed.items()}

    def _start(self) -> None:
        """The sum's first term, made when the first model is added: made at the round's
        start, it was one more model per node while the models were still on the way."""
        own, self._own = self._own, None
        if own is not None:
            share = self._weights[self._own_name] / self._total
            self._dtypes = {name: tensor.dtype for name, tensor in own.items()}
            self._acc = {name: tensor * share for name, tensor in own.items()}

    def _fold(self, peer: str) -> None:
        self._start()
        tensors = self._waiting.pop(peer)
        share = self._weights[peer] / self._total
        for name, acc in self._acc.items():
            acc += tensors[name] * share  # one tensor-sized temporary at a time
        self._added.append(peer)
