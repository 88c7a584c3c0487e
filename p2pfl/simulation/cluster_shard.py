"""One shard of a cluster run: the simulator's machinery for a subset of the nodes, in a Ray actor.

Inside a shard, nodes talk over the run's ``transport`` (``inproc`` by default), exactly
as in a one-process run. A node with a neighbour in another shard also listens on tcp at
its host's address (one ROUTER, two endpoints), and its neighbours there reach it over
tcp: every link picks the cheapest address its two ends share. Models travel only over
ZeroMQ; what goes back to the driver through Ray is each node's round report (its
metrics row) and, per round, one model-sized sum of the shard's models for the consensus
distance (:class:`ShardRounds`); the nodes' final models go once, at the end.

A shard builds only its own nodes' learners (``build_experiment(config, only=...)``),
bit-identical to the ones a one-process run builds.

This module imports no Ray at import time: the driver (:mod:`p2pfl.simulation.cluster`)
makes :class:`ShardActor` a Ray actor, and only the actor asks Ray for its address.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import zmq

from p2pfl.aggregation.consensus import distances_to, model_sum
from p2pfl.learning.learner import Weights
from p2pfl.node.node import Node
from p2pfl.node.records import NodeStats, RoundMetrics
from p2pfl.simulation.churn import Churn
from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.limits import needs, prepare_limits
from p2pfl.simulation.recorder import MetricsRecorder
from p2pfl.simulation.setup import Experiment, build_experiment, claimed_cpu, torch_threads
from p2pfl.simulation.simulator import _endpoints, _NodeFactory
from p2pfl.simulation.worker import PhasedWorker, loop_idle_event, new_simulation_loop, pinned_thread
from p2pfl.transport import ZmqTransport

#: How long one :meth:`ShardActor.poll` waits for news before answering with none.
POLL_SECONDS = 1.0


@dataclass
class NodeReport:
    """What the driver's summary reads of a node that ran in a shard (a Node is not sent)."""

    name: str
    stats: NodeStats
    history: list[RoundMetrics]


class ShardRounds(MetricsRecorder):
    """The shard's part of the consensus distance: a recorder of its own nodes that, as
    it closes a round (the same rule as the driver's: every live node of the shard has
    reported it), sends the driver the float64 sum of the models that count and their
    number, ``("sum", round, sums, count)``, one model-sized array per shard. The driver
    adds the shards' sums into the average and hands it back to :meth:`centre`, which
    gives each node's squared distance to it. Keeps each node's latest model
    (``final_weights``) for the end of the run; writes no rows."""

    def __init__(self, members: list[str], events: queue.SimpleQueue[tuple[Any, ...]]) -> None:
        super().__init__(members)
        self._events = events
        self._kept: dict[int, tuple[list[str], list[Weights]]] = {}  # the models of rounds not centred yet
        self._lock = threading.Lock()  # centre() runs on a Ray thread

    def _round_closed(self, round_: int, order: list[str], exact: dict[str, RoundMetrics]) -> None:
        models = [self._state[name][1] for name in order]
        if models:
            with self._lock:
                self._kept[round_] = (order, models)
        self._events.put(("sum", round_, model_sum(models) if models else None, len(models)))

    def centre(self, round_: int, mean: Weights) -> dict[str, float]:
        """Each counted node's squared distance to ``mean``, the average of round ``round_``."""
        with self._lock:
            order, models = self._kept.pop(round_, ([], []))
        return dict(zip(order, distances_to(models, mean).tolist(), strict=True)) if models else {}


