"""Each way of exchanging models, driven alone: fake links route frames between exchanges,
no node and no sockets; aggregates are held to the closed-form weighted mean."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from p2pfl import wire
from p2pfl.aggregation.base import mix
from p2pfl.errors import WireError
from p2pfl.learning.learner import TrainResult
from p2pfl.node.compression import ErrorFeedback
from p2pfl.node.exchange import Exchange, Exchanged, Frames, Trained
from p2pfl.node.gossip import SyncGossip
from p2pfl.node.gossip_async import ASYNC_META, AsyncGossip
from p2pfl.node.inbox import RoundInbox
from p2pfl.topology.schedule import RoundPlan
from p2pfl.wire import Kind, Message
from p2pfl.wire.kinds import SECAGG_CONTROL_KINDS

NAMES = ("a", "b", "c", "d")
SHAPE = (3, 5)


class TableSchedule:
    """Every member a neighbour of every other, with random (public) mixing weights."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self._plans = {}
        for name in NAMES:
            raw = rng.random(len(NAMES)) + 0.1
            weights = dict(zip(NAMES, raw / raw.sum(), strict=True))
            self._plans[name] = RoundPlan(send_to=tuple(p for p in NAMES if p != name), weights=weights, node=name)

    def plan(self, node: str, round: int) -> RoundPlan:
        return self._plans[node]

    def peers(self, node: str) -> tuple[str, ...]:
        return tuple(p for p in NAMES if p != node)


class FakeLink:
    """A :class:`~p2pfl.node.exchange.Link` whose sends are delivered by a :class:`FakeNet`."""

    def __init__(self, name: str, net: FakeNet, round_timeout: float) -> None:
        self.name = name
        self.round_timeout = round_timeout
        self.inbox = RoundInbox(max_rounds_ahead=4)
        self.net = net
        self.sent: list[tuple[tuple[str, ...], Kind, bool]] = []

    def plan(self, node: str, round_: int) -> RoundPlan:
        return self.net.schedule.plan(node, round_)

    def send(self, peers: Sequence[str], frames: Frames, *, control: bool = False) -> int:
        message = wire.decode(frames, schema=None)
        self.sent.append((tuple(peers), message.kind, control))
        for peer in peers:
            self.net.deliver(peer, frames)
        return sum(len(f) for f in frames) * len(peers)

    async def collect(self, round_: int, plan: RoundPlan, going_on: str) -> tuple[dict[str, Message], tuple[str, ...]]:
        received = await self.inbox.collect(round_, plan.expect_from, self.round_timeout)
        return received, tuple(p for p in plan.expect_from if p not in received)


class FakeNet:
    """Routes frames to the addressed exchange on the next loop turn, as a socket would."""

    def __init__(self, schedule: TableSchedule, down: Sequence[str] = (), codec: wire.Codec | None = None) -> None:
        self.schedule = schedule
        self.down = set(down)
        self.codec = codec  # compressed models are decoded against the model's schema
        self.exchanges: dict[str, Exchange] = {}
        self.refused: list[str] = []

    def deliver(self, peer: str, frames: Frames) -> None:
        if peer not in self.down:
            asyncio.get_running_loop().call_soon(self._receive, peer, [bytes(f) for f in frames])

    def _receive(self, peer: str, frames: list[bytes]) -> None:
        exchange = self.exchanges[peer]
        schema = wire.schema_of({"w": np.zeros(SHAPE, np.float32)}) if self.codec is not None else None
        message = wire.decode(frames, schema=schema, codec=self.codec)
        try:
            if message.kind in (Kind.MODEL, Kind.MASKED_MODEL):
                exchange.admit(message)
                exchange.offer(message)
            else:
                exchange.handlers()[Kind(message.kind)](message)
        except WireError as exc:
            self.refused.append(exc.reason)


def models(seed: int = 1) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {name: {"w": rng.normal(0, 1, SHAPE).astype(np.float32)} for name in NAMES}


def trained(name: str, weights: dict[str, np.ndarray], round_: int = 0) -> Trained:
    return Trained(round=round_, result=TrainResult(loss=0.5, steps=1, samples=10), weights=weights[name], seconds=0.0)


