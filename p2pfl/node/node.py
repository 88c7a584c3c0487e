"""A gossip-learning node: train, send, collect, mix, evaluate, round after round.

The same class runs one organisation's long-lived process and each of the many nodes of
a local simulation; only who builds it differs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from p2pfl import wire
from p2pfl.errors import NodeError, WireError
from p2pfl.learning.learner import EvalResult, Learner, TrainResult, Weights
from p2pfl.node.inbox import RoundInbox
from p2pfl.node.mixing import mix
from p2pfl.topology.schedule import GossipSchedule
from p2pfl.transport import Incoming, ZmqTransport

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class NodeConfig:
    """How one node runs its rounds.

    Attributes:
        name: this node's name; peers know it by this and it is the header's sender.
        rounds: rounds to run (the node stops after round ``rounds - 1``).
        round_timeout: seconds to wait for neighbours' models after sending one's own;
            whoever has not arrived by then is left out of this round's average.
        max_rounds_ahead: messages for rounds further ahead than this are rejected.
        start_round: first round to run (a resumed node starts after its checkpoint).
        limits: size bounds for incoming messages.
    """

    name: str
    rounds: int
    round_timeout: float = 30.0
    max_rounds_ahead: int = 4
    start_round: int = 0
    limits: wire.WireLimits = wire.WireLimits()


@dataclass(frozen=True)
class RoundMetrics:
    """What a node measured in one round."""

    node: str
    round: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    bytes_sent: int
    bytes_received: int
    round_seconds: float
    received_from: tuple[str, ...]
    missing: tuple[str, ...]


@dataclass
class NodeStats:
    """Running counters of a node; ``rejected`` counts refused messages by reason."""

    rejected: Counter[str] = field(default_factory=Counter)
    messages_accepted: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    sends_dropped: int = 0


@dataclass(frozen=True)
class _WorkerStep:
    """What one worker job produced: the finished round's mix, the next round's training."""

    mixed: Weights | None
    evaluation: EvalResult | None
    trained: TrainResult | None
    weights: Weights | None  # snapshot after training, to send
    mix_seconds: float
    train_seconds: float


@dataclass(frozen=True)
class _Exchange:
    """One round's communication: what was sent and what arrived in time."""

    own: Weights
    received: Mapping[str, Mapping[str, Any]]
    weights: Mapping[str, float]
    bytes_sent: int
    bytes_received: int
    missing: tuple[str, ...]
    seconds: float


class RoundObserver(Protocol):
    """Told about every finished round (a simulation records metrics through it)."""

    def on_round_end(self, metrics: RoundMetrics, weights: Weights) -> None: ...


