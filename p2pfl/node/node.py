"""A gossip-learning node: train, send, collect, mix, evaluate, round after round.

The same class runs one organisation's long-lived process and each of the many nodes of
a local simulation; only who builds it differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from p2pfl import wire
from p2pfl.errors import NodeError, TransportError, WireError
from p2pfl.learning.learner import EvalResult, Learner, TrainResult, Weights
from p2pfl.node.catchup import CatchUp, average
from p2pfl.node.gossip_async import LatestModels, staleness_weights
from p2pfl.node.inbox import RoundInbox
from p2pfl.node.mixing import Aggregator, all_finite, mix
from p2pfl.node.peers import PeerPresence, PeerTracker, StartCondition
from p2pfl.node.records import NodeConfig, NodeStats, RoundMetrics, RoundObserver, limits_for
from p2pfl.topology.schedule import GossipSchedule, RoundPlan
from p2pfl.transport import Incoming, ZmqTransport

if TYPE_CHECKING:
    from p2pfl.privacy.secagg import SecureAggregation, SecureSum

log = logging.getLogger(__name__)

@runtime_checkable
class StagedExecutor(Protocol):
    """An executor that also takes a job in stages: ``stages[-1](... stages[0](value))``.

    A simulation's shared worker (:class:`~p2pfl.simulation.worker.PhasedWorker`) runs
    every node's first stage before any node's second one, and so on; a node given any
    other executor submits its stages as one job.
    """

    def submit_stages(
        self, loop: asyncio.AbstractEventLoop, value: Any, stages: Sequence[Callable[[Any], Any]]
    ) -> asyncio.Future[Any]: ...

#: Async models say so in their meta: a member configured with the other mode is told
#: apart (rejected as ``mode_mismatch``) instead of mixing clocks with rounds.
ASYNC_META = {"async": True}

# the value types live in records.py; users import them from here (or from p2pfl)
__all__ = ["Node", "NodeConfig", "NodeStats", "RoundMetrics", "RoundObserver"]


@dataclass(frozen=True)
class _WorkerStep:
    """What one worker job produced: the finished round's mix, the next round's training."""

    mixed: Weights | None  # the finished round's averaged weights
    metrics: RoundMetrics | None  # the finished round's metrics
    trained: TrainResult | None
    weights: Weights | None  # snapshot after training, to send
    train_seconds: float


@dataclass
class _StepWork:
    """A worker step in the making: each stage reads what the ones before it left."""

    previous: _WorkerStep | None  # the step whose round is being finished
    exchange: _Exchange | None  # that round's communication
    adopt: Weights | None  # weights to take over instead (catching up)
    train_round: int | None  # the round to train next, if any
    mixed: Weights | None = None
    metrics: RoundMetrics | None = None
    start: Weights | None = None  # what the training started from: restored if it fails
    trained: TrainResult | None = None
    finish_seconds: float = 0.0  # mixing and evaluating
    train_seconds: float = 0.0  # training and snapshotting


@dataclass(frozen=True)
class _Exchange:
    """One round's communication: what was sent and what arrived in time."""

    round: int
    own: Weights
    received: Mapping[str, Mapping[str, Any]]
    weights: Mapping[str, float]
    bytes_sent: int
    bytes_received: int
    missing: tuple[str, ...]
    seconds: float
    secure_sum: SecureSum | None = None  # secure aggregation: the unmasked sum of the present


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
        presence: optional live membership (MQTT discovery); a neighbour it reports
            offline is not waited for.
        checkpoint: optional ``f(metrics)`` called in the worker right after a round is
            averaged and evaluated, while the learner holds the weights the next round
            starts from (a deployment records the round and saves its checkpoint there).
        aggregator: how received models are combined with the node's own; weighted
            averaging with the mixing weights (``mix``) by default.
        secure: optional secure aggregation (:mod:`p2pfl.privacy.secagg`): models travel
            masked and the node learns only the weighted sum of its neighbours' models.
            Needs the default ``mix`` aggregator and neighbourhoods of at least 3.
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
        presence: PeerPresence | None = None,
        checkpoint: Callable[[RoundMetrics], None] | None = None,
        aggregator: Aggregator = mix,
        secure: SecureAggregation | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.learner = learner
        self.schedule = schedule
        self.transport = transport
        self.observer = observer
        self.presence = presence
        self._reported_offline: dict[str, float] = {}  # when presence first said so
        self._presence_since = 0.0  # when this node subscribed to presence
        self.checkpoint = checkpoint
        self.aggregator = aggregator
        self.peers = PeerTracker(schedule.peers(config.name))
        self.stats = NodeStats()
        self.history: list[RoundMetrics] = []
        self._executor = executor
        self._own_executor: ThreadPoolExecutor | None = None
        self._staged: StagedExecutor | None = None
        self._inbox = RoundInbox(config.max_rounds_ahead)
        # a node resumed from a checkpoint listens before it runs: judge what arrives by
        # the round it resumes at, not round 0 (or its neighbours' models look too far ahead)
        self._inbox.advance(config.start_round)
        self._fresh = LatestModels()  # async mode: each neighbour's newest unmerged model
        self._addresses: dict[str, str] = {}
        self._replied: dict[tuple[str, str], float] = {}  # (peer, kind) -> when we last answered
        self._blocked: set[str] = set()  # peers whose queue was full at the last send
        self._catch_up = CatchUp()
        self._latest: tuple[int, Weights] | None = None  # (round it starts, averaged weights)
        self._sent: tuple[int, list[bytes | memoryview]] | None = None  # this round's model frames
        weights = learner.get_weights()
        self._schema: Mapping[str, wire.TensorSpec] = wire.schema_of(weights)
        self._limits = limits_for(weights, config)
        # libzmq buffers whatever frame size a stranger declares, even mid-handshake
        transport.limit_message_size(self._limits.max_message_bytes)
        self.secure = secure
        self._kind_schemas: Mapping[str, Mapping[str, wire.TensorSpec]] | None = None
        if secure is not None and config.mode == "async":
            raise NodeError(
                f"node {self.name}: secure aggregation needs the round barrier (masks cancel only "
                "when the same neighbours' models of the same round are summed): use mode sync"
            )
        if secure is not None:
            if aggregator is not mix:
                raise NodeError(
                    f"node {self.name}: secure aggregation gives the node only the sum of its "
                    "neighbours' models; robust aggregators (median, Krum, trimmed mean, clipped "
                    "gossip) need the individual models: use the default weighted mean"
                )
            from p2pfl.privacy.secagg import RevealCollector

            secure.bind(self._schema)
            self._kind_schemas = secure.wire_schemas()
            self._reveals = RevealCollector()
        self._started = False
        self._stat_waiters: list[tuple[Callable[[NodeStats], bool], asyncio.Future[None]]] = []
        self.endpoint: str | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        self.endpoint = self.transport.start()
        if self._executor is None:
            self._own_executor = ThreadPoolExecutor(1, thread_name_prefix=f"p2pfl-{self.name}")
            self._executor = self._own_executor
        self._staged = self._executor if isinstance(self._executor, StagedExecutor) else None
        if self.presence is not None:
            self._presence_since = time.monotonic()
            self.presence.subscribe(self._on_presence_change)
        # Messages are handled straight from the socket's reader callback: no task of
        # its own to own, and no task wake-up per message.
        self.transport.listen(self._on_incoming, on_rejection=self._on_rejected_connection)
        self._started = True
        log.debug("node %s listening on %s", self.name, self.endpoint)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close(graceful=True)

    async def close(self, *, graceful: bool = True) -> None:
        """Stop the node's tasks and close its sockets (idempotent).

        ``graceful`` first tells the neighbours not to wait for it ("bye"); a simulated
        crash closes without a word.
        """
        if not self._started:
            return
        self._started = False
        try:
            if graceful:
                bye = wire.encode(kind="bye", sender=self.name, round=self._inbox.current_round,
                                  samples=0, tensors={})
                self._send_to(tuple(self._addresses), bye, control=True)
        finally:
            self.transport.close()
            if self._own_executor is not None:
                self._own_executor.shutdown(wait=True)

    async def wait_until(self, predicate: Callable[[NodeStats], bool], timeout: float) -> None:
        """Wait until ``predicate(self.stats)`` holds after some incoming message.

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
        """
        if not self._started:
            raise NodeError(f"node {self.name} is not started: use 'async with node:'")
        if predicate(self.stats):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, waiter)
        self._stat_waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        finally:
            self._stat_waiters.remove(entry)

    async def wait_until_ready(
        self, condition: StartCondition, *, hello_interval: float = 1.0, log_every: float = 10.0
    ) -> None:
        """Greet the neighbours until ``condition`` holds (who is up, or a start time).

        Hellos are resent with exponential backoff (up to 8x ``hello_interval``) to those
        not heard from yet; whom the node still waits for is logged every ``log_every`` s.
        """
        if not self._started:
            raise NodeError(f"node {self.name} is not started: use 'async with node:'")
        interval = hello_interval
        last_log = time.monotonic()
        while not condition.holds(len(self.peers.present()), len(self.peers.peers)):
            self._greet(self.peers.absent(), reply=False)
            if time.monotonic() - last_log >= log_every:
                log.info(
                    "node %s waiting to start (%s): no word yet from %s",
                    self.name, condition, ", ".join(self.peers.absent()) or "nobody",
                )
                last_log = time.monotonic()
            await self.peers.wait_for_news(interval)
            interval = min(interval * 2, hello_interval * 8)
        log.info("node %s: start condition %s holds; present: %s",
                 self.name, condition, ", ".join(sorted(self.peers.present())) or "none")

    def _greet(self, peers: list[str], *, reply: bool) -> None:
        frames = wire.encode(
            kind="hello", sender=self.name, round=self._inbox.current_round, samples=0,
            tensors={}, meta={"reply": reply},
        )
        self._send_to(tuple(peers), frames, control=True)

    def update_membership(
        self, schedule: GossipSchedule, endpoints: Mapping[str, str], *, relink: Iterable[str] = ()
    ) -> None:
        """Switch to a new schedule (a member joined or was revoked); takes effect at once.

        Links to peers that are no longer neighbours are closed, and so are the links
        to ``relink`` (peers whose key changed: the next send reconnects with the new
        key); new neighbours are reached at ``endpoints``.
        """
        self.schedule = schedule
        peers = schedule.peers(self.name)
        for name in peers:
            if name in endpoints:
                self._addresses[name] = endpoints[name]
        for gone in (set(self.transport.peers) - set(peers)) | set(relink):
            self.transport.disconnect(gone)
        self.peers.set_peers(peers)
        self._inbox.poke()  # a waiting round re-checks whom it still expects
        log.info("node %s: neighbours are now %s", self.name, ", ".join(peers) or "none")

    def add_peer(self, name: str, endpoint: str) -> None:
        """Tell the node where ``name`` listens; the link opens when first needed."""
        self._addresses[name] = endpoint

    # -- rounds ------------------------------------------------------------------------

    async def run(self, until_round: int | None = None) -> list[RoundMetrics]:
        """Run rounds ``start_round .. rounds-1`` (or up to ``until_round`` included);
        returns this run's metrics.

        A node that finds its neighbours two or more rounds ahead (it was down, or cut
        off) first catches up: it adopts their latest averaged model and their round.
        """
        if not self._started:
            raise NodeError(f"node {self.name} is not started: use 'async with node:'")
        first = len(self.history)
        last = self.config.rounds - 1 if until_round is None else min(until_round, self.config.rounds - 1)
        if self.config.mode == "async":
            await self._run_async(last)
            return self.history[first:]
        round_ = self.config.start_round
        step: _WorkerStep | None = None
        while round_ <= last:
            caught_up = await self._catch_up_if_behind(round_)
            if caught_up is not None:
                round_, adopted = caught_up
                if round_ > last:
                    break
                step = await self._in_worker_round(None, None, round_, adopted)
            elif step is None:
                step = await self._in_worker_round(None, None, round_)
            exchange = await self._exchange(round_, step)
            upcoming = round_ + 1 if round_ + 1 <= last else None
            # One hand-off to the worker per round: mixing and evaluating this round
            # and training the next are one job, so loop and worker meet once.
            step = await self._in_worker_round(step, exchange, upcoming)
            self._record(step)
            assert step.mixed is not None
            self._latest = (round_ + 1, step.mixed)
            round_ += 1
        return self.history[first:]

    async def _run_async(self, last: int) -> None:
        """Asynchronous gossip: push after every local step, merge what arrived, never wait.

        The round of each step is the node's logical clock (see
        :mod:`p2pfl.node.gossip_async`); it ends once the clock passes ``last``.
        """
        clock = self.config.start_round
        if clock > last:
            return
        step = await self._in_worker_round(None, None, clock)
        while True:
            assert step.trained is not None and step.weights is not None
            started = time.perf_counter()
            plan = self.schedule.plan(self.name, clock)
            frames = wire.encode(
                kind="model", sender=self.name, round=clock, samples=step.trained.samples, tensors=step.weights,
                meta=ASYNC_META,
            )
            sent = self._send_to(plan.send_to, frames)
            fresh = self._fresh.take()
            merge = staleness_weights(
                self.name, clock, {peer: msg.round for peer, msg in fresh.items()},
                lambda r: self.schedule.plan(self.name, r).weights,
                self.config.staleness, self.config.staleness_grace, self._fresh.newest_clocks(),
            )
            exchange = _Exchange(
                round=merge.clock,
                own=step.weights,
                received={peer: msg.tensors for peer, msg in fresh.items()},
                weights=merge.weights,
                bytes_sent=sent,
                bytes_received=sum(msg.nbytes for msg in fresh.values()),
                missing=(),
                seconds=time.perf_counter() - started,
            )
            upcoming = exchange.round + 1 if exchange.round < last else None
            step = await self._in_worker_round(step, exchange, upcoming)
            self._record(step)
            if upcoming is None:
                return
            clock = upcoming

    def _record(self, step: _WorkerStep) -> None:
        """Keep a finished round's metrics and tell the observer."""
        assert step.metrics is not None and step.mixed is not None
        self.history.append(step.metrics)
        if self.observer is not None:
            self.observer.on_round_end(step.metrics, step.mixed)

    async def _catch_up_if_behind(self, round_: int) -> tuple[int, Weights] | None:
        """Join the neighbours' round with their model, if most of them are far ahead.

        A majority of the neighbours heard from must agree, the round joined follows the
        median of their replies and is never past the last round: one lying neighbour
        can neither make the node skip training nor end it.
        """
        present = {p for p in self.peers.present() if not self.peers.is_suspected(p)}
        ahead = [p for p in self.peers.ahead_of(round_ + 1) if p in present]
        if not ahead or 2 * len(ahead) <= len(present):
            return None
        request = wire.encode(kind="sync-request", sender=self.name, round=round_, samples=0, tensors={})
        self._send_to(tuple(ahead), request, control=True)
        replies = await self._catch_up.gather(ahead, timeout=self.config.round_timeout)
        try:
            if 2 * len(replies) <= len(present):
                log.warning("node %s: neighbours %s seem ahead but too few sent a model to catch up with",
                            self.name, ", ".join(ahead))
                return None
            # Join the neighbours' current round: they resend their model of it with the sync
            # reply, and wait for ours now that they heard from us again.
            current, weights = average(replies)
            target = min(current, self.config.rounds - 1)
            if target <= round_:
                return None
            self._inbox.advance(target)  # from now on their messages of that round are in the window
            for model in self._catch_up.kept_models(target):
                with contextlib.suppress(WireError):  # e.g. a duplicate that came the normal way
                    self._inbox.offer(model)
        finally:
            self._catch_up.finish()
        log.info("node %s: behind at round %d; took the model of %s and joins at round %d",
                 self.name, round_, ", ".join(sorted(replies)), target)
        return target, weights

    async def _exchange(self, round_: int, step: _WorkerStep) -> _Exchange:
        """Send this round's model to the plan's peers and collect theirs."""
        assert step.trained is not None and step.weights is not None
        if self.secure is not None:
            return await self._secure_exchange(round_, step, self.secure)
        plan = self.schedule.plan(self.name, round_)
        started = time.perf_counter()
        frames = wire.encode(
            kind="model", sender=self.name, round=round_,
            samples=step.trained.samples, tensors=step.weights,
        )
        sent = self._send_to(plan.send_to, frames)
        self._sent = (round_, frames)
        received, missing = await self._collect(round_, plan, "averaging")
        return _Exchange(
            round=round_,
            own=step.weights,
            received={peer: msg.tensors for peer, msg in received.items()},
            weights=plan.weights,
            bytes_sent=sent,
            bytes_received=sum(msg.nbytes for msg in received.values()),
            missing=missing,
            seconds=time.perf_counter() - started,
        )

    async def _collect(
        self, round_: int, plan: RoundPlan, going_on: str
    ) -> tuple[dict[str, wire.Message], tuple[str, ...]]:
        """Wait for the round's models; a neighbour that misses the deadline is suspected.

        A neighbour already heard at a later round is not waited for either: its model of
        this round went out before (lost, or sent before we were its neighbour) and will
        not come now.
        """

        def moved_past(peer: str) -> bool:
            last = self.peers.last_round(peer)
            return last is not None and last > round_

        received = await self._inbox.collect(
            round_, plan.expect_from, self.config.round_timeout,
            skip=lambda peer: self._not_worth_waiting_for(peer) or moved_past(peer),
        )
        missing = tuple(p for p in plan.expect_from if p not in received)
        for peer in missing:
            if moved_past(peer):
                log.info("node %s round %d: %s is already past this round; %s without it",
                         self.name, round_, peer, going_on)
            elif self.peers.suspect(peer):
                log.warning(
                    "node %s round %d: no model from %s; %s without it and not waiting for it "
                    "again until it is heard from", self.name, round_, peer, going_on,
                )
        return received, missing

    async def _secure_exchange(self, round_: int, step: _WorkerStep, secure: SecureAggregation) -> _Exchange:
        """``_exchange`` with secure aggregation: one masked, weighted model per receiver;
        dropped neighbours' masks are revealed by the present ones and removed."""
        assert step.trained is not None and step.weights is not None
        plan = self.schedule.plan(self.name, round_)
        started = time.perf_counter()
        flat = secure.flatten(step.weights)
        sent = 0
        for receiver in plan.send_to:
            payload = secure.masked_for(self.schedule.plan(receiver, round_), round_, flat)
            frames = wire.encode(
                kind="masked-model", sender=self.name, round=round_,
                samples=step.trained.samples, tensors={"masked": payload},
            )
            sent += self._send_to((receiver,), frames)
        received, missing = await self._collect(round_, plan, "unmasking the sum")
        masked = {peer: msg.tensors["masked"] for peer, msg in received.items()}
        dropped = set(missing)
        reveals: dict[str, Any] = {}
        nbytes = sum(msg.nbytes for msg in received.values())
        while dropped and masked:
            secure.mark_dropped(round_, dropped)  # their late models are refused from now on
            if len(plan.expect_from) - len(dropped) < 2:
                log.warning("node %s round %d: fewer than 2 neighbours left in the sum; "
                            "averaging without neighbours", self.name, round_)
                masked = {}
                break
            request = wire.encode(
                kind="reveal-request", sender=self.name, round=round_, samples=0, tensors={},
                meta={"dropped": sorted(dropped)},
            )
            self._reveals.open(round_, masked)
            self._send_to(tuple(masked), request, control=True)
            got = await self._reveals.gather(self.config.round_timeout)
            silent = set(masked) - set(got)
            reveals = {peer: msg.tensors["masked"] for peer, msg in got.items()}
            nbytes += sum(msg.nbytes for msg in got.values())
            if not silent:
                break
            log.warning("node %s round %d: %s sent no reveal; leaving them out too",
                        self.name, round_, ", ".join(sorted(silent)))
            dropped |= silent
            masked = {p: v for p, v in masked.items() if p not in silent}
        secure_sum = secure.unmask(masked, reveals, dropped)
        return _Exchange(
            round=round_,
            own=step.weights,
            received={peer: {} for peer in secure_sum.present},
            weights=plan.weights,
            bytes_sent=sent,
            bytes_received=nbytes,
            missing=tuple(p for p in plan.expect_from if p not in secure_sum.present),
            seconds=time.perf_counter() - started,
            secure_sum=secure_sum,
        )

    def _check_secure_kind(self, message: wire.Message) -> None:
        """With secure aggregation only masked models are taken, and only from peers not
        yet declared dropped; without it, none."""
        if self.secure is None:
            if message.kind == "masked-model":
                raise WireError("secagg_off", "a masked model, but secure aggregation is off here")
            return
        if message.kind == "model":
            raise WireError("secagg_plain", "a plain model, but this node runs secure aggregation")
        self.secure.check_not_dropped(message.sender, message.round)

    def _on_reveal_request(self, message: wire.Message) -> None:
        if self.secure is None:
            raise WireError("secagg_off", "a reveal request, but secure aggregation is off here")
        dropped = message.meta.get("dropped")
        if not isinstance(dropped, list) or not all(isinstance(d, str) for d in dropped):
            raise WireError("bad_header", "a reveal request names its dropped peers in meta.dropped")
        plan = self.schedule.plan(message.sender, message.round)
        masks = self.secure.reveal_for(plan, message.round, dropped)  # raises reveal_refused
        frames = wire.encode(
            kind="reveal", sender=self.name, round=message.round, samples=0, tensors={"masked": masks}
        )
        self._send_to((message.sender,), frames, control=True)

    def _mix_stage(self, work: _StepWork) -> _StepWork:
        """Average the finished round's models (nothing to do when adopting or starting)."""
        started = time.perf_counter()
        exchange = work.exchange
        if work.previous is not None and exchange is not None:
            if exchange.secure_sum is not None and self.secure is not None:
                mixed = self.secure.combine(exchange.own, exchange.secure_sum, exchange.weights)
            else:
                mixed = self.aggregator(self.name, exchange.own, exchange.received, exchange.weights)
            if not all_finite(mixed):  # finite but extreme models can overflow the sum
                self._non_finite(exchange.round, "averaging with " + ", ".join(sorted(exchange.received)))
                mixed = exchange.own
            work.mixed = mixed
        work.finish_seconds += time.perf_counter() - started
        return work

    def _evaluate_stage(self, work: _StepWork) -> _StepWork:
        """Load the mixed (or adopted) weights and evaluate the finished round."""
        started = time.perf_counter()
        if work.adopt is not None:
            self._replace_weights(work.adopt)
        if work.mixed is not None:
            assert work.previous is not None and work.exchange is not None
            self.learner.set_weights(work.mixed)
            evaluation = self.learner.evaluate()
            work.finish_seconds += time.perf_counter() - started
            work.metrics = self._round_metrics(work.previous, work.exchange, evaluation, work.finish_seconds)
            if self.checkpoint is not None:
                self.checkpoint(work.metrics)
        return work

    def _train_stage(self, work: _StepWork) -> _StepWork:
        """Train the next round from the weights the learner now holds."""
        started = time.perf_counter()
        if work.train_round is not None:
            work.start = work.mixed if work.mixed is not None else work.adopt
            if work.start is None:  # the first round: nothing mixed or adopted to fall back on
                work.start = self.learner.get_weights()
            work.trained = self.learner.train(work.train_round)
        work.train_seconds += time.perf_counter() - started
        return work

    def _snapshot_stage(self, work: _StepWork) -> _WorkerStep:
        """Snapshot the trained weights to send; a NaN model is dropped for the one before."""
        started = time.perf_counter()
        weights = None
        if work.trained is not None:
            assert work.train_round is not None
            # A fresh snapshot: its frames may sit in a slow peer's queue while we train on.
            weights = self.learner.get_weights()
            if not all_finite(weights):  # never send (or keep training) a NaN model
                self._non_finite(work.train_round, f"local training (train loss {work.trained.loss})")
                assert work.start is not None
                self._replace_weights(work.start)  # its momentum is NaN too
                weights = self.learner.get_weights()
        return _WorkerStep(
            mixed=work.mixed, metrics=work.metrics, trained=work.trained, weights=weights,
            train_seconds=work.train_seconds + time.perf_counter() - started,
        )

    def _replace_weights(self, weights: Weights) -> None:
        """Load weights that did not come from our own last step, and forget the
        optimizer state (momentum) of the model they replace, if the learner keeps any."""
        self.learner.set_weights(weights)
        restart = getattr(self.learner, "restart_optimizer", None)
        if callable(restart):
            restart()

    def _non_finite(self, round_: int, during: str) -> None:
        self.stats.non_finite_models += 1
        log.error(
            "node %s round %d: %s gave NaN/Inf weights; keeping the weights from before it. "
            "Lower the learning rate, or use a robust aggregator if a neighbour sends extreme models",
            self.name, round_, during,
        )

    def _round_metrics(
        self, step: _WorkerStep, exchange: _Exchange, evaluation: EvalResult, mix_seconds: float
    ) -> RoundMetrics:
        assert step.trained is not None
        return RoundMetrics(
            node=self.name,
            round=exchange.round,
            train_loss=step.trained.loss,
            test_loss=evaluation.loss,
            test_accuracy=evaluation.accuracy,
            bytes_sent=exchange.bytes_sent,
            bytes_received=exchange.bytes_received,
            round_seconds=step.train_seconds + exchange.seconds + mix_seconds,
            received_from=tuple(exchange.received),
            missing=exchange.missing,
            # a differentially private learner's TrainResult carries its spent epsilon
            epsilon=getattr(step.trained, "epsilon", None),
            timestamp=time.time(),
        )

    def _not_worth_waiting_for(self, peer: str) -> bool:
        """A peer thought down (missed a deadline, left, reported offline) or revoked."""
        if peer not in self.peers.peers or self.peers.is_suspected(peer):
            return True
        if self.presence is None or not self.presence.is_offline(peer):
            return False
        # Direct traffic newer than the broker's word wins: a broker that goes down
        # publishes every member's Last Will, and then cannot say they are back. (What
        # the broker held before we subscribed counts as said when we subscribed.)
        reported = self._reported_offline.get(peer, self._presence_since)
        return not self.peers.heard_since(peer, reported)

    def _on_presence_change(self) -> None:
        assert self.presence is not None
        for peer in self.peers.peers:
            if self.presence.is_offline(peer):
                self._reported_offline.setdefault(peer, time.monotonic())
            else:
                self._reported_offline.pop(peer, None)
        self._inbox.poke()  # a round under way reconsiders whom it waits for

    def _send_to(
        self, peers: tuple[str, ...], frames: list[bytes | memoryview], *, control: bool = False
    ) -> int:
        """Queue ``frames`` for each peer; returns the bytes actually queued.

        ``control`` messages (greetings, goodbyes, catch-up) are counted apart from the
        rounds' model traffic, and a full queue drops them without a warning.
        """
        size = sum(len(f) for f in frames)
        sent = 0
        for peer in peers:
            endpoint = self._addresses.get(peer)
            if endpoint is None:
                log.error("node %s: no address for peer %s; not sending to it", self.name, peer)
                continue
            try:
                self.transport.connect(peer, endpoint)
            except TransportError as exc:  # e.g. a peer revoked from the allow-list
                log.error("node %s: cannot link to %s: %s; not sending to it", self.name, peer, exc)
                continue
            if self.transport.send(peer, frames):
                sent += size
                if peer in self._blocked:
                    self._blocked.discard(peer)
                    log.info("node %s: %s takes messages again", self.name, peer)
            else:
                self.stats.sends_dropped += 1
                # once per outage, not every round: a dead neighbour must not flood the log
                if not control and peer not in self._blocked:
                    self._blocked.add(peer)
                    log.warning("node %s: queue to %s is full (down or far behind); dropping "
                                "messages to it until it takes them again", self.name, peer)
        if control:
            self.stats.control_bytes_sent += sent
        else:
            self.stats.bytes_sent += sent
        return sent

    async def _in_worker_round(
        self,
        previous: _WorkerStep | None,
        exchange: _Exchange | None,
        train_round: int | None,
        adopt: Weights | None = None,
    ) -> _WorkerStep:
        """One worker step: finish a round (mix, evaluate), then train the next one (from
        ``adopt``-ed weights when catching up). An executor that takes stages gets them
        one by one (a simulation's shared worker runs each stage for all its nodes in
        turn), any other one a single job."""
        work = _StepWork(previous, exchange, adopt, train_round)
        stages = (self._mix_stage, self._evaluate_stage, self._train_stage, self._snapshot_stage)
        loop = asyncio.get_running_loop()
        if self._staged is not None:
            step: _WorkerStep = await self._staged.submit_stages(loop, work, stages)
            return step

        def all_stages() -> _WorkerStep:
            value: Any = work
            for stage in stages:
                value = stage(value)
            return value  # type: ignore[no-any-return]

        return await loop.run_in_executor(self._executor, all_stages)

    # -- receiving ---------------------------------------------------------------------

    def _on_incoming(self, incoming: Incoming) -> None:
        self.stats.bytes_received += incoming.nbytes
        try:
            self._accept(incoming)
        except WireError as exc:
            self._count_rejection(exc.reason, str(exc))
        except Exception:  # a peer must never be able to stop the node
            self._count_rejection("internal_error", "unexpected error handling a message")
            log.exception("node %s: error handling a message; message dropped", self.name)
        self._wake_stat_waiters()

    def _on_rejected_connection(self, reason: str, detail: str) -> None:
        self._count_rejection(reason, detail)
        self._wake_stat_waiters()

    def _wake_stat_waiters(self) -> None:
        for predicate, waiter in self._stat_waiters:  # only tests and tools wait
            if not waiter.done() and predicate(self.stats):
                waiter.set_result(None)

    def _accept(self, incoming: Incoming) -> None:
        # [security hook] With link security on, the authenticated key (checked against the
        # current allow-list, so a revocation reaches open connections too) decides who
        # sent the message, before any byte of it is parsed; the header must agree.
        security = self.transport.security
        member = None
        if security is not None:
            member = security.member_for(incoming.user_id)
            if member is None:
                raise WireError("unauthenticated", "the link's key is not (or no longer) on the allow-list")
        message = wire.decode(
            incoming.frames, schema=self._schema, limits=self._limits, kind_schemas=self._kind_schemas
        )
        if member is not None and message.sender != member:
            raise WireError(
                "sender_mismatch", f"header claims sender {message.sender!r}, the link is {member!r}'s"
            )
        if message.sender == self.name:
            raise WireError("unknown_sender", "message claims to come from this node itself")
        if message.kind in ("model", "masked-model"):
            self._check_secure_kind(message)
            theirs = "async" if message.meta.get("async") is True else "sync"
            if theirs != self.config.mode:
                raise WireError(
                    "mode_mismatch",
                    f"{message.sender} runs {theirs} gossip, this node {self.config.mode}: "
                    "give every member the same mode",
                )
            if message.round >= self.config.rounds:
                raise WireError("future_round", f"round {message.round} >= last round {self.config.rounds}")
            expected: Collection[str] = (
                self.schedule.plan(self.name, message.round).weights
                if message.round >= self._inbox.current_round
                else self.peers.peers  # stale, but still news of where the sender is
            )
            if message.sender not in expected:
                raise WireError(
                    "unknown_sender", f"{message.sender!r} is not a neighbour in round {message.round}"
                )
        elif message.sender not in self.peers.peers:
            raise WireError("unknown_sender", f"{message.kind} from {message.sender!r}, not a neighbour")
        elif message.round > self.config.rounds:  # no honest peer is past the last round
            raise WireError("future_round", f"{message.kind} claims round {message.round} > {self.config.rounds}")
        if self.peers.heard(message.sender, message.round):
            log.info("node %s: %s is back (at round %d)", self.name, message.sender, message.round)
            self._inbox.poke()  # a round under way waits for it again
        elif message.round > self._inbox.current_round:
            self._inbox.poke()  # a round under way stops waiting for a peer that moved past it
        if message.kind == "model" and self.config.mode == "async":
            self._fresh.offer(message)
        elif message.kind in ("model", "masked-model"):
            if not (message.round > self._inbox.current_round + self._inbox.max_rounds_ahead
                    and self._catch_up.keep_model(message)):
                self._inbox.offer(message)
        elif message.kind == "reveal-request":
            self._on_reveal_request(message)
        elif message.kind == "reveal":
            if self.secure is None:
                raise WireError("secagg_off", "a reveal, but secure aggregation is off here")
            self._reveals.offer(message)
        elif message.kind == "hello":
            self._on_hello(message)
        elif message.kind == "bye":
            self.peers.suspect(message.sender)
            self._inbox.poke()
            log.info("node %s: %s says it is leaving; not waiting for it", self.name, message.sender)
        elif message.kind == "sync-request":
            self._on_sync_request(message)
        elif message.kind == "sync":
            self._catch_up.offer(message)
        self.stats.messages_accepted += 1

    def _on_hello(self, message: wire.Message) -> None:
        # Answer a greeting so the greeter learns we are up; never answer an answer, and
        # at most twice a second per peer, so hellos cannot be used to make us flood.
        if not message.meta.get("reply", False) and self._may_answer(message.sender, "hello"):
            # A greeting means the peer (re)started: open a fresh link, which also drops
            # whatever stale rounds were queued for its previous life (and inproc links
            # do not reconnect by themselves).
            self.transport.disconnect(message.sender)
            self._fresh.forget(message.sender)  # its clock restarts from its checkpoint
            self._greet([message.sender], reply=True)

    def _on_sync_request(self, message: wire.Message) -> None:
        if self._latest is None or not self._may_answer(message.sender, "sync"):
            return
        round_, weights = self._latest
        frames = wire.encode(kind="sync", sender=self.name, round=round_, samples=0, tensors=weights)
        self._send_to((message.sender,), frames, control=True)
        if self._sent is not None and self._sent[0] == round_:
            # our model of the round it is about to join went out while it was away
            self._send_to((message.sender,), self._sent[1], control=True)

    def _may_answer(self, peer: str, kind: str) -> bool:
        """At most two answers of a kind per peer and second: requests cannot make us flood."""
        now = time.monotonic()
        if now - self._replied.get((peer, kind), 0.0) <= 0.5:
            return False
        self._replied[(peer, kind)] = now
        return True

    def _count_rejection(self, reason: str, detail: str) -> None:
        self.stats.rejected[reason] += 1
        count = self.stats.rejected[reason]
        # Log the first few of each reason, then sparsely: a flood must not flood the log.
        if count <= 5 or count % 1000 == 0:
            log.warning("node %s rejected a message (%s, #%d): %s", self.name, reason, count, detail)