def weighted_mean(plan: RoundPlan, weights: dict[str, dict[str, np.ndarray]], present: Sequence[str]) -> np.ndarray:
    members = [plan.node, *present]
    total = sum(plan.weights[m] for m in members)
    return sum(plan.weights[m] / total * weights[m]["w"].astype(np.float64) for m in members)  # type: ignore[return-value]


async def run_all(net: FakeNet, weights: dict[str, dict[str, np.ndarray]]) -> dict[str, Exchanged]:
    running = [name for name in NAMES if name not in net.down]
    results = await asyncio.gather(*(net.exchanges[name].run(trained(name, weights)) for name in running))
    return dict(zip(running, results, strict=True))


async def test_sync_gossip_averages_every_neighbour_with_the_mixing_weights() -> None:
    net = FakeNet(TableSchedule())
    links = {name: FakeLink(name, net, round_timeout=10.0) for name in NAMES}
    net.exchanges = {name: SyncGossip(links[name], mix) for name in NAMES}
    weights = models()
    results = await run_all(net, weights)
    for name, result in results.items():
        plan = net.schedule.plan(name, 0)
        assert result.round == 0 and result.missing == ()
        assert result.received_from == plan.expect_from
        np.testing.assert_allclose(result.aggregate()["w"], weighted_mean(plan, weights, plan.expect_from), atol=1e-6)
        assert links[name].sent == [(plan.send_to, Kind.MODEL, False)]
        assert net.exchanges[name].sent(0) is not None and net.exchanges[name].sent(1) is None
    assert net.refused == []


async def test_sync_gossip_leaves_a_silent_neighbour_out_and_renormalises() -> None:
    net = FakeNet(TableSchedule(seed=3), down=["d"])
    net.exchanges = {name: SyncGossip(FakeLink(name, net, round_timeout=0.2), mix) for name in NAMES}
    weights = models(seed=4)
    results = await run_all(net, weights)
    for name, result in results.items():
        plan = net.schedule.plan(name, 0)
        present = tuple(p for p in plan.expect_from if p != "d")
        assert result.missing == ("d",) and result.received_from == present
        np.testing.assert_allclose(result.aggregate()["w"], weighted_mean(plan, weights, present), atol=1e-6)


def test_plain_gossip_refuses_secure_aggregation_kinds() -> None:
    net = FakeNet(TableSchedule())
    for exchange in (SyncGossip(FakeLink("a", net, 1.0), mix),
                     AsyncGossip(FakeLink("a", net, 1.0), mix, staleness=0.5, grace=5)):
        masked = Message(kind=Kind.MASKED_MODEL, sender="b", round=0, samples=1, tensors={})
        with pytest.raises(WireError) as refused:
            exchange.admit(masked)
        assert refused.value.reason == "secagg_off"
        for kind in SECAGG_CONTROL_KINDS:
            with pytest.raises(WireError, match="secure aggregation is off"):
                exchange.handlers()[kind](Message(kind=kind, sender="b", round=0, samples=0, tensors={}))


async def test_async_gossip_merges_what_arrived_without_waiting() -> None:
    net = FakeNet(TableSchedule(seed=5))
    link = FakeLink("a", net, round_timeout=3600.0)  # a wait would hang the test: async never waits
    exchange = AsyncGossip(link, mix, staleness=0.5, grace=0)
    net.exchanges = {"a": exchange, "b": exchange, "c": exchange, "d": exchange}
    weights = models(seed=6)
    for peer, clock in (("b", 7), ("c", 2)):  # c lags 5 ticks: discounted (1 + 5) ** -0.5
        exchange.offer(Message(kind=Kind.MODEL, sender=peer, round=clock, samples=1, tensors=weights[peer],
                               meta=ASYNC_META, nbytes=100))
    result = await exchange.run(trained("a", weights, round_=7))
    plan = net.schedule.plan("a", 7)
    assert result.round == 7 and result.received_from == ("b", "c") and result.bytes_received == 200
    shares = {"b": plan.weights["b"], "c": plan.weights["c"] * 6**-0.5}
    shares["a"] = max(1 - sum(shares.values()), plan.weights["a"])
    total = sum(shares.values())
    expected = sum(shares[m] / total * weights[m]["w"].astype(np.float64) for m in shares)
    np.testing.assert_allclose(result.aggregate()["w"], expected, atol=1e-6)
    sent_to, kind, control = link.sent[0]
    assert sent_to == plan.send_to and kind == Kind.MODEL and not control
    assert exchange.sent(7) is None
    exchange.restarted("b")  # b's clock may start lower again
    exchange.offer(Message(kind=Kind.MODEL, sender="b", round=0, samples=1, tensors=weights["b"], meta=ASYNC_META))


