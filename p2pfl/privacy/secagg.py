"""Secure aggregation among neighbours: a receiver learns the weighted sum, not the models.

Pairwise masking (Bonawitz et al. 2017, without its double masking) applied to each
receiver's neighbourhood separately. In round ``r``, neighbour ``j`` of receiver ``i``
sends

    y_ij = enc(W_ij * x_j) + sum_{k in N(i), k != j} sign(j, k) * PRG(s_jk, r, i)   (mod 2**64)

where ``N(i)`` is the set of neighbours ``i`` expects in round ``r`` (public: every node
evaluates the same schedule), ``sign(j, k)`` is ``+1`` if ``j < k`` by name and ``-1``
otherwise, and ``s_jk`` is the X25519 shared secret of ``j`` and ``k`` run through HKDF.
Each pair's masks cancel in ``sum_j y_ij``, so ``i`` recovers exactly
``sum_j enc(W_ij x_j)`` and adds its own ``W_ii x_i`` in the clear. The PRG is AES-256
in counter mode under a key derived per (pair, round, receiver) with HMAC-SHA256
(:mod:`p2pfl.privacy.secagg_keys`).

Fixed point: ``enc(v) = round(v * 2**32)`` as int64, carried as uint64 (two's
complement, arithmetic mod 2**64). Resolution 2**-32 (about 2.3e-10). Every weighted value
is clipped to ``|v| <= 2**30 / |N(i)|``, so the true sum of the ``|N(i)|`` contributions
stays within ``2**30 < 2**31 = 2**63 / 2**32``: it never wraps. Realistic weights are
far below the clip (for 16 neighbours it is 6.7e7).

Dropouts: if some expected neighbours ``D`` have not arrived by the deadline, ``i`` asks
each present one for its masks with ``D`` only (``reveal-request``); the answers
(``reveal``) are ``sum_{d in D} sign(j, d) PRG(s_jd, r, i)``, which ``i`` subtracts. A
present neighbour that does not answer joins ``D`` and the request is repeated. Once ``i``
has asked for masks with ``d``, a late model from ``d`` for that round is refused. The
messages and the round's steps are :mod:`p2pfl.privacy.secagg_exchange`; this module is
the arithmetic and each node's masking state.

Threat model and limits (also in README.md):

* Honest-but-curious receiver: it learns only ``sum_{j present} W_ij x_j``.
* A *lying* receiver that claims a neighbour ``d`` dropped although ``d``'s masked
  model arrived learns ``W_id x_d`` exactly: the others reveal all of ``d``'s masks.
  Double masking (a self-mask secret-shared among the neighbours) would prevent it; it
  is NOT implemented. Against a malicious receiver this module only guarantees that at
  least two neighbours stay in the sum of a completed reveal (``MIN_REMAINING``).
* Neighbourhoods smaller than ``MIN_NEIGHBOURS = 3`` are refused: with one neighbour
  the sum is its model; with two, one colluding neighbour (or one dropout) hands the
  receiver the other's model.
* Colluding neighbours: ``i`` together with ``c`` colluding neighbours learns the sum of
  the other ``|N(i)| - c`` models, never less than a sum.
* Senders are not checked: a malicious sender can add anything to the sum, so robust
  aggregators (median, Krum, trimmed mean, clipped gossip) cannot be combined with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from p2pfl.aggregation.base import Aggregator, mix
from p2pfl.errors import NodeError, WireError
from p2pfl.learning.learner import Weights
from p2pfl.privacy.secagg_exchange import MASKED, MIN_REMAINING, RevealCollector, SecureExchange
from p2pfl.privacy.secagg_keys import SecAggKeys, generate_keys, prg
from p2pfl.topology.schedule import GossipSchedule, RoundPlan
from p2pfl.wire import Kind, ModelSchema, TensorSpec

if TYPE_CHECKING:
    from p2pfl.node.exchange import Link

__all__ = [
    "FRACTION_BITS",
    "MASKED",
    "MIN_NEIGHBOURS",
    "RevealCollector",
    "SecAggKeys",
    "SecureAggregation",
    "SecureExchange",
    "SecureSum",
    "check_neighbourhood",
    "check_schedule",
    "decode_fixed",
    "encode_fixed",
    "generate_keys",
    "prg",
    "value_bound",
]

FRACTION_BITS = 32
SCALE = float(2**FRACTION_BITS)
MIN_NEIGHBOURS = 3  # smallest neighbourhood that keeps a sum a sum after one dropout


def value_bound(neighbours: int) -> float:
    """Largest |weighted value| a neighbour may contribute: the sum of ``neighbours`` of
    them then stays below 2**30, far from wrapping the 64-bit fixed point."""
    return float(2 ** (62 - FRACTION_BITS)) / max(neighbours, 1)


def encode_fixed(values: np.ndarray, bound: float, scale: float = 1.0) -> np.ndarray:
    """``round(scale * values * 2**32)`` as uint64 (two's complement), clipped to ``±bound``
    (NaN counts as 0)."""
    scaled = np.multiply(values, scale * SCALE, dtype=np.float64)
    limit = bound * SCALE
    if not np.isfinite(scaled).all():
        np.nan_to_num(scaled, copy=False, nan=0.0, posinf=limit, neginf=-limit)
    np.clip(scaled, -limit, limit, out=scaled)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int64).view(np.uint64)


def decode_fixed(fixed: np.ndarray) -> np.ndarray:
    """The float64 values of a uint64 fixed-point array (read as two's complement)."""
    return fixed.view(np.int64).astype(np.float64) / SCALE



def check_neighbourhood(plan: RoundPlan) -> tuple[str, ...]:
    """The neighbourhood of ``plan``'s node; raises NodeError if it is under 3."""
    neighbours = plan.expect_from
    if len(neighbours) < MIN_NEIGHBOURS:
        raise NodeError(
            f"secure aggregation needs at least {MIN_NEIGHBOURS} neighbours per receiver; "
            f"{plan.node!r} has {len(neighbours)} ({', '.join(neighbours) or 'none'}): with one the "
            "sum is that neighbour's model, with two a single colluder or dropout exposes the other"
        )
    return neighbours


def check_schedule(schedule: GossipSchedule, names: Iterable[str], round_: int = 0) -> None:
    """Raise NodeError if any member's neighbourhood in ``round_`` is under 3."""
    for name in names:
        check_neighbourhood(schedule.plan(name, round_))


@dataclass(frozen=True)
class SecureSum:
    """What a receiver recovered in one round: the unmasked fixed-point sum of the
    weighted models of ``present`` (every other expected neighbour is out)."""

    total: np.ndarray | None  # uint64, or None when no neighbour is in the sum
    present: tuple[str, ...]
    dropped: tuple[str, ...]


class SecureAggregation:
    """One node's part in secure aggregation, as a sender, a revealer and a receiver.

    Args:
        keys: this node's key and the members' public keys.
        masking: ``False`` sends the fixed-point values without masks. For tests only:
            they show that the privacy check fails without masking.
    """

    def __init__(self, keys: SecAggKeys, *, masking: bool = True) -> None:
        self.keys = keys
        self.name = keys.name
        self.masking = masking
        self._layout: list[tuple[str, TensorSpec]] = []
        self._size = 0
        self._dropped: dict[int, set[str]] = {}  # round -> neighbours whose masks we asked for
        self._sent: dict[int, set[str]] = {}  # round -> receivers we sent a masked model to
        self._encoded: tuple[tuple[int, float, int], np.ndarray, np.ndarray] | None = None
        self._scratch = np.empty(0, dtype=np.uint64)

    # -- layout --------------------------------------------------------------------------

    def bind(self, schema: ModelSchema) -> None:
        """Fix the flat layout of the model (the node's schema, in its order)."""
        self._layout = list(schema.items())
        self._size = sum(math.prod(spec.shape) for _, spec in self._layout)
        self._scratch = np.empty(self._size + 2, dtype=np.uint64)  # PRG output (+16 spare bytes)

    def wire_schemas(self) -> dict[str, ModelSchema]:
        """What the tensors of the masked kinds must look like."""
        flat = {MASKED: TensorSpec("uint64", (self._size,))}
        return {Kind.MASKED_MODEL: flat, Kind.REVEAL: flat}

    def build_exchange(self, link: Link, *, mode: str, aggregator: Aggregator, schema: ModelSchema) -> SecureExchange:
        """The node's exchange (``Node(secure=...)`` calls this; see
        :class:`~p2pfl.node.exchange.ExchangeBuilder`).

        Raises:
            NodeError: ``mode`` is not sync, or ``aggregator`` is not the plain weighted mean.
        """
        if mode == "async":
            raise NodeError(
                f"node {link.name}: secure aggregation needs the round barrier (masks cancel only "
                "when the same neighbours' models of the same round are summed): use mode sync"
            )
        if aggregator is not mix:
            raise NodeError(
                f"node {link.name}: secure aggregation gives the node only the sum of its "
                "neighbours' models; robust aggregators (median, Krum, trimmed mean, clipped "
                "gossip) need the individual models: use the default weighted mean"
            )
        self.bind(schema)
        return SecureExchange(self, link)

    def flatten(self, weights: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([weights[name].ravel() for name, _ in self._layout], dtype=np.float64)

    def unflatten(self, flat: np.ndarray) -> Weights:
        out: Weights = {}
        start = 0
        for name, spec in self._layout:
            size = math.prod(spec.shape)
            out[name] = flat[start:start + size].reshape(spec.shape).astype(spec.dtype)
            start += size
        return out

    # -- sender ----------------------------------------------------------------------------

    def _masks(self, receiver: str, round_: int, others: Iterable[str], acc: np.ndarray | None = None) -> np.ndarray:
        """``acc`` (zeros if None) plus, over ``others``, sign(self, k) * PRG(s_self,k,
        round, receiver), mod 2**64, in place."""
        if acc is None:
            acc = np.zeros(self._size, dtype=np.uint64)
        if not self.masking:
            return acc
        scratch = self._scratch
        for other in others:
            mask = prg(self.keys.seed(other), round_, receiver, self._size, scratch)
            if self.name < other:
                acc += mask
            else:
                acc -= mask
        return acc

    def masked_for(self, receiver_plan: RoundPlan, round_: int, flat: np.ndarray) -> np.ndarray:
        """This node's masked, weighted model for the receiver whose plan is given."""
        receiver = receiver_plan.node
        neighbours = check_neighbourhood(receiver_plan)
        if self.name not in neighbours:
            raise NodeError(f"{self.name!r} is not a neighbour of {receiver!r} in round {round_}")
        # receivers often weight us alike (regular graphs): encode once per (model, weight)
        key = (id(flat), receiver_plan.weights[self.name], len(neighbours))
        if self._encoded is None or self._encoded[0] != key or self._encoded[1] is not flat:
            encoded = encode_fixed(flat, value_bound(len(neighbours)), receiver_plan.weights[self.name])
            self._encoded = (key, flat, encoded)
        payload = self._encoded[2].copy()
        self._masks(receiver, round_, (k for k in neighbours if k != self.name), payload)
        self._sent.setdefault(round_, set()).add(receiver)
        for old in [r for r in self._sent if r < round_ - 8]:
            del self._sent[old]
        return payload

    def reveal_for(self, receiver_plan: RoundPlan, round_: int, dropped: Iterable[str]) -> np.ndarray:
        """This node's masks with ``dropped`` for the receiver, so it can remove them.

        Raises:
            WireError: ``reveal_refused`` when the request is not one an honest receiver
                sends (we sent it nothing that round, a named peer is not its neighbour,
                we are named ourselves) or would leave fewer than two models in its sum.
        """
        receiver = receiver_plan.node
        neighbours = set(receiver_plan.expect_from)
        gone = set(dropped)
        if receiver not in self._sent.get(round_, ()):
            raise WireError("reveal_refused", f"{receiver} asks for masks of round {round_}; we sent it none")
        if not gone or self.name in gone or not gone <= neighbours:
            raise WireError("reveal_refused", f"{receiver} asks for masks with {sorted(gone)}: not dropped neighbours")
        if len(neighbours - gone) < MIN_REMAINING:
            raise WireError(
                "reveal_refused",
                f"{receiver} asks for masks with {sorted(gone)}: fewer than {MIN_REMAINING} models would stay in its sum",
            )
        return self._masks(receiver, round_, sorted(gone))

    # -- receiver --------------------------------------------------------------------------

    def mark_dropped(self, round_: int, peers: Iterable[str]) -> None:
        """From now on, refuse ``peers``' masked models for ``round_``."""
        self._dropped.setdefault(round_, set()).update(peers)
        for old in [r for r in self._dropped if r < round_ - 8]:
            del self._dropped[old]

    def check_not_dropped(self, sender: str, round_: int) -> None:
        """Raises WireError ``dropped_late`` for a model of a peer already unmasked away."""
        if sender in self._dropped.get(round_, ()):
            raise WireError("dropped_late", f"{sender} was declared dropped in round {round_}; its model is refused")

    def unmask(
        self,
        masked: Mapping[str, np.ndarray],
        reveals: Mapping[str, np.ndarray],
        dropped: Iterable[str],
    ) -> SecureSum:
        """The sum of the present neighbours' masked models minus their reveals."""
        present = tuple(sorted(masked))
        total = None
        if present:
            total = masked[present[0]].copy()
            for peer in present[1:]:
                total += masked[peer]
            for peer in present:
                if peer in reveals:
                    total -= reveals[peer]
        return SecureSum(total=total, present=present, dropped=tuple(sorted(dropped)))

    def combine(self, own: Mapping[str, np.ndarray], secure_sum: SecureSum, weights: Mapping[str, float]) -> Weights:
        """``(W_ii x_i + sum_present W_ij x_j) / (W_ii + sum_present W_ij)``: the plain
        weighted mean renormalised over the node and the neighbours in the sum."""
        own_flat = self.flatten(own)
        total_weight = weights[self.name] + sum(weights[p] for p in secure_sum.present)
        acc = own_flat * weights[self.name]
        if secure_sum.total is not None:
            acc = acc + decode_fixed(secure_sum.total)
        return self.unflatten(acc / total_weight)