class _Forwarder:
    """The shard's round observer: every report and crash goes in a queue for the driver,
    and to the shard's :class:`ShardRounds`."""

    def __init__(self, members: list[str]) -> None:
        self.events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.rounds = ShardRounds(members, self.events)

    def on_round_end(self, metrics: RoundMetrics, weights: Weights) -> None:
        self.events.put(("round", metrics))  # before the round's sum, which counts it
        self.rounds.on_round_end(metrics, weights)

    def node_down(self, name: str) -> None:
        self.events.put(("down", name))
        self.rounds.node_down(name)

    def node_up(self, name: str) -> None:  # pragma: no cover - the config refuses recover and join
        raise RuntimeError("recover and join do not run on a cluster")

    async def wait_for_round(self, round_: int) -> None:  # pragma: no cover - as node_up
        raise RuntimeError("recover and join do not run on a cluster")


class ShardPresence:
    """A :class:`~p2pfl.node.peers.PeerPresence` fed by the driver: nodes of a shard that
    died are offline, so their neighbours stop waiting for them at once."""

    def __init__(self) -> None:
        self._offline: set[str] = set()
        self._callbacks: list[Callable[[], None]] = []

    def is_offline(self, peer: str) -> bool:
        return peer in self._offline

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def mark_offline(self, names: Iterable[str]) -> None:
        self._offline.update(names)
        for callback in self._callbacks:
            callback()


class _ShardNodeFactory(_NodeFactory):
    """The simulator's node factory; nodes with a neighbour elsewhere also listen on tcp."""

    def __init__(self, *args: Any, crossing: set[str], host: str) -> None:
        super().__init__(*args)
        self.crossing = crossing
        self.host = host

    def transport(self, name: str, endpoint: str) -> ZmqTransport:
        if name not in self.crossing:
            return super().transport(name, endpoint)
        tcp = f"tcp://{self.host}:0"
        if endpoint.startswith("tcp://"):  # transport = tcp: one address serves both
            return ZmqTransport(self.context, tcp)
        return ZmqTransport(self.context, endpoint, also_bind=tcp)