@pytest.mark.parametrize("spec", ["fp16", "int8"])
async def test_compressed_sync_gossip_averages_the_decoded_models(spec: str) -> None:
    codec = wire.parse_codec(spec)
    assert codec is not None
    net = FakeNet(TableSchedule(), codec=codec)
    links = {name: FakeLink(name, net, round_timeout=10.0) for name in NAMES}
    feedback = {name: ErrorFeedback(codec, seed=i) for i, name in enumerate(NAMES)}
    net.exchanges = {name: SyncGossip(links[name], mix, feedback[name]) for name in NAMES}
    weights = models()
    results = await run_all(net, weights)
    tolerance = 2e-3 if spec == "fp16" else 0.05  # int8: one step of max|w| / 127
    for name, result in results.items():
        plan = net.schedule.plan(name, 0)
        assert result.received_from == plan.expect_from
        np.testing.assert_allclose(result.aggregate()["w"], weighted_mean(plan, weights, plan.expect_from),
                                   atol=tolerance)
        sent = wire.decode(net.exchanges[name].sent(0), schema=None)
        assert sent.meta == {"codec": spec}
    assert net.refused == []


async def test_compressed_async_gossip_keeps_its_meta() -> None:
    codec = wire.parse_codec("int8")
    assert codec is not None
    net = FakeNet(TableSchedule(seed=5), codec=codec)
    link = FakeLink("a", net, round_timeout=3600.0)
    exchange = AsyncGossip(link, mix, staleness=0.5, grace=0, feedback=ErrorFeedback(codec, seed=0))
    sent: list[list[bytes]] = []
    net.deliver = lambda peer, frames: sent.append([bytes(f) for f in frames])  # type: ignore[method-assign]
    await exchange.run(trained("a", models(seed=6), round_=3))
    assert sent and wire.decode(sent[0], schema=None).meta == {"async": True, "codec": "int8"}


class ThreadNoting(ErrorFeedback):
    """Error feedback that notes which thread compressed."""

    threads: list[int]

    def encode(self, tensors, key=None):  # type: ignore[no-untyped-def]
        self.threads.append(threading.get_ident())
        return super().encode(tensors, key)


async def test_compression_runs_off_the_event_loop() -> None:
    """A codec's passes over a large model must not stall the nodes sharing the loop."""
    codec = wire.parse_codec("topk:0.1")
    assert codec is not None
    net = FakeNet(TableSchedule(seed=5), codec=codec)
    feedback = ThreadNoting(codec, seed=0)
    feedback.threads = []
    sync = SyncGossip(FakeLink("a", net, round_timeout=0.01), mix, feedback)
    asynchronous = AsyncGossip(FakeLink("a", net, round_timeout=3600.0), mix, staleness=0.5, grace=0, feedback=feedback)
    await sync.run(trained("a", models()))
    await asynchronous.run(trained("a", models(), round_=1))
    assert len(feedback.threads) == 2 and threading.get_ident() not in feedback.threads


# Secure aggregation's exchange is driven in tests/unit/test_secagg_protocol.py (honest
# rounds, dropouts) and tests/unit/test_secagg_attacks.py (a deviating receiver).


async def test_arrivals_wait_until_every_expected_sender_or_the_deadline() -> None:
    from p2pfl.node.arrivals import Arrivals

    arrivals, got = Arrivals(), set()
    loop = asyncio.get_running_loop()
    for sender in "ab":
        loop.call_soon(lambda s=sender: (got.add(s), arrivals.notify()))
    assert await arrivals.until(lambda: {"a", "b"} <= got, timeout=10.0)
    assert not await arrivals.until(lambda: "c" in got, timeout=0.01)  # nobody sends c: the deadline
    arrivals.notify()  # an earlier notification does not end a wait for the next one
    loop.call_soon(arrivals.notify)
    assert await arrivals.next(timeout=10.0)
