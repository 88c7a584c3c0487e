"""The seam between a node and the way it exchanges models in a round.

An :class:`Exchange` does one round's communication: it sends what the round sends,
collects what arrives and hands back how to aggregate it. Plain synchronous gossip
(:mod:`p2pfl.node.gossip`), asynchronous gossip (:mod:`p2pfl.node.gossip_async`), CHOCO
gossip (:mod:`p2pfl.node.gossip_choco`) and secure aggregation
(:mod:`p2pfl.privacy.secagg_exchange`) are the four. Each runs
against a :class:`Link`, the little of its node it may use (its name, the schedule's
plans, sending, the round inbox), so a test drives one with a fake link and no sockets.

The split follows hivemind's averaging package: the node is the lifecycle (its
averager), an exchange is one round's protocol (its allreduce), the schedule says who
meets whom (its matchmaking).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from p2pfl.aggregation.base import Aggregator
from p2pfl.errors import NodeError, WireError
from p2pfl.node.inbox import RoundInbox
from p2pfl.topology.schedule import RoundPlan
from p2pfl.wire import Kind, Message, ModelSchema
from p2pfl.wire.kinds import SECAGG_CONTROL_KINDS

if TYPE_CHECKING:  # the records stay importable without torch
    from p2pfl.learning.learner import TrainResult, Weights

#: The frames of one message, as :func:`p2pfl.wire.encode` returns them.
Frames = list[bytes | memoryview]
#: What a node does with an accepted message of one kind.
Handler = Callable[[Message], None]


@dataclass(frozen=True)
class Trained:
    """One round's local training, ready to send."""

    round: int
    result: TrainResult
    weights: Weights  # a snapshot: its frames may sit in a slow peer's queue while training goes on
    seconds: float  # training and snapshotting


@dataclass(frozen=True)
class Exchanged:
    """One round's communication: who is in the aggregate, what it cost, how to get it."""

    round: int  # the round it finishes (asynchronous gossip: the merged clock)
    received_from: tuple[str, ...]  # the neighbours in the aggregate, in name order
    missing: tuple[str, ...]  # expected neighbours left out
    bytes_sent: int
    bytes_received: int
    seconds: float
    #: the round's new model from the node's own and what arrived; runs in the worker
    #: thread (it is the heavy part), so it must not touch the event loop's state
    aggregate: Callable[[], Weights]


class AggregateOnce:
    """``aggregator(own_name, own, received, weights)`` as an :attr:`Exchanged.aggregate`
    that forgets ``received`` once called: the neighbours' models (whole received frames
    over tcp) are freed as soon as they are mixed, not when the round's records go.

    Raises:
        NodeError: called a second time.
    """

    def __init__(
        self, aggregator: Aggregator, own_name: str, own: Weights,
        received: Mapping[str, Mapping[str, np.ndarray]], weights: Mapping[str, float],
    ) -> None:
        self._aggregator = aggregator
        self._own_name = own_name
        self._own = own
        self._received: Mapping[str, Mapping[str, np.ndarray]] | None = received
        self._weights = weights

    def __call__(self) -> Weights:
        received, self._received = self._received, None
        if received is None:
            raise NodeError(f"node {self._own_name}: a round's models are aggregated once")
        return self._aggregator(self._own_name, self._own, received, self._weights)


class Link(Protocol):
    """What an exchange may use of its node."""

    @property
    def name(self) -> str: ...

    @property
    def round_timeout(self) -> float: ...

    @property
    def inbox(self) -> RoundInbox:
        """Accepted models of the rounds with a barrier, until collected."""
        ...

    def plan(self, node: str, round_: int) -> RoundPlan:
        """``node``'s plan for ``round_`` under the node's current schedule."""
        ...

    def send(self, peers: Sequence[str], frames: Frames, *, control: bool = False) -> int:
        """Queue ``frames`` for each of ``peers``; returns the bytes queued. ``control``
        traffic (not a round's models) is counted apart and dropped silently when a
        queue is full."""
        ...

    async def collect(
        self, round_: int, plan: RoundPlan, going_on: str
    ) -> tuple[dict[str, Message], tuple[str, ...]]:
        """Wait for the plan's models of ``round_`` from the inbox, not for neighbours
        thought down; returns what arrived by sender and who is missing. ``going_on``
        completes the log line about a missing one ("averaging without it")."""
        ...


class Exchange(Protocol):
    """One way of exchanging models in a round."""

    #: the kind of message that carries this exchange's models
    model_kind: Kind
    #: rounds wait for each other: a node that fell behind catches up first, and answers
    #: the neighbours that do; asynchronous gossip never waits
    barrier: bool
    #: tensor schemas of the kinds whose tensors are not the model (for decoding)
    kind_schemas: Mapping[str, ModelSchema] | None

    def handlers(self) -> Mapping[Kind, Handler]:
        """Handlers of the further kinds this exchange owns; run after the node checked
        that the sender is a neighbour and the round plausible."""
        ...

    def admit(self, message: Message) -> None:
        """First look at a message of either model kind, before the node's own checks.

        Raises:
            WireError: a kind this exchange does not take, or a sender it refuses.
        """
        ...

    def offer(self, message: Message) -> None:
        """Keep an accepted model for a round to collect (raises WireError to refuse)."""
        ...

    def restarted(self, peer: str) -> None:
        """``peer`` greeted anew: it restarted, forget what it sent before."""
        ...

    def sent(self, round_: int) -> Frames | None:
        """This node's model message of ``round_``, if it can be sent again as it is (to a
        neighbour that catches up into that round)."""
        ...

    async def run(self, trained: Trained) -> Exchanged:
        """Send ``trained``'s model as the round requires and collect the neighbours'."""
        ...


class ExchangeBuilder(Protocol):
    """Builds a node's exchange for it (``Node(secure=...)``).

    Secure aggregation lives above the node (in :mod:`p2pfl.privacy`), so the node takes
    any object that can build its exchange, and never imports it.
    """

    def build_exchange(self, link: Link, *, mode: str, aggregator: Aggregator, schema: ModelSchema) -> Exchange:
        """The exchange of the node behind ``link``; raises NodeError if ``mode`` or
        ``aggregator`` cannot work with it."""
        ...


def refuse_secure_kinds() -> dict[Kind, Handler]:
    """Handlers that refuse secure aggregation's control kinds, for the exchanges without it."""

    def refuse(message: Message) -> None:
        raise WireError("secagg_off", f"a {message.kind} message, but secure aggregation is off here")

    return dict.fromkeys(SECAGG_CONTROL_KINDS, refuse)
