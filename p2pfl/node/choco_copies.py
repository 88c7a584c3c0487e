"""CHOCO's public copies: the arithmetic on them and each neighbour's copy kept in step.

A node keeps ``x̂_j``, the public copy of each neighbour ``j``, which must be bit-identical
to ``j``'s own ``x̂_j``. Both sides apply the same float32 additions in the same order, so
they are; every difference carries the sender's sequence number and the CRC-32 of its
copy after it, so a receiver *knows* when it is not (a message lost, a peer restarted,
a different initial model) and takes that copy out of the consensus step until a full
copy arrives (:class:`Event` ``state``).

Float32 tensors carry differences; others (e.g. a batch-norm counter) carry their value,
which replaces the copy's, and keep the node's own value in the consensus step.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from p2pfl.wire import first_non_finite

if TYPE_CHECKING:
    from p2pfl.learning.learner import Weights

log = logging.getLogger(__name__)


def difference(x: Mapping[str, np.ndarray], hat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``x - x̂`` for float32 tensors, the value itself for the others."""
    return {name: x[name] - hat[name] if x[name].dtype == np.float32 else x[name] for name in x}


def advance(hat: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``x̂ + q`` (a new copy: the old one may still be read by a resync answer)."""
    return {name: hat[name] + sent[name] if hat[name].dtype == np.float32 else sent[name] for name in hat}


def fingerprint(hat: Mapping[str, np.ndarray]) -> int:
    """CRC-32 of a copy's bytes, tensor by tensor in the model's order."""
    crc = 0
    for array in hat.values():
        crc = zlib.crc32(np.ascontiguousarray(array).data, crc)
    return crc


def consensus(
    x: Mapping[str, np.ndarray],
    own_hat: Mapping[str, np.ndarray],
    hats: Mapping[str, Mapping[str, np.ndarray]],
    weights: Mapping[str, float],
    gamma: float,
) -> dict[str, np.ndarray]:
    """CHOCO's step ``x + γ Σ_j w_ij (x̂_j − x̂_i)`` over the copies in ``hats``, in name
    order (a neighbour left out gives its share to the node itself)."""
    out: dict[str, np.ndarray] = {}
    for name, value in x.items():
        if value.dtype != np.float32:
            out[name] = value
            continue
        acc = value.copy()
        for peer in sorted(hats):
            acc += np.float32(gamma * weights[peer]) * (hats[peer][name] - own_hat[name])
        out[name] = acc
    return out


@dataclass(frozen=True)
class Event:
    """What arrived from one neighbour, applied to its copy in arrival order.

    ``diff``: the ``seq``-th difference (dense, decoded) and ``crc`` of the copy after
    it; ``state``: the full copy, whose next difference is ``seq``; ``reset``: forget
    the copy (its owner restarted, or too much queued up).
    """

    kind: Literal["diff", "state", "reset"]
    sender: str
    seq: int = 0
    round: int = 0
    tensors: Mapping[str, np.ndarray] | None = None
    crc: int = 0
    nbytes: int = 0


class PublicCopies:
    """Each neighbour's public copy; only the worker thread (the consensus step) touches it.

    Args:
        initial: the copy a neighbour starts from: the node's own initial model (every
            node of a run starts from the same seeded one; a neighbour whose first
            difference's CRC disagrees is resynchronised).
    """

    def __init__(self, initial: Weights) -> None:
        self._initial = dict(initial)
        self._hats: dict[str, dict[str, np.ndarray] | None] = {}  # None: out of step
        self._next: dict[str, int] = {}  # the next difference's sequence number
        self._heard: set[str] = set()  # neighbours whose copy moved at least once

    def apply(self, events: Iterable[Event]) -> None:
        """Apply ``events`` in order; a copy that falls out of step is set aside."""
        for event in events:
            peer = event.sender
            if event.kind == "reset":
                self._hats[peer] = None
                continue
            if event.kind == "state":
                assert event.tensors is not None  # built so by the exchange
                self._hats[peer], self._next[peer] = dict(event.tensors), event.seq
                self._heard.add(peer)
                continue
            hat = self._hats.setdefault(peer, self._initial)
            expected = self._next.setdefault(peer, 0)
            if hat is None or event.seq < expected:
                continue  # out of step (waiting for a state) or older than the state applied
            if event.seq > expected:
                log.info("CHOCO: difference %d from %s, expected %d; resynchronising", event.seq, peer, expected)
                self._hats[peer] = None
                continue
            assert event.tensors is not None
            with np.errstate(over="ignore"):  # checked just below
                hat = advance(hat, event.tensors)
            if first_non_finite(hat) is not None:  # finite parts can still overflow a sum
                log.warning("CHOCO: %s's difference %d makes its copy non-finite; resynchronising", peer, event.seq)
                self._hats[peer] = None
                continue
            if fingerprint(hat) != event.crc:
                log.info("CHOCO: %s's public copy differs from its own after difference %d; resynchronising",
                         peer, event.seq)
                self._hats[peer] = None
                continue
            self._hats[peer], self._next[peer] = hat, expected + 1
            self._heard.add(peer)

    def in_step(self, peer: str) -> Mapping[str, np.ndarray] | None:
        """``peer``'s copy if it is known to match ``peer``'s own, else None."""
        hat = self._hats.get(peer, self._initial)
        return hat if peer in self._heard else None

    def out_of_step(self) -> list[str]:
        """The neighbours whose copy needs a full resend."""
        return sorted(peer for peer, hat in self._hats.items() if hat is None)