class ShardActor:
    """Runs shard ``index`` of the run (its nodes: ``shard_of[name] == index``).

    The nodes run on their own thread and event loop (the simulator's, with its idle
    signal), so that Ray's method calls never wait on them. The driver calls, in order:
    :meth:`endpoints` (once every node is bound), :meth:`start` (everyone's tcp
    endpoints), then :meth:`poll` until it returns the node reports, and
    :meth:`final_weights`; :meth:`centre` for each round sum the shard sent, and
    :meth:`peers_down`, at any time.
    """

    def __init__(self, config: ExperimentConfig, index: int, shard_of: Mapping[str, int]) -> None:
        self.index = index
        self._config = config
        self._shard_of = dict(shard_of)
        self._members = [name for name, shard in self._shard_of.items() if shard == index]  # in node order
        self._forward = _Forwarder(self._members)
        self._presence = ShardPresence()
        self._bound: Future[dict[str, str]] = Future()  # our crossing nodes' tcp endpoints
        self._peers: Future[dict[str, str]] = Future()  # everyone's, from the driver
        self._result: Future[list[NodeReport]] = Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name=f"p2pfl-shard-{index}", daemon=True)
        self._thread.start()

    def endpoints(self) -> dict[str, str]:
        """The tcp endpoints of this shard's nodes that have a neighbour in another shard."""
        return self._bound.result()

    def start(self, endpoints: Mapping[str, str]) -> None:
        """Link the nodes (``endpoints``: every shard's :meth:`endpoints`) and run them."""
        self._peers.set_result(dict(endpoints))

    def poll(self, timeout: float = POLL_SECONDS) -> tuple[list[tuple[Any, ...]], list[NodeReport] | None]:
        """The events since the last poll (waiting up to ``timeout`` for one), and the
        node reports once the shard is done (its error, if it failed)."""
        events: list[tuple[Any, ...]] = []
        with contextlib.suppress(queue.Empty):
            events.append(self._forward.events.get(timeout=timeout))
            while True:
                events.append(self._forward.events.get_nowait())
        done = bool(events) and events[-1][0] == "end"
        return (events[:-1], self._result.result()) if done else (events, None)

    def centre(self, round_: int, mean: Weights) -> dict[str, float]:
        """The squared distances of this shard's nodes to ``mean``, round ``round_``'s
        average model (formed by the driver from every shard's ``sum``)."""
        return self._forward.rounds.centre(round_, mean)

    def final_weights(self) -> dict[str, Weights]:
        """Each node's latest model (once, at the end: for ``models/`` and the result)."""
        return dict(self._forward.rounds.final_weights)

    def peers_down(self, names: list[str]) -> None:
        """Nodes of a shard that died: stop waiting for them."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing waits any more
                self._loop.call_soon_threadsafe(self._presence.mark_offline, names)

    def _main(self) -> None:
        try:
            with asyncio.Runner(loop_factory=new_simulation_loop) as runner:
                reports = runner.run(self._run())
        except BaseException as exc:  # handed to the driver through endpoints() or poll()
            if not self._bound.done():
                self._bound.set_exception(exc)
            self._result.set_exception(exc)
        else:
            self._result.set_result(reports)
        try:  # the rounds some nodes never finished: their sums go before the end
            self._forward.rounds.close()
        finally:
            self._forward.events.put(("end",))

    async def _run(self) -> list[NodeReport]:
        from ray.util import get_node_ip_address  # in the actor only: importing p2pfl never imports ray

        config = self._config
        self._loop = asyncio.get_running_loop()
        # our own nodes' learners only, bit-identical to a whole build's
        experiment = build_experiment(config, only=self._members)
        members = self._members
        crossing = {name for name in members if self._elsewhere(experiment, name)}
        context = zmq.Context()
        degrees = [len(experiment.schedule.peers(name)) for name in members]
        try:
            prepare_limits(context, needs("tcp" if crossing else config.transport, degrees), config.transport)
            with claimed_cpu(config) as cpu:
                executor = PhasedWorker(idle=loop_idle_event(self._loop), cpu=cpu)
                try:
                    return await self._run_nodes(
                        experiment, members, _ShardNodeFactory(
                            config, experiment, context, executor, self._forward,
                            crossing=crossing, host=get_node_ip_address(),
                        ), cpu,
                    )
                finally:
                    executor.shutdown(wait=True)
        finally:
            context.term()

    async def _run_nodes(
        self, experiment: Experiment, members: list[str], make_node: _ShardNodeFactory, cpu: int | None
    ) -> list[NodeReport]:
        config, names = self._config, experiment.names
        churn = Churn.from_config(config, names, self._forward)
        with _endpoints(config.transport) as endpoint_for, torch_threads(config.torch_threads):
            async with contextlib.AsyncExitStack() as stack:
                nodes: list[Node] = []
                index = {name: i for i, name in enumerate(names)}
                for name in members:
                    node = make_node(name, endpoint_for(index[name]), presence=self._presence)
                    nodes.append(await stack.enter_async_context(node))
                self._bound.set_result({
                    node.name: node.transport.also_endpoint or node.endpoint  # type: ignore[misc]  # bound
                    for node in nodes if node.name in make_node.crossing
                })
                endpoints = await asyncio.wrap_future(self._peers)
                # our own nodes by their cheapest address (inproc), not the tcp one
                endpoints.update({node.name: node.endpoint for node in nodes})  # type: ignore[misc]
                for node in nodes:
                    make_node.link(node, endpoints)
                with pinned_thread(cpu):
                    async with asyncio.TaskGroup() as group:
                        churn.start(group, nodes, _no_spawn)
        return [NodeReport(node.name, node.stats, node.history) for node in churn.nodes]

    def _elsewhere(self, experiment: Experiment, name: str) -> bool:
        return any(self._shard_of[peer] != self.index for peer in experiment.schedule.peers(name))


async def _no_spawn(name: str, start_round: int) -> Node:  # pragma: no cover - recover and join are refused
    raise RuntimeError("recover and join do not run on a cluster")
