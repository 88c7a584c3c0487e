"""Secure aggregation's round: masked models out, the sum in, dropped neighbours' masks revealed.

One round, as receiver ``i`` and as a neighbour of others (the arithmetic and the
threat model are in :mod:`p2pfl.privacy.secagg`):

1. send each receiver in the plan its own masked, weighted model ("masked-model");
2. collect the expected neighbours' masked models until the round timeout;
3. if some are missing, declare them dropped (their late models are refused from now
   on) and ask every present neighbour for its masks with them ("reveal-request", the
   dropped named in ``meta.dropped``); a neighbour answers with a "reveal";
4. a present neighbour that sends no reveal is dropped too and the request repeated,
   until every asked one answered or fewer than two neighbours would stay in the sum
   (then the node averages without neighbours this round);
5. unmask the sum and combine it with the node's own model, in the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from p2pfl import wire
from p2pfl.errors import WireError
from p2pfl.node.arrivals import Arrivals
from p2pfl.node.exchange import Exchanged, Frames, Handler, Link, Trained
from p2pfl.wire import Kind, Message, ModelSchema

if TYPE_CHECKING:
    from p2pfl.privacy.secagg import SecureAggregation

log = logging.getLogger(__name__)

MASKED = "masked"  # the one flat uint64 tensor of "masked-model" and "reveal" messages
MIN_REMAINING = 2  # a reveal must leave at least this many neighbours in the sum


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
        self._reveals = RevealCollector()
        self.kind_schemas: Mapping[str, ModelSchema] | None = secure.wire_schemas()

    def handlers(self) -> Mapping[Kind, Handler]:
        return {Kind.REVEAL_REQUEST: self._on_reveal_request, Kind.REVEAL: self._reveals.offer}

    def admit(self, message: Message) -> None:
        """Only masked models are taken, and only from peers not yet declared dropped."""
        if message.kind == Kind.MODEL:
            raise WireError("secagg_plain", "a plain model, but this node runs secure aggregation")
        self.secure.check_not_dropped(message.sender, message.round)

    def offer(self, message: Message) -> None:
        self._link.inbox.offer(message)

    def restarted(self, peer: str) -> None:
        pass  # the inbox judges its messages by round, whatever its sender's past

    def sent(self, round_: int) -> Frames | None:
        return None  # each receiver got its own masked model: none can be resent to another

    async def run(self, trained: Trained) -> Exchanged:
        """One masked, weighted model per receiver; dropped neighbours' masks are revealed
        by the present ones and removed."""
        link, secure = self._link, self.secure
        round_ = trained.round
        plan = link.plan(link.name, round_)
        started = time.perf_counter()
        flat = secure.flatten(trained.weights)
        sent = 0
        for receiver in plan.send_to:
            payload = secure.masked_for(link.plan(receiver, round_), round_, flat)
            frames = wire.encode(
                kind=Kind.MASKED_MODEL, sender=link.name, round=round_,
                samples=trained.result.samples, tensors={MASKED: payload},
            )
            sent += link.send((receiver,), frames)
        received, missing = await link.collect(round_, plan, "unmasking the sum")
        masked = {peer: msg.tensors[MASKED] for peer, msg in received.items()}
        dropped = set(missing)
        reveals: dict[str, Any] = {}
        nbytes = sum(msg.nbytes for msg in received.values())
        while dropped and masked:
            secure.mark_dropped(round_, dropped)  # their late models are refused from now on
            if len(plan.expect_from) - len(dropped) < MIN_REMAINING:
                log.warning("node %s round %d: fewer than 2 neighbours left in the sum; "
                            "averaging without neighbours", link.name, round_)
                masked = {}
                break
            request = wire.encode(
                kind=Kind.REVEAL_REQUEST, sender=link.name, round=round_, samples=0, tensors={},
                meta={"dropped": sorted(dropped)},
            )
            self._reveals.open(round_, masked)
            link.send(tuple(masked), request, control=True)
            got = await self._reveals.gather(link.round_timeout)
            silent = set(masked) - set(got)
            reveals = {peer: msg.tensors[MASKED] for peer, msg in got.items()}
            nbytes += sum(msg.nbytes for msg in got.values())
            if not silent:
                break
            log.warning("node %s round %d: %s sent no reveal; leaving them out too",
                        link.name, round_, ", ".join(sorted(silent)))
            dropped |= silent
            masked = {p: v for p, v in masked.items() if p not in silent}
        secure_sum = secure.unmask(masked, reveals, dropped)

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

    def _on_reveal_request(self, message: Message) -> None:
        dropped = message.meta.get("dropped")
        if not isinstance(dropped, list) or not all(isinstance(d, str) for d in dropped):
            raise WireError("bad_header", "a reveal request names its dropped peers in meta.dropped")
        plan = self._link.plan(message.sender, message.round)
        masks = self.secure.reveal_for(plan, message.round, dropped)  # raises reveal_refused
        frames = wire.encode(
            kind=Kind.REVEAL, sender=self._link.name, round=message.round, samples=0, tensors={MASKED: masks}
        )
        self._link.send((message.sender,), frames, control=True)


class RevealCollector:
    """Holds the reveals a receiver asked for in its current round."""

    def __init__(self) -> None:
        self._round: int | None = None
        self._expected: set[str] = set()
        self._got: dict[str, Message] = {}
        self._arrived = Arrivals()

    def offer(self, message: Message) -> None:
        if message.round != self._round or message.sender not in self._expected:
            raise WireError("unexpected_reveal", f"reveal from {message.sender} for round {message.round} not asked for")
        self._got[message.sender] = message
        self._arrived.notify()

    def open(self, round_: int, expected: Iterable[str]) -> None:
        """Expect reveals of ``round_`` from ``expected`` (call before sending the requests)."""
        self._round, self._expected, self._got = round_, set(expected), {}

    async def gather(self, timeout: float) -> dict[str, Message]:
        """Wait for every expected reveal, or ``timeout``; then close the request."""
        await self._arrived.until(lambda: self._expected <= self._got.keys(), timeout)
        got = dict(self._got)
        self._round, self._expected, self._got = None, set(), {}
        return got