class Node:
    """One participant of decentralized training.

    Use as an async context manager: entering binds the socket and starts receiving;
    leaving stops every task the node owns and closes its sockets.

    Args:
        config: round settings and the node's name.
        learner: local training (runs in a worker thread, never on the event loop).
        schedule: whom to send to and how to weight what arrives, per round.
        transport: the node's sockets (bound on enter).
        executor: worker for training; a simulation shares one across nodes. ``None``
            gives the node a private single-thread worker.
        observer: optional callback after every round.
    """

    def __init__(
        self,
        config: NodeConfig,
        learner: Learner,
        schedule: GossipSchedule,
        transport: ZmqTransport,
        *,
        executor: Executor | None = None,
        observer: RoundObserver | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.learner = learner
        self.schedule = schedule
        self.transport = transport
        self.observer = observer
        self.stats = NodeStats()
        self.history: list[RoundMetrics] = []
        self._executor = executor
        self._own_executor: ThreadPoolExecutor | None = None
        self._inbox = RoundInbox(config.max_rounds_ahead)
        self._addresses: dict[str, str] = {}
        self._schema: Mapping[str, wire.TensorSpec] = wire.schema_of(learner.get_weights())
        self._tasks: asyncio.TaskGroup | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._activity: asyncio.Condition | None = None
        self.endpoint: str | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        self.endpoint = self.transport.start()
        if self._executor is None:
            self._own_executor = ThreadPoolExecutor(1, thread_name_prefix=f"p2pfl-{self.name}")
            self._executor = self._own_executor
        self._activity = asyncio.Condition()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._receiver = self._tasks.create_task(self._receive_loop(), name=f"{self.name}-recv")
        log.debug("node %s listening on %s", self.name, self.endpoint)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            if self._receiver is not None:
                self._receiver.cancel()
            if self._tasks is not None:
                await self._tasks.__aexit__(*exc_info)
        finally:
            self.transport.close()
            if self._own_executor is not None:
                self._own_executor.shutdown(wait=True)
            self._tasks = self._receiver = None

    async def wait_until(self, predicate: Callable[[NodeStats], bool], timeout: float) -> None:
        """Wait until ``predicate(self.stats)`` holds after some incoming message.

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
        """
        if self._activity is None:
            raise NodeError(f"node {self.name} is not started: use 'async with node:'")
        activity = self._activity
        async with asyncio.timeout(timeout), activity:
            await activity.wait_for(lambda: predicate(self.stats))

    def add_peer(self, name: str, endpoint: str) -> None:
        """Tell the node where ``name`` listens; the link opens when first needed."""
        self._addresses[name] = endpoint

    # -- rounds ------------------------------------------------------------------------

    async def run(self) -> list[RoundMetrics]:
        """Run rounds ``start_round .. rounds-1``; returns this run's metrics."""
        if self._tasks is None:
            raise NodeError(f"node {self.name} is not started: use 'async with node:'")
        first = len(self.history)
        rounds = range(self.config.start_round, self.config.rounds)
        if rounds:
            step = await self._in_worker(self._worker_step, None, rounds[0])
            for round_ in rounds:
                exchange = await self._exchange(round_, step)
                upcoming = round_ + 1 if round_ + 1 in rounds else None
                # One hand-off to the worker per round: mixing and evaluating this round
                # and training the next are one job, so loop and worker meet once.
                next_step = await self._in_worker(self._worker_step, exchange, upcoming)
                metrics = self._round_metrics(round_, step, exchange, next_step)
                self.history.append(metrics)
                if self.observer is not None and next_step.mixed is not None:
                    self.observer.on_round_end(metrics, next_step.mixed)
                step = next_step
        return self.history[first:]

    async def _exchange(self, round_: int, step: _WorkerStep) -> _Exchange:
        """Send this round's model to the plan's peers and collect theirs."""
        assert step.trained is not None and step.weights is not None
        plan = self.schedule.plan(self.name, round_)
        started = time.perf_counter()
        frames = wire.encode(
            kind="model", sender=self.name, round=round_,
            samples=step.trained.samples, tensors=step.weights,
        )
        sent = self._send_to(plan.send_to, frames)
        received = await self._inbox.collect(round_, plan.expect_from, self.config.round_timeout)
        missing = tuple(p for p in plan.expect_from if p not in received)
        if missing:
            log.warning(
                "node %s round %d: no model from %s within %.1fs; averaging without them",
                self.name, round_, ", ".join(missing), self.config.round_timeout,
            )
        return _Exchange(
            own=step.weights,
            received={peer: msg.tensors for peer, msg in received.items()},
            weights=plan.weights,
            bytes_sent=sent,
            bytes_received=sum(msg.nbytes for msg in received.values()),
            missing=missing,
            seconds=time.perf_counter() - started,
        )

    def _worker_step(self, exchange: _Exchange | None, train_round: int | None) -> _WorkerStep:
        """Runs in the worker: finish a round (mix, evaluate), then train the next one."""
        started = time.perf_counter()
        mixed = evaluation = None
        if exchange is not None:
            mixed = mix(self.name, exchange.own, exchange.received, exchange.weights)
            self.learner.set_weights(mixed)
            evaluation = self.learner.evaluate()
        mixed_at = time.perf_counter()
        trained = weights = None
        if train_round is not None:
            trained = self.learner.train(train_round)
            # A fresh snapshot: its frames may sit in a slow peer's queue while we train on.
            weights = self.learner.get_weights()
        return _WorkerStep(
            mixed=mixed, evaluation=evaluation, trained=trained, weights=weights,
            mix_seconds=mixed_at - started, train_seconds=time.perf_counter() - mixed_at,
        )

    def _round_metrics(
        self, round_: int, step: _WorkerStep, exchange: _Exchange, next_step: _WorkerStep
    ) -> RoundMetrics:
        assert step.trained is not None and next_step.evaluation is not None
        return RoundMetrics(
            node=self.name,
            round=round_,
            train_loss=step.trained.loss,
            test_loss=next_step.evaluation.loss,
            test_accuracy=next_step.evaluation.accuracy,
            bytes_sent=exchange.bytes_sent,
            bytes_received=exchange.bytes_received,
            round_seconds=step.train_seconds + exchange.seconds + next_step.mix_seconds,
            received_from=tuple(exchange.received),
            missing=exchange.missing,
        )

    def _send_to(self, peers: tuple[str, ...], frames: list[bytes | memoryview]) -> int:
        """Queue ``frames`` for each peer; returns the bytes actually queued."""
        size = sum(len(f) for f in frames)
        sent = 0
        for peer in peers:
            endpoint = self._addresses.get(peer)
            if endpoint is None:
                log.error("node %s: no address for peer %s; not sending to it", self.name, peer)
                continue
            self.transport.connect(peer, endpoint)
            if self.transport.send(peer, frames):
                sent += size
            else:
                self.stats.sends_dropped += 1
                log.warning("node %s: queue to %s is full (down or far behind); dropped", self.name, peer)
        self.stats.bytes_sent += sent
        return sent

    async def _in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    # -- receiving ---------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            incoming = await self.transport.recv()
            self.stats.bytes_received += incoming.nbytes
            try:
                self._accept(incoming)
            except WireError as exc:
                self._count_rejection(exc.reason, str(exc))
            except Exception:  # a peer must never be able to stop this loop
                self._count_rejection("internal_error", "unexpected error handling a message")
                log.exception("node %s: error handling a message; message dropped", self.name)
            activity = self._activity
            if activity is not None and activity._waiters:  # only tests and tools wait
                async with activity:
                    activity.notify_all()

    def _accept(self, incoming: Incoming) -> None:
        message = wire.decode(incoming.frames, schema=self._schema, limits=self.config.limits)
        if message.sender == self.name:
            raise WireError("unknown_sender", "message claims to come from this node itself")
        if message.round >= self.config.rounds:
            raise WireError("future_round", f"round {message.round} >= last round {self.config.rounds}")
        if message.round >= self._inbox.current_round:
            plan = self.schedule.plan(self.name, message.round)
            if message.sender not in plan.weights:
                raise WireError(
                    "unknown_sender", f"{message.sender!r} is not a neighbour in round {message.round}"
                )
        self._inbox.offer(message)
        self.stats.messages_accepted += 1

    def _count_rejection(self, reason: str, detail: str) -> None:
        self.stats.rejected[reason] += 1
        count = self.stats.rejected[reason]
        # Log the first few of each reason, then sparsely: a flood must not flood the log.
        if count <= 5 or count % 1000 == 0:
            log.warning("node %s rejected a message (%s, #%d): %s", self.name, reason, count, detail)
