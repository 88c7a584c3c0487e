"""A gossip-learning node: train, send, collect, mix, evaluate, round after round.

The same class runs one organisation's long-lived process and each of the many nodes of
a local simulation; only who builds it differs. The node owns the lifecycle and the
round loop; how a round's models travel is its exchange (:mod:`p2pfl.node.exchange`),
its torch work runs in :mod:`p2pfl.node.steps`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from p2pfl import wire
from p2pfl.aggregation.base import Aggregator, mix
from p2pfl.errors import NodeError
from p2pfl.learning.learner import Learner
from p2pfl.node import waiting
from p2pfl.node.catchup import CatchUp
from p2pfl.node.compression import ErrorFeedback, node_seed
from p2pfl.node.exchange import Exchange, ExchangeBuilder, Trained
from p2pfl.node.gossip import SyncGossip
from p2pfl.node.gossip_async import ASYNC_META, AsyncGossip
from p2pfl.node.gossip_choco import ChocoGossip
from p2pfl.node.inbox import RoundInbox
from p2pfl.node.link import NodeLink
from p2pfl.node.peers import PeerPresence, PeerTracker, StartCondition
from p2pfl.node.receiving import Receiver
from p2pfl.node.records import NodeConfig, NodeStats, RoundMetrics, RoundObserver, limits_for
from p2pfl.node.steps import Finished, RoundWorker, StagedExecutor
from p2pfl.settings import parse_gossip
from p2pfl.topology.schedule import GossipSchedule
from p2pfl.transport import Incoming, ZmqTransport

log = logging.getLogger(__name__)

# the value types live in records.py; users import them from here (or from p2pfl)
__all__ = ["ASYNC_META", "Node", "NodeConfig", "NodeStats", "RoundMetrics", "RoundObserver", "StagedExecutor"]


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
        secure: optional secure aggregation (:class:`p2pfl.privacy.secagg.SecureAggregation`,
            or anything else that builds the node's exchange): models travel masked and
            the node learns only the weighted sum of its neighbours' models. Needs the
            default ``mix`` aggregator and neighbourhoods of at least 3.
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
        secure: ExchangeBuilder | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.learner = learner
        self.transport = transport
        self.observer = observer
        self.presence = presence
        self.checkpoint = checkpoint
        self.aggregator = aggregator
        self.secure = secure
        self.peers = PeerTracker(schedule.peers(config.name))
        self.stats = NodeStats()
        self.history: list[RoundMetrics] = []
        self._executor = executor
        self._own_executor: ThreadPoolExecutor | None = None
        self._inbox = RoundInbox(config.max_rounds_ahead)
        # a node resumed from a checkpoint listens before it runs: judge what arrives by
        # the round it resumes at, not round 0 (or its neighbours' models look too far ahead)
        self._inbox.advance(config.start_round)
        self._link = NodeLink(
            config.name, config.round_timeout, schedule, transport, self._inbox, self.peers, self.stats, presence
        )
        weights = learner.get_weights()
        self._schema: Mapping[str, wire.TensorSpec] = wire.schema_of(weights)
        self._limits = limits_for(weights, config)
        # libzmq buffers whatever frame size a stranger declares, even mid-handshake
        transport.limit_message_size(self._limits.max_message_bytes)
        self._exchange: Exchange
        codec = wire.parse_codec(config.compress)
        codec_seed = node_seed(config.name, config.seed)
        feedback = ErrorFeedback(codec, codec_seed) if codec is not None else None
        if secure is not None and codec is not None:
            raise NodeError(f"compress = {config.compress!r} does not compose with secure aggregation")
        algorithm, gamma = parse_gossip(config.gossip)
        if algorithm == "choco":
            if secure is not None or aggregator is not mix:
                raise NodeError(f"gossip = {config.gossip!r} needs the default mean and no secure aggregation")
            self._exchange = ChocoGossip(self._link, gamma=gamma, codec=codec, seed=codec_seed,
                                         initial=weights, mode=config.mode)
        elif secure is not None:
            self._exchange = secure.build_exchange(self._link, mode=config.mode, aggregator=aggregator,
                                                   schema=self._schema)
        elif config.mode == "async":
            self._exchange = AsyncGossip(self._link, aggregator, staleness=config.staleness,
                                         grace=config.staleness_grace, feedback=feedback)
        else:
            self._exchange = SyncGossip(self._link, aggregator, feedback)
        # under secure aggregation no model may leave in the clear, catch-up's included
        self._catch_up = CatchUp(self._link, config.rounds, self._exchange.sent, share_models=secure is None)
        self._worker = RoundWorker(config.name, learner, self.stats, checkpoint)
        self._receiver = Receiver(config, self._link, self._exchange, self._catch_up, self._schema, self._limits)
        self._started = False
        self._stat_waiters: list[tuple[Callable[[NodeStats], bool], asyncio.Future[None]]] = []
        self.endpoint: str | None = None

    @property
    def schedule(self) -> GossipSchedule:
        """The current schedule (:meth:`update_membership` replaces it)."""
        return self._link.schedule

    @schedule.setter
    def schedule(self, schedule: GossipSchedule) -> None:
        self._link.schedule = schedule

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        self.endpoint = self.transport.start()
        if self._executor is None:
            self._own_executor = ThreadPoolExecutor(1, thread_name_prefix=f"p2pfl-{self.name}")
            self._executor = self._own_executor
        self._worker.use(self._executor)
        self._link.watch_presence()
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
                self._link.say_bye()
        finally:
            self.transport.close()
            if self._own_executor is not None:
                self._own_executor.shutdown(wait=True)

    async def wait_until(self, predicate: Callable[[NodeStats], bool], timeout: float) -> None:
        """Wait until ``predicate(self.stats)`` holds after some incoming message.

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
        """
        self._check_started()
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
        self._check_started()
        await waiting.until_ready(self._link, condition, hello_interval=hello_interval, log_every=log_every)

    async def wait_to_resume(self, *, hello_interval: float = 1.0) -> None:
        """A node resumed at ``start_round``: greet until a neighbour that still runs
        answers, for one round deadline at most (not the start condition: the run is under way).

        Raises:
            PeersGoneError: the neighbours finished the run, or none answered in time.
        """
        self._check_started()
        await waiting.to_resume(self._link, self.config.start_round, hello_interval=hello_interval)

    async def linger(self, seconds: float) -> None:
        """After :meth:`run`: keep answering greetings ("finished") until every neighbour
        finished too, or ``seconds``, so a neighbour restarting now learns the run is over."""
        self._check_started()
        self._link.say_bye()  # now: the neighbours stop waiting for it, and lingering for it
        await waiting.linger(self._link, seconds)

    def update_membership(
        self, schedule: GossipSchedule, endpoints: Mapping[str, str], *, relink: Iterable[str] = ()
    ) -> None:
        """Switch to a new schedule (a member joined or was revoked); takes effect at once.

        Links to peers that are no longer neighbours are closed, and so are the links
        to ``relink`` (peers whose key changed: the next send reconnects with the new
        key); new neighbours are reached at ``endpoints``.
        """
        self._link.schedule = schedule
        peers = schedule.peers(self.name)
        for name in peers:
            if name in endpoints:
                self._link.addresses[name] = endpoints[name]
        for gone in (set(self.transport.peers) - set(peers)) | set(relink):
            self.transport.disconnect(gone)
        self.peers.set_peers(peers)
        self._inbox.poke()  # a waiting round re-checks whom it still expects
        log.info("node %s: neighbours are now %s", self.name, ", ".join(peers) or "none")

    def add_peer(self, name: str, endpoint: str) -> None:
        """Tell the node where ``name`` listens; the link opens when first needed."""
        self._link.addresses[name] = endpoint

    def _check_started(self) -> None:
        if not self._started:
            raise NodeError(f"node {self.name} is not started: use 'async with node:'")

    # -- rounds ------------------------------------------------------------------------

    async def run(self, until_round: int | None = None) -> list[RoundMetrics]:
        """Run rounds ``start_round .. rounds-1`` (or up to ``until_round`` included);
        returns this run's metrics.

        A node that finds its neighbours two or more rounds ahead (it was down, or cut
        off) first catches up: it adopts their latest averaged model and their round.
        Asynchronous gossip has no rounds to wait for: its round is the node's clock.
        """
        self._check_started()
        first = len(self.history)
        last = self.config.rounds - 1 if until_round is None else min(until_round, self.config.rounds - 1)
        round_ = self.config.start_round
        trained: Trained | None = None
        while round_ <= last:
            if self._exchange.barrier:
                caught_up = await self._catch_up.attempt(round_)
                if caught_up is not None:
                    round_, adopted = caught_up
                    if round_ > last:
                        break
                    trained = await self._worker.train(round_, adopted)
            if trained is None:
                trained = await self._worker.train(round_)
            exchanged = await self._exchange.run(trained)
            upcoming = exchanged.round + 1 if exchanged.round < last else None
            # One hand-off to the worker per round: mixing and evaluating this round
            # and training the next are one job, so loop and worker meet once.
            finished = await self._worker.finish(trained, exchanged, upcoming)
            self._record(finished)
            if self._exchange.barrier:
                self._catch_up.latest = (exchanged.round + 1, finished.mixed)
            if finished.next is None:
                break
            trained = finished.next
            round_ = trained.round
        if last == self.config.rounds - 1:  # its goodbye and greetings say "finished" from now on
            self._link.finished = last
        return self.history[first:]

    def _record(self, finished: Finished) -> None:
        """Keep a finished round's metrics and tell the observer."""
        self.history.append(finished.metrics)
        if self.observer is not None:
            self.observer.on_round_end(finished.metrics, finished.mixed)

    # -- receiving ---------------------------------------------------------------------

    def _on_incoming(self, incoming: Incoming) -> None:
        self._receiver.receive(incoming)
        self._wake_stat_waiters()

    def _on_rejected_connection(self, reason: str, detail: str) -> None:
        """A connection the transport dropped (e.g. a stranger's oversized frame)."""
        self._receiver.count_rejection(reason, detail)
        self._wake_stat_waiters()

    def _wake_stat_waiters(self) -> None:
        for predicate, waiter in self._stat_waiters:  # only tests and tools wait
            if not waiter.done() and predicate(self.stats):
                waiter.set_result(None)
