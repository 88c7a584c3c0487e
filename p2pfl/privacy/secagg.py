"""Secure aggregation among neighbours: a receiver learns the weighted sum, not the models.

Double masking (Bonawitz et al., CCS 2017) applied to each receiver's neighbourhood
``N(i)`` (public: every node evaluates the same schedule), as SecAgg+ (Bell et al. 2020)
applies it to a neighbourhood graph. In round ``r`` neighbour ``j`` of receiver ``i`` sends

    y_ij = enc(W_ij x_j) + PRG(b_j) + sum_{k in N(i), k != j} sign(j, k) PRG(s_jk, r, i)   (mod 2**64)

``b_j`` is a fresh 32-byte self-mask seed per (receiver, round), Shamir-shared among
``N(i) \\ {j}`` with threshold ``t - 1`` (:mod:`p2pfl.privacy.shamir`), each share
AES-GCM-encrypted to its holder and carried there by ``i``; ``s_jk`` is the pair's mask
seed from their per-run ephemeral X25519 keys (:mod:`p2pfl.privacy.secagg_keys`);
``sign(j, k)`` is ``+1`` if ``j < k`` by name, else ``-1``.

Unmasking (the messages are in :mod:`p2pfl.privacy.secagg_exchange`): ``i`` commits to one
dropout set ``D`` (the neighbours whose model did not arrive), signed; each present
neighbour signs ``(i, r, keys, D)`` once and refuses any other set for ``(i, r)``; with
``t`` valid signatures on exactly the set it signed, a neighbour ``k`` answers once: its
pairwise masks with ``D`` and its shares of the present neighbours' self-masks, never
both for one sender. ``i`` rebuilds each ``b_j`` from ``t - 1`` shares and removes
every mask: the sum of the present neighbours' weighted models is left.

Threshold: ``t = floor(n / 2) + 1`` for ``n = |N(i)|``. ``i`` needs ``t`` present
neighbours and ``t`` signatures; each present sender's self-mask needs ``t - 1`` shares
from the others present. Two different sets cannot both collect ``t`` signatures while
fewer than ``2t - n`` neighbours collude with ``i`` (1 for even ``n``, 0 for odd ``n``),
and ``t - 1`` shares stay out of their reach. Below ``t`` the receiver keeps its own
model for the round. Threat model: docs/explanations/secure-aggregation.md.

Fixed point: ``enc(v) = round(v * 2**32)`` as int64, carried as uint64 (two's
complement, arithmetic mod 2**64). Resolution 2**-32. Every weighted value is clipped
to ``|v| <= 2**30 / |N(i)|``, so the true sum never wraps.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from p2pfl.aggregation.base import Aggregator, mix
from p2pfl.errors import NodeError, WireError
from p2pfl.learning.learner import Weights
from p2pfl.privacy import shamir
from p2pfl.privacy.secagg_exchange import MASKED, SecureExchange
from p2pfl.privacy.secagg_keys import EphemeralKey, SecAggKeys, generate_keys, prg, share_aad
from p2pfl.privacy.secagg_state import Bundle
from p2pfl.topology.schedule import GossipSchedule, RoundPlan
from p2pfl.wire import Kind, ModelSchema, TensorSpec

if TYPE_CHECKING:
    from p2pfl.node.exchange import Link

__all__ = [
    "FRACTION_BITS",
    "MASKED",
    "MIN_NEIGHBOURS",
    "Bundle",
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
    "threshold",
    "value_bound",
]

FRACTION_BITS = 32
SCALE = float(2**FRACTION_BITS)
MIN_NEIGHBOURS = 3  # smallest neighbourhood that keeps a sum a sum after one dropout


def threshold(neighbours: int) -> int:
    """``t``: present neighbours and signatures a receiver needs (a strict majority)."""
    return neighbours // 2 + 1


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


def holder_index(neighbours: Iterable[str], holder: str) -> int:
    """A holder's Shamir x coordinate: its place among the receiver's neighbours, from 1."""
    return sorted(neighbours).index(holder) + 1


@dataclass(frozen=True)
class SecureSum:
    """What a receiver recovered in one round: the unmasked fixed-point sum of the
    weighted models of ``present`` (every other expected neighbour is out)."""

    total: np.ndarray | None  # uint64, or None when no neighbour is in the sum
    present: tuple[str, ...]
    dropped: tuple[str, ...]


class SecureAggregation:
    """One node's part in secure aggregation, as a sender, a helper and a receiver.

    Each instance is one run: it generates the run's ephemeral key (a restarted node, or
    a second run with the same long-term keys, masks with other keys).

    Args:
        keys: this node's identity and the members' signing public keys.
        masking: ``False`` sends the fixed-point values without masks. For tests only:
            they show that the privacy checks fail without masking.
    """

    def __init__(self, keys: SecAggKeys, *, masking: bool = True) -> None:
        self.keys = keys
        self.name = keys.name
        self.masking = masking
        self.ephemeral = EphemeralKey(keys)
        self._layout: list[tuple[str, TensorSpec]] = []
        self._size = 0
        self._dropped: dict[int, set[str]] = {}  # round -> neighbours declared dropped
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

    def _pairwise(self, receiver: str, round_: int, others: Iterable[str], bundle: Bundle,
                  acc: np.ndarray | None = None) -> np.ndarray:
        """``acc`` (zeros if None) plus, over ``others``, sign(self, k) PRG(s_self,k, round,
        receiver), mod 2**64, in place."""
        if acc is None:
            acc = np.zeros(self._size, dtype=np.uint64)
        if not self.masking:
            return acc
        for other in others:
            seed = self.ephemeral.mask_seed(other, bundle.keys[other])
            mask = prg(seed, round_, receiver, self._size, self._scratch)
            if self.name < other:
                acc += mask
            else:
                acc -= mask
        return acc

    def masked_for(
        self, receiver_plan: RoundPlan, round_: int, flat: np.ndarray, bundle: Bundle
    ) -> tuple[np.ndarray, dict[str, bytes]]:
        """This node's double-masked, weighted model for the receiver whose plan is given,
        and its self-mask seed's shares, encrypted to each holder (by holder name)."""
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
        others = [k for k in neighbours if k != self.name]
        seed = os.urandom(shamir.SECRET_BYTES)  # fresh per (receiver, round): never reused
        if self.masking:
            payload += prg(seed, round_, receiver, self._size, self._scratch)
        self._pairwise(receiver, round_, others, bundle, payload)
        shares = shamir.split(seed, (holder_index(neighbours, k) for k in others), threshold(len(neighbours)) - 1)
        sealed = {
            k: self.ephemeral.encrypt(
                k, bundle.keys[k], shares[holder_index(neighbours, k)],
                share_aad(receiver, round_, self.name, k, bundle.digest),
            )
            for k in others
        }
        return payload, sealed

    # -- helper (a neighbour of a receiver that unmasks) -----------------------------------

    def pairwise_reveal(self, receiver: str, round_: int, dropped: Iterable[str], bundle: Bundle) -> np.ndarray:
        """This node's pairwise masks with ``dropped`` in its model for the receiver."""
        return self._pairwise(receiver, round_, sorted(dropped), bundle)

    def open_shares(
        self, receiver: str, round_: int, bundle: Bundle, sealed: Mapping[str, bytes]
    ) -> dict[str, bytes]:
        """Decrypt the self-mask shares senders sealed for this node; a share that does not
        open for its slot (altered, replayed, another round's) is left out."""
        opened = {}
        for sender, blob in sealed.items():
            if sender == self.name or sender not in bundle.keys:
                continue
            aad = share_aad(receiver, round_, sender, self.name, bundle.digest)
            share = self.ephemeral.decrypt(sender, bundle.keys[sender], blob, aad)
            if share is not None:
                opened[sender] = share
        return opened

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
        plan: RoundPlan,
        round_: int,
        masked: Mapping[str, np.ndarray],
        shares: Mapping[str, Mapping[str, bytes]],
        pairwise: Mapping[str, np.ndarray],
    ) -> SecureSum | None:
        """The sum of the present neighbours' weighted models, or None if it cannot be had.

        Args:
            plan: the receiver's plan; ``masked`` holds the present neighbours' models.
            shares: by holder, the self-mask shares it revealed, by sender.
            pairwise: by present neighbour, its revealed masks with the dropped ones
                (needed from every present one when some are dropped).
        """
        present = tuple(sorted(masked))
        neighbours = plan.expect_from
        dropped = tuple(p for p in neighbours if p not in masked)
        if not present:
            return SecureSum(total=None, present=(), dropped=dropped)
        need = threshold(len(neighbours)) - 1
        total = masked[present[0]].copy()
        for peer in present[1:]:
            total += masked[peer]
        for peer in present:
            points = {holder_index(neighbours, h): got[peer] for h, got in shares.items() if h != peer and peer in got}
            if len(points) < need:
                return None
            try:
                seed = shamir.combine(dict(sorted(points.items())[:need]))
            except WireError:
                return None
            if self.masking:
                total -= prg(seed, round_, plan.node, self._size, self._scratch)
            if dropped:
                if peer not in pairwise:
                    return None
                total -= pairwise[peer]
        return SecureSum(total=total, present=present, dropped=dropped)

    def combine(self, own: Mapping[str, np.ndarray], secure_sum: SecureSum, weights: Mapping[str, float]) -> Weights:
        """``(W_ii x_i + sum_present W_ij x_j) / (W_ii + sum_present W_ij)``: the plain
        weighted mean renormalised over the node and the neighbours in the sum."""
        own_flat = self.flatten(own)
        total_weight = weights[self.name] + sum(weights[p] for p in secure_sum.present)
        acc = own_flat * weights[self.name]
        if secure_sum.total is not None:
            acc = acc + decode_fixed(secure_sum.total)
        return self.unflatten(acc / total_weight)
