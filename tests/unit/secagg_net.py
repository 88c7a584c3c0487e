"""A fake network of secure-aggregation exchanges (no node, no sockets) for the protocol tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from p2pfl import wire
from p2pfl.aggregation.base import mix
from p2pfl.errors import WireError
from p2pfl.learning.learner import TrainResult
from p2pfl.node.exchange import Exchanged, Frames, Trained
from p2pfl.node.inbox import RoundInbox
from p2pfl.privacy.secagg import SecureAggregation, generate_keys
from p2pfl.topology.schedule import RoundPlan
from p2pfl.wire import Kind, Message

SIZE = 64


class CompleteSchedule:
    """Every member a neighbour of every other, with random (public) mixing weights."""

    def __init__(self, names: Sequence[str], seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.names = tuple(names)
        self._plans = {}
        for name in names:
            raw = rng.random(len(names)) + 0.1
            weights = dict(zip(names, raw / raw.sum(), strict=True))
            self._plans[name] = RoundPlan(send_to=tuple(p for p in names if p != name), weights=weights, node=name)

    def plan(self, node: str, round: int) -> RoundPlan:
        return self._plans[node]

    def peers(self, node: str) -> tuple[str, ...]:
        return tuple(p for p in self.names if p != node)


class Link:
    def __init__(self, name: str, net: Net, round_timeout: float) -> None:
        self.name = name
        self.round_timeout = round_timeout
        self.inbox = RoundInbox(max_rounds_ahead=4)
        self.net = net
        self.sent: list[tuple[tuple[str, ...], Kind, bool]] = []
        self.models_sent: dict[int, int] = {}  # round -> masked models sent
        self.die_after_models = False  # a crash right after its masked models went out

    def plan(self, node: str, round_: int) -> RoundPlan:
        return self.net.schedule.plan(node, round_)

    def send(self, peers: Sequence[str], frames: Frames, *, control: bool = False) -> int:
        if self.name in self.net.down:
            return 0
        message = wire.decode(frames, schema=None)
        self.sent.append((tuple(peers), Kind(message.kind), control))
        for peer in peers:
            self.net.deliver(peer, frames)
        if message.kind == Kind.MASKED_MODEL:
            count = self.models_sent[message.round] = self.models_sent.get(message.round, 0) + 1
            if self.die_after_models and count == len(self.plan(self.name, message.round).send_to):
                self.net.down.add(self.name)
        return sum(len(f) for f in frames) * len(peers)

    async def collect(self, round_: int, plan: RoundPlan, going_on: str) -> tuple[dict[str, Message], tuple[str, ...]]:
        received = await self.inbox.collect(round_, plan.expect_from, self.round_timeout,
                                            skip=lambda peer: peer in self.net.down)
        return received, tuple(p for p in plan.expect_from if p not in received)


class Net:
    """Routes frames to the addressed exchange on the next loop turn, as a socket would."""

    def __init__(self, names: Sequence[str], seed: int = 0, round_timeout: float = 5.0,
                 exchange_classes: dict[str, type] | None = None, masking: bool = True) -> None:
        self.schedule = CompleteSchedule(names, seed)
        self.names = tuple(names)
        self.down: set[str] = set()
        self.refused: list[tuple[str, str]] = []  # (refusing node, reason)
        self.keys = generate_keys(names)
        self.links = {name: Link(name, self, round_timeout) for name in names}
        self.secure = {name: SecureAggregation(self.keys[name], masking=masking) for name in names}
        schema = {"w": wire.TensorSpec("float32", (SIZE,))}
        self.exchanges = {}
        for name in names:
            cls = (exchange_classes or {}).get(name)
            if cls is None:
                self.exchanges[name] = self.secure[name].build_exchange(
                    self.links[name], mode="sync", aggregator=mix, schema=schema)
            else:  # a deviating member: the same protocol state, other conduct
                self.secure[name].bind(schema)
                self.exchanges[name] = cls(self.secure[name], self.links[name])
        rng = np.random.default_rng(seed + 1)
        self.models = {name: {"w": rng.normal(0, 1, SIZE).astype(np.float32)} for name in names}

    def deliver(self, peer: str, frames: Frames) -> None:
        if peer not in self.down:
            asyncio.get_running_loop().call_soon(self._receive, peer, [bytes(f) for f in frames])

    def _receive(self, peer: str, frames: list[bytes]) -> None:
        if peer in self.down:
            return
        exchange = self.exchanges[peer]
        message = wire.decode(frames, schema=None)
        try:
            if message.kind == Kind.MASKED_MODEL:
                exchange.admit(message)
                exchange.offer(message)
            else:
                exchange.handlers()[Kind(message.kind)](message)
        except WireError as exc:
            self.refused.append((peer, exc.reason))

    async def round(self, round_: int, names: Sequence[str] | None = None) -> dict[str, Exchanged]:
        running = [n for n in (names or self.names) if n not in self.down]
        results = await asyncio.gather(*(self.exchanges[n].run(self.trained(n, round_)) for n in running))
        return dict(zip(running, results, strict=True))

    def trained(self, name: str, round_: int) -> Trained:
        return Trained(round=round_, result=TrainResult(loss=0.5, steps=1, samples=10),
                       weights=self.models[name], seconds=0.0)

    def weighted_mean(self, node: str, present: Sequence[str]) -> np.ndarray:
        plan = self.schedule.plan(node, 0)
        members = [node, *present]
        total = sum(plan.weights[m] for m in members)
        return sum(plan.weights[m] / total * self.models[m]["w"].astype(np.float64) for m in members)  # type: ignore[return-value]
