"""Asynchronous gossip (``mode = "async"``): no round barrier, staleness-weighted merging.

Each model carries a logical clock in the header's ``round`` field. After its local
steps a node pushes its model, tagged with its clock, and merges whatever fresh models
arrived meanwhile, never waiting. Merging advances the clock to where its neighbourhood
is: the (upper) median of its own clock and its neighbours' newest. A slow node that
takes in its fast neighbours' models so carries their progress, neither dragging them
back nor training on alone after they finish, while one neighbour lying about its clock
cannot push the node to its last round (it would stop training) unless it is the
node's only neighbour.
A model whose clock lags the receiver's by more than ``grace`` ticks, by ``s`` ticks
beyond that, counts ``(1 + s) ** -staleness`` of its mixing weight (FedAsync's hinged
polynomial discount). The grace covers the lag that is normal among nodes of different
speeds: discounting a 5x slower neighbour's every model was measured to slow a ring's
convergence (it is that neighbour's only way to share its data), while a model many
ticks old, from a node back after a long outage, must not pull the others back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from p2pfl.aggregation.base import Aggregator
from p2pfl.errors import WireError
from p2pfl.node.compression import ErrorFeedback, encode_model_off_loop
from p2pfl.node.exchange import AggregateOnce, Exchanged, Frames, Handler, Link, Trained, refuse_secure_kinds
from p2pfl.wire import Kind, Message, ModelSchema

#: Async models say so in their meta: a member configured with the other mode is told
#: apart (rejected as ``mode_mismatch``) instead of mixing clocks with rounds.
ASYNC_META = {"async": True}


class LatestModels:
    """The newest model of each neighbour not yet merged; one per neighbour at most.

    A model no newer than one already received from the same sender (a replay, or a
    message overtaken on the way) is refused, so memory stays bounded by the degree
    and an old model cannot be merged twice.
    """

    def __init__(self) -> None:
        self._fresh: dict[str, Message] = {}
        self._newest: dict[str, int] = {}  # sender -> newest clock received

    def offer(self, message: Message) -> None:
        """Keep ``message`` as its sender's freshest model.

        Raises:
            WireError: ``stale_round`` when the sender already sent a model this new.
        """
        newest = self._newest.get(message.sender)
        if newest is not None and message.round <= newest:
            raise WireError(
                "stale_round", f"model of clock {message.round} from {message.sender}, already had {newest}"
            )
        self._newest[message.sender] = message.round
        self._fresh[message.sender] = message

    def take(self) -> dict[str, Message]:
        """The fresh models (by sender, in name order), forgetting them."""
        fresh = {sender: self._fresh[sender] for sender in sorted(self._fresh)}
        self._fresh.clear()
        return fresh

    def forget(self, sender: str) -> None:
        """``sender`` restarted: its clock may start lower again."""
        self._newest.pop(sender, None)
        self._fresh.pop(sender, None)

    def pending(self) -> int:
        return len(self._fresh)

    def newest_clocks(self) -> dict[str, int]:
        """The newest clock heard from each neighbour, merged or not."""
        return dict(self._newest)


@dataclass(frozen=True)
class AsyncMerge:
    """How one asynchronous step merges: the weights for ``mix`` and the new clock."""

    weights: dict[str, float]  # own name and every merged peer; ``mix`` renormalises
    clock: int  # the logical clock of the merged model (never behind the node's own)


def staleness_weights(
    own_name: str,
    clock: int,
    fresh: Mapping[str, int],
    mixing_weights: Callable[[int], Mapping[str, float]],
    staleness: float,
    grace: int,
    neighbour_clocks: Mapping[str, int] | None = None,
) -> AsyncMerge:
    """Mixing weights for one asynchronous merge.

    Args:
        own_name: this node.
        clock: this node's clock (the model it just trained).
        fresh: peer -> clock of its fresh model.
        mixing_weights: the node's mixing weights of a given round (its schedule's plan;
            a peer's share is taken from the round its model was sent in).
        staleness: exponent ``a`` of the discount ``(1 + s) ** -a`` for a model ``s``
            clock ticks older than ours beyond the grace; 0 turns discounting off.
        grace: lag in clock ticks that is not discounted.
        neighbour_clocks: the newest clock heard from each neighbour (``fresh``'s
            clocks when not given).

    Returns:
        Peers' discounted shares and the node's own share, which keeps what fresh
        peers did not take (at least its nominal share), and the merged clock.
    """
    nominal = mixing_weights(clock)
    weights: dict[str, float] = {}
    for peer, peer_clock in fresh.items():
        share = mixing_weights(peer_clock).get(peer, nominal.get(peer, 0.0))
        lag = max(0, clock - peer_clock - grace)
        weights[peer] = share * (1.0 + lag) ** -staleness
    weights[own_name] = max(1.0 - sum(weights.values()), nominal.get(own_name, 0.0))
    known = sorted([clock, *(fresh if neighbour_clocks is None else neighbour_clocks).values()])
    return AsyncMerge(weights=weights, clock=max(clock, known[len(known) // 2]))


class AsyncGossip:
    """One asynchronous step's exchange: implements :class:`~p2pfl.node.exchange.Exchange`.

    Pushes the trained model tagged with the node's clock and merges whatever fresh
    models arrived meanwhile, never waiting; the exchanged "round" is the merged clock.

    Args:
        link: the node's name, plans and sending (its inbox is not used).
        aggregator: combines the node's model with the fresh ones (in the worker).
        staleness: exponent of the staleness discount (see :func:`staleness_weights`).
        grace: clock ticks of lag that are not discounted.
        feedback: compresses the model sent (``compress``), or None to send it in full.
    """

    model_kind = Kind.MODEL
    barrier = False
    kind_schemas: Mapping[str, ModelSchema] | None = None

    def __init__(
        self, link: Link, aggregator: Aggregator, *, staleness: float, grace: int,
        feedback: ErrorFeedback | None = None,
    ) -> None:
        self._link = link
        self._feedback = feedback
        self._aggregator = aggregator
        self._staleness = staleness
        self._grace = grace
        self.fresh = LatestModels()  # each neighbour's newest unmerged model

    def handlers(self) -> Mapping[Kind, Handler]:
        return refuse_secure_kinds()

    def admit(self, message: Message) -> None:
        if message.kind != Kind.MODEL:
            raise WireError("secagg_off", "a masked model, but secure aggregation is off here")

    def offer(self, message: Message) -> None:
        self.fresh.offer(message)

    def restarted(self, peer: str) -> None:
        self.fresh.forget(peer)  # its clock restarts from its checkpoint

    def sent(self, round_: int) -> Frames | None:
        return None  # no round barrier: nobody catches up into a round

    async def run(self, trained: Trained) -> Exchanged:
        link = self._link
        clock = trained.round
        started = time.perf_counter()
        plan = link.plan(link.name, clock)
        frames = await encode_model_off_loop(
            self._feedback, sender=link.name, round=clock, samples=trained.result.samples, tensors=trained.weights,
            meta=ASYNC_META,
        )
        sent = link.send(plan.send_to, frames)
        fresh = self.fresh.take()
        merge = staleness_weights(
            link.name, clock, {peer: msg.round for peer, msg in fresh.items()},
            lambda r: link.plan(link.name, r).weights,
            self._staleness, self._grace, self.fresh.newest_clocks(),
        )
        tensors = {peer: msg.tensors for peer, msg in fresh.items()}
        return Exchanged(
            round=merge.clock,
            received_from=tuple(fresh),
            missing=(),
            bytes_sent=sent,
            bytes_received=sum(msg.nbytes for msg in fresh.values()),
            seconds=time.perf_counter() - started,
            aggregate=AggregateOnce(self._aggregator, link.name, trained.weights, tensors, merge.weights),
        )
