"""Plain synchronous gossip (``mode = "sync"``): send the model, wait for the neighbours'.

Each round the node sends its trained model to the plan's peers, waits up to the round
timeout for the models the plan expects, and averages them with its own (through the
node's aggregator, ``mix`` by default). A neighbour that misses the deadline is left
out of that round's average.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from p2pfl.aggregation.base import Aggregator, mix
from p2pfl.errors import WireError
from p2pfl.learning.learner import Weights
from p2pfl.node.compression import ErrorFeedback, encode_model_off_loop
from p2pfl.node.exchange import AggregateOnce, Exchanged, Frames, Handler, Link, Trained, refuse_secure_kinds
from p2pfl.node.folding import RunningMix
from p2pfl.wire import Kind, Message, ModelSchema


class SyncGossip:
    """One synchronous gossip round: implements :class:`~p2pfl.node.exchange.Exchange`.

    Args:
        link: the node's name, plans, sending and round inbox.
        aggregator: combines the node's model with the arrived ones (in the worker).
        feedback: compresses the model sent (``compress``), or None to send it in full.
    """

    model_kind = Kind.MODEL
    barrier = True
    kind_schemas: Mapping[str, ModelSchema] | None = None

    def __init__(self, link: Link, aggregator: Aggregator, feedback: ErrorFeedback | None = None) -> None:
        self._link = link
        self._aggregator = aggregator
        self._feedback = feedback
        self._sent: tuple[int, Frames] | None = None  # this round's model frames

    def handlers(self) -> Mapping[Kind, Handler]:
        return refuse_secure_kinds()

    def admit(self, message: Message) -> None:
        if message.kind != Kind.MODEL:
            raise WireError("secagg_off", "a masked model, but secure aggregation is off here")

    def offer(self, message: Message) -> None:
        self._link.inbox.offer(message)

    def restarted(self, peer: str) -> None:
        pass  # the inbox judges its messages by round, whatever its sender's past

    def sent(self, round_: int) -> Frames | None:
        return self._sent[1] if self._sent is not None and self._sent[0] == round_ else None

    async def run(self, trained: Trained) -> Exchanged:
        link = self._link
        round_ = trained.round
        plan = link.plan(link.name, round_)
        started = time.perf_counter()
        frames = await encode_model_off_loop(
            self._feedback, sender=link.name, round=round_, samples=trained.result.samples, tensors=trained.weights,
        )
        sent = link.send(plan.send_to, frames)
        self._sent = (round_, frames)
        # the default mean is summed as the models arrive; other aggregators need them all
        running = RunningMix(link.name, trained.weights, plan.weights) if self._aggregator is mix else None
        if running is not None:
            link.inbox.take(round_, running.add)
        received, missing = await link.collect(round_, plan, "averaging")
        aggregate: Callable[[], Weights] = (
            running.result if running is not None else AggregateOnce(
                self._aggregator, link.name, trained.weights, {p: m.tensors for p, m in received.items()},
                plan.weights,
            )
        )
        return Exchanged(
            round=round_,
            received_from=tuple(received),
            missing=missing,
            bytes_sent=sent,
            bytes_received=sum(msg.nbytes for msg in received.values()),
            seconds=time.perf_counter() - started,
            aggregate=aggregate,
        )
