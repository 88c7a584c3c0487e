"""Secure aggregation's round: keys, masked models, one signed dropout set, one reveal each.

Messages, for receiver ``i`` with neighbourhood ``N(i)`` of ``n`` and ``t = n // 2 + 1``
(the arithmetic and its reasons are in :mod:`p2pfl.privacy.secagg`):

0. once per run (and after a restart): each sender ``j`` sends ``i`` its ephemeral key
   signed by its identity ("secagg-key"); once ``i`` holds all of ``N(i)``'s, it relays
   them to each of them ("secagg-keys"), who check every key's signature;
1. ``j`` sends ``i`` its double-masked model with its self-mask shares, each sealed to
   its holder ("masked-model", ``meta.shares``, ``meta.digest`` of the keys it used);
2. at the deadline ``i`` fixes the present set ``P`` (at least ``t``), the dropout set
   ``D = N(i) - P``, signs ``(i, r, digest, D)`` with its identity and sends it to each
   present ``j`` with the shares sealed for it ("secagg-set");
3. ``j`` endorses the set, unless it endorsed another for ``(i, r)``, is named in ``D``,
   used other keys or the receiver's signature fails: one HMAC tag per other neighbour
   ``k``, under the pair key only ``j`` and ``k`` hold ("secagg-endorsement");
4. with ``t`` endorsers, ``i`` forwards to each the tags made for it ("reveal-request");
5. an endorser that finds ``t`` valid endorsements (its own and ``t - 1`` tags) of exactly
   the set it endorsed answers once: its masks with ``D`` and its shares of ``P``'s
   self-masks ("reveal"; "reveal-shares" when ``D`` is empty);
6. ``i`` rebuilds each present self-mask from ``t - 1`` shares, removes every mask and
   combines the sum with its own model in the worker. Short of ``t`` (models, endorsers
   or answers), it keeps its own model for the round.

Endorsements are MAC tags, not Ed25519 signatures: what Bonawitz et al.'s consistency
check needs is that ``i`` cannot make ``k`` believe ``j`` saw a set it did not, and ``i``
does not hold the ``j``-``k`` pair key (derived from their signed ephemeral keys). A tag
costs a microsecond where a signature check costs ~100 µs, which in a 16-node simulation
on one core was a quarter of the round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from p2pfl import wire
from p2pfl.errors import WireError
from p2pfl.node.exchange import Exchanged, Frames, Handler, Link, Trained
from p2pfl.privacy.secagg_keys import set_statement
from p2pfl.privacy.secagg_state import (
    Bundle,
    HelperBook,
    KeyDirectory,
    Replies,
    blobs_field,
    bytes_field,
    names_field,
    signature_field,
)
from p2pfl.wire import Kind, Message, ModelSchema

if TYPE_CHECKING:
    from p2pfl.privacy.secagg import SecureAggregation, SecureSum
    from p2pfl.topology.schedule import RoundPlan

log = logging.getLogger(__name__)

MASKED = "masked"  # the one flat uint64 tensor of "masked-model" and "reveal" messages


def _threshold(neighbours: int) -> int:
    return neighbours // 2 + 1  # p2pfl.privacy.secagg.threshold (which imports this module)


class SecureExchange:
    """A node's rounds under secure aggregation: implements :class:`~p2pfl.node.exchange.Exchange`.

    Args:
        secure: the node's masking state (bound to its model's layout).
        link: the node's name, plans, sending and round inbox.
    """

    model_kind = Kind.MASKED_MODEL
    barrier = True  # masks cancel only among the same round's models

    def __init__(self, secure: SecureAggregation, link: Link) -> None:
        self.secure = secure
        self._link = link
        self.directory = KeyDirectory(secure.keys, secure.ephemeral)
        self.helping = HelperBook()
        self._endorsements = Replies("endorsement")
        self._reveals = Replies("reveal")
        self._waited_in_vain: set[str] = set()  # receivers whose keys never came
        self.kind_schemas: Mapping[str, ModelSchema] | None = secure.wire_schemas()

    def handlers(self) -> Mapping[Kind, Handler]:
        return {
            Kind.SECAGG_KEY: self._on_key,
            Kind.SECAGG_KEYS: self._on_keys,
            Kind.SECAGG_SET: self._on_set,
            Kind.SECAGG_ENDORSEMENT: self._endorsements.offer,
            Kind.REVEAL_REQUEST: self._on_reveal_request,
            Kind.REVEAL: self._reveals.offer,
            Kind.REVEAL_SHARES: self._reveals.offer,
        }

    def admit(self, message: Message) -> None:
        """Only masked models are taken, well-formed, and only from peers not yet declared dropped."""
        if message.kind == Kind.MODEL:
            raise WireError("secagg_plain", "a plain model, but this node runs secure aggregation")
        self.secure.check_not_dropped(message.sender, message.round)
        bytes_field(message.meta, "digest", 32)
        blobs_field(message.meta, "shares")

    def offer(self, message: Message) -> None:
        self._link.inbox.offer(message)

    def restarted(self, peer: str) -> None:
        self.directory.forget(peer)  # it lost our key and has a new one
        self._waited_in_vain.discard(peer)

    def sent(self, round_: int) -> Frames | None:
        return None  # each receiver got its own masked model: none can be resent to another

    def _send(self, peers: tuple[str, ...], kind: Kind, round_: int, meta: dict[str, Any],
              tensors: Mapping[str, np.ndarray] | None = None, *, control: bool = True, samples: int = 0) -> int:
        frames = wire.encode(kind=kind, sender=self._link.name, round=round_, samples=samples,
                             tensors=tensors or {}, meta=meta)
        return self._link.send(peers, frames, control=control)

    # -- the round ---------------------------------------------------------------------------

    async def run(self, trained: Trained) -> Exchanged:
        link, secure = self._link, self.secure
        round_ = trained.round
        plan = link.plan(link.name, round_)
        started = time.perf_counter()
        flat = secure.flatten(trained.weights)
        receivers = {receiver: link.plan(receiver, round_) for receiver in plan.send_to}
        await self._await_keys(receivers, round_)
        sent = 0
        for receiver, receiver_plan in receivers.items():
            bundle = self.directory.bundle_for(receiver, receiver_plan.expect_from)
            if bundle is None:
                log.warning("node %s round %d: no keys of %s's neighbourhood yet; not sending to it",
                            link.name, round_, receiver)
                continue
            payload, shares = secure.masked_for(receiver_plan, round_, flat, bundle)
            self.helping.sent(receiver, round_, bundle)
            sent += self._send((receiver,), Kind.MASKED_MODEL, round_, {"digest": bundle.digest, "shares": shares},
                               {MASKED: payload}, control=False, samples=trained.result.samples)
        received, _ = await link.collect(round_, plan, "unmasking the sum")
        nbytes = sum(msg.nbytes for msg in received.values())
        secure_sum, replies = await self.unmask(round_, plan, received)
        nbytes += replies

        def aggregate() -> dict[str, Any]:
            return secure.combine(trained.weights, secure_sum, plan.weights)

        return Exchanged(
            round=round_,
            received_from=secure_sum.present,
            missing=tuple(p for p in plan.expect_from if p not in secure_sum.present),
            bytes_sent=sent,
            bytes_received=nbytes,
            seconds=time.perf_counter() - started,
            aggregate=aggregate,
        )

    async def _await_keys(self, receivers: Mapping[str, RoundPlan], round_: int) -> None:
        """Ask for the receivers' key bundles we lack, and wait for them (not again for a
        receiver that never answered, until it does)."""
        lacking = [r for r, p in receivers.items() if self.directory.bundle_for(r, p.expect_from) is None]
        if not lacking:
            return
        self._send(tuple(lacking), Kind.SECAGG_KEY, round_, self.directory.advert())
        awaited = [r for r in lacking if r not in self._waited_in_vain]

        def complete() -> bool:
            return all(self.directory.bundle_for(r, receivers[r].expect_from) is not None for r in awaited)

        if awaited and not await self.directory.arrived.until(complete, self._link.round_timeout):
            self._waited_in_vain.update(
                r for r in awaited if self.directory.bundle_for(r, receivers[r].expect_from) is None
            )

    # -- receiver ----------------------------------------------------------------------------

    async def unmask(self, round_: int, plan: RoundPlan, received: Mapping[str, Message]) -> tuple[SecureSum, int]:
        """The present neighbours' sum (empty when it cannot be had), and the bytes of the
        replies it took."""
        link, secure = self._link, self.secure
        neighbours = plan.expect_from
        need = _threshold(len(neighbours))
        bundle = self.directory.own_bundle(link.name, neighbours)
        present = {p: m for p, m in received.items() if bundle is not None and m.meta.get("digest") == bundle.digest}
        dropped = tuple(p for p in neighbours if p not in present)
        secure.mark_dropped(round_, dropped)  # their late models are refused from now on
        if bundle is None or len(present) < need:
            return self._short(round_, f"{len(present)} of {len(neighbours)} masked models"), 0
        statement = set_statement(link.name, round_, bundle.digest, dropped)
        endorsements = await self.commit(round_, present, dropped, bundle, statement)
        if len(endorsements) < need:
            return self._short(round_, f"{len(endorsements)} endorsements of the dropout set"), 0
        self._reveals.open(round_, endorsements)
        for peer in endorsements:
            forwarded = {k: tags[peer] for k, tags in endorsements.items() if k != peer and peer in tags}
            self._send((peer,), Kind.REVEAL_REQUEST, round_, {"endorsements": forwarded})
        reveals = await self._reveals.gather(link.round_timeout)
        shares, pairwise = {}, {}
        for peer, message in reveals.items():
            try:
                shares[peer] = blobs_field(message.meta, "shares")
            except WireError:
                continue
            if MASKED in message.tensors:
                pairwise[peer] = message.tensors[MASKED]
        masked = {p: m.tensors[MASKED] for p, m in present.items()}
        result = secure.unmask(plan, round_, masked, shares, pairwise)
        nbytes = sum(m.nbytes for m in reveals.values())
        if result is None:
            return self._short(round_, f"{len(reveals)} reveals of {len(endorsements)} asked"), nbytes
        return result, nbytes

    def _short(self, round_: int, what: str) -> SecureSum:
        from p2pfl.privacy.secagg import SecureSum

        log.warning("node %s round %d: only %s, fewer than secure aggregation needs; keeping its own "
                    "model this round", self._link.name, round_, what)
        neighbours = self._link.plan(self._link.name, round_).expect_from
        return SecureSum(total=None, present=(), dropped=neighbours)

    async def commit(self, round_: int, present: Mapping[str, Message], dropped: tuple[str, ...],
                     bundle: Bundle, statement: bytes) -> dict[str, dict[str, bytes]]:
        """Send the signed dropout set (with the shares sealed for each) to the present
        neighbours; returns their endorsements (tags by addressee), by endorser."""
        signature = self.secure.keys.sign(statement)
        self._endorsements.open(round_, present)
        for peer in present:
            carried = {s: m.meta["shares"][peer] for s, m in present.items() if s != peer and peer in m.meta["shares"]}
            self._send((peer,), Kind.SECAGG_SET, round_,
                       {"dropped": list(dropped), "digest": bundle.digest, "sig": signature, "shares": carried})
        got = await self._endorsements.gather(self._link.round_timeout)
        endorsements = {}
        for peer, message in got.items():
            try:  # not checked further here: only each addressee can check its tag
                endorsements[peer] = blobs_field(message.meta, "tags")
            except WireError:
                continue
        return endorsements

    # -- sender side: keys, and helping a receiver unmask ------------------------------------

    def _on_key(self, message: Message) -> None:
        """A neighbour's ephemeral key: keep it, and relay our neighbourhood's keys once complete."""
        changed = self.directory.offer_advert(message.sender, message.meta)
        link = self._link
        neighbours = link.plan(link.name, max(link.inbox.current_round, message.round)).expect_from
        if message.sender not in neighbours:
            return
        relay = self.directory.relay(neighbours)
        if relay is not None:  # a new key goes to everyone; a repeated ask only to the asker
            self._send(neighbours if changed else (message.sender,), Kind.SECAGG_KEYS, message.round, relay)

    def _on_keys(self, message: Message) -> None:
        self.directory.offer_relay(message.sender, message.meta)
        self._waited_in_vain.discard(message.sender)

    def _on_set(self, message: Message) -> None:
        """Sign a receiver's dropout set: the first one for its (receiver, round), if sane."""
        receiver, round_ = message.sender, message.round
        slot = self.helping.slot(receiver, round_)
        if slot.statement is not None:
            raise WireError("set_repeated", f"{receiver} sent a second dropout set for round {round_}")
        meta = message.meta
        dropped, digest, signature = names_field(meta, "dropped"), bytes_field(meta, "digest", 32), signature_field(meta)
        sealed = blobs_field(meta, "shares")
        neighbours = self._link.plan(receiver, round_).expect_from
        if digest != slot.bundle.digest:
            raise WireError("set_refused", f"{receiver}'s set for round {round_} names keys we did not mask with")
        if self._link.name in dropped or not set(dropped) <= set(neighbours):
            raise WireError("set_refused", f"{receiver} claims {list(dropped)} dropped in round {round_}: "
                                           "we sent our model, or they are not its neighbours")
        if len(neighbours) - len(dropped) < _threshold(len(neighbours)):
            raise WireError("set_refused", f"{receiver}'s set for round {round_} leaves too few in the sum")
        statement = set_statement(receiver, round_, digest, dropped)
        if not self.secure.keys.verify(receiver, statement, signature):
            raise WireError("bad_signature", f"{receiver}'s dropout set for round {round_} is not signed by it")
        slot.statement, slot.dropped = statement, dropped
        slot.sealed = {s: b for s, b in sealed.items() if s in neighbours and s not in dropped}
        ephemeral = self.secure.ephemeral
        tags = {k: ephemeral.endorse(k, slot.bundle.keys[k], statement) for k in neighbours if k != self._link.name}
        self._send((receiver,), Kind.SECAGG_ENDORSEMENT, round_, {"tags": tags})

    def _on_reveal_request(self, message: Message) -> None:
        """Answer once per (receiver, round), for the set we endorsed, endorsed by t."""
        receiver, round_ = message.sender, message.round
        slot = self.helping.slot(receiver, round_)
        if slot.statement is None:
            raise WireError("reveal_refused", f"{receiver} asks for round {round_}'s masks before a set")
        if slot.answered:
            raise WireError("reveal_repeated", f"{receiver} asks again for round {round_}'s masks")
        tags = blobs_field(message.meta, "endorsements")
        neighbours = self._link.plan(receiver, round_).expect_from
        need, valid = _threshold(len(neighbours)), 1  # ours
        ephemeral = self.secure.ephemeral
        for endorser, tag in tags.items():
            if endorser != self._link.name and endorser in slot.bundle.keys:
                valid += int(ephemeral.check_endorsement(endorser, slot.bundle.keys[endorser], slot.statement, tag))
        if valid < need:
            raise WireError("reveal_refused", f"{receiver}'s set for round {round_} has {valid} valid "
                                              f"endorsements, {need} needed")
        slot.answered = True
        shares = self.secure.open_shares(receiver, round_, slot.bundle, slot.sealed)
        if slot.dropped:
            masks = self.secure.pairwise_reveal(receiver, round_, slot.dropped, slot.bundle)
            self._send((receiver,), Kind.REVEAL, round_, {"shares": shares}, {MASKED: masks})
        else:
            self._send((receiver,), Kind.REVEAL_SHARES, round_, {"shares": shares})
