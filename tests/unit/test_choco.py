"""CHOCO gossip's exchange driven alone: fake links route frames between three nodes; the
public copies stay bit-identical, a lost difference is noticed and resent in full, and
every malformed or unasked message is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from p2pfl import wire
from p2pfl.errors import ConfigError, WireError
from p2pfl.learning.learner import TrainResult
from p2pfl.node.choco_copies import fingerprint
from p2pfl.node.exchange import Frames, Trained
from p2pfl.node.gossip_choco import CHOCO_META, ChocoGossip
from p2pfl.node.inbox import RoundInbox
from p2pfl.settings import SETTINGS, parse_gossip
from p2pfl.simulation.config import ExperimentConfig
from p2pfl.topology.schedule import RoundPlan
from p2pfl.wire import Kind, Message

NAMES = ("a", "b", "c")
SHAPE = (4, 6)
SCHEMA = wire.schema_of({"w": np.zeros(SHAPE, np.float32)})
CODEC = wire.parse_codec("topk:0.25")
PLANS = {n: RoundPlan(send_to=tuple(p for p in NAMES if p != n), weights=dict.fromkeys(NAMES, 1 / 3), node=n)
         for n in NAMES}


class Link:
    def __init__(self, name: str, net: Net) -> None:
        self.name, self.net = name, net
        self.round_timeout = 0.2
        self.inbox = RoundInbox(max_rounds_ahead=4)
        self.kinds: list[Kind] = []

    def plan(self, node: str, round_: int) -> RoundPlan:
        return PLANS[node]

    def send(self, peers: Sequence[str], frames: Frames, *, control: bool = False) -> int:
        self.kinds.append(wire.decode(frames, schema=None).kind)
        for peer in peers:
            self.net.deliver(self.name, peer, [bytes(f) for f in frames])
        return sum(len(f) for f in frames) * len(peers)

    async def collect(self, round_: int, plan: RoundPlan, going_on: str) -> tuple[dict[str, Message], tuple[str, ...]]:
        received = await self.inbox.collect(round_, plan.expect_from, self.round_timeout)
        return received, tuple(p for p in plan.expect_from if p not in received)


class Net:
    """Delivers on the next loop turn; ``drop(sender, peer, kind)`` True loses a message."""

    def __init__(self, initial: dict[str, np.ndarray], drop: Callable[[str, str, Kind], bool] | None = None) -> None:
        self.drop = drop
        self.refused: list[str] = []
        self.links = {n: Link(n, self) for n in NAMES}
        self.nodes = {n: ChocoGossip(self.links[n], gamma=0.5, codec=CODEC, seed=i, initial=initial, mode="sync")
                      for i, n in enumerate(NAMES)}

    def deliver(self, sender: str, peer: str, frames: list[bytes]) -> None:
        kind = wire.decode(frames, schema=None).kind
        if self.drop is None or not self.drop(sender, peer, kind):
            asyncio.get_running_loop().call_soon(self._receive, peer, frames)

    def _receive(self, peer: str, frames: list[bytes]) -> None:
        node = self.nodes[peer]
        try:
            message = wire.decode(frames, schema=SCHEMA, codec=CODEC)
            if message.kind == Kind.MODEL:
                node.admit(message)
                node.offer(message)
            else:
                node.handlers()[Kind(message.kind)](message)
        except WireError as exc:
            self.refused.append(exc.reason)

    async def rounds(self, count: int, start: dict[str, dict[str, np.ndarray]], first: int = 0) -> dict:
        rng = np.random.default_rng(first)
        x = start
        for round_ in range(first, first + count):
            trained = {n: Trained(round_, TrainResult(0.1, 1, 10), {"w": x[n]["w"] + rng.normal(0, 0.1, SHAPE)
                                                                    .astype(np.float32)}, 0.0) for n in NAMES}
            done = await asyncio.gather(*(self.nodes[n].run(trained[n]) for n in NAMES))
            x = {n: ex.aggregate() for n, ex in zip(NAMES, done, strict=True)}
        return x


def initial() -> dict[str, np.ndarray]:
    return {"w": np.random.default_rng(0).normal(0, 1, SHAPE).astype(np.float32)}


def copies_agree(net: Net) -> bool:
    """Every node's copy of every neighbour is that neighbour's own, bit for bit."""
    for n, node in net.nodes.items():
        for p in NAMES:
            if p != n:
                hat = node.copies.in_step(p)
                if hat is None or fingerprint(hat) != net.nodes[p]._own[2]:
                    return False
    return True


async def test_public_copies_stay_bit_identical_and_models_reach_consensus():
    net = Net(initial())
    start = {n: {"w": initial()["w"] + i} for i, n in enumerate(NAMES)}
    spread = np.ptp([start[n]["w"] for n in NAMES], axis=0).mean()
    x = await net.rounds(30, start)
    assert net.refused == [] and copies_agree(net)
    assert np.ptp([x[n]["w"] for n in NAMES], axis=0).mean() < spread / 5


async def test_a_lost_difference_is_noticed_and_the_copy_resent_in_full():
    lost = []

    def drop(sender: str, peer: str, kind: Kind) -> bool:
        if (sender, peer, kind) == ("a", "b", Kind.MODEL) and len(net.links["a"].kinds) == 3 and not lost:
            lost.append(1)  # a's third difference never reaches b
            return True
        return False

    net = Net(initial(), drop)
    start = {n: initial() for n in NAMES}
    x = await net.rounds(4, start)  # the gap shows with the next difference
    assert lost and net.nodes["b"].copies.out_of_step() == ["a"]  # the gap was seen...
    await net.rounds(3, x, first=4)
    assert Kind.CHOCO_RESYNC in net.links["b"].kinds and Kind.CHOCO_STATE in net.links["a"].kinds
    assert net.refused == [] and copies_agree(net)  # ...and healed


async def test_a_restarted_neighbour_is_resynchronised():
    net = Net(initial())
    x = await net.rounds(2, {n: initial() for n in NAMES})
    net.nodes["c"].restarted("a")  # a greeted anew
    await net.rounds(3, x, first=2)
    assert Kind.CHOCO_STATE in net.links["a"].kinds and copies_agree(net)


def message(kind: Kind = Kind.MODEL, meta: dict | None = None, sender: str = "a", round_: int = 0) -> Message:
    return Message(kind=kind, sender=sender, round=round_, samples=1, tensors={"w": np.zeros(SHAPE, np.float32)},
                   meta={CHOCO_META: {"seq": 0, "crc": 0}} if meta is None else meta, nbytes=10)


@pytest.mark.parametrize(("meta", "reason"), [
    ({}, "gossip_mismatch"), ({CHOCO_META: 3}, "bad_header"), ({CHOCO_META: {"seq": -1, "crc": 0}}, "bad_header"),
    ({CHOCO_META: {"seq": 0, "crc": 2**32}}, "bad_header"), ({CHOCO_META: {"seq": True, "crc": 0}}, "bad_header"),
])
def test_malformed_differences_are_refused(meta, reason):
    node = Net(initial()).nodes["b"]
    with pytest.raises(WireError) as refused:
        node.admit(message(meta=meta))
    assert refused.value.reason == reason


async def test_replays_unasked_states_and_spoiled_states_are_refused():
    node = Net(initial()).nodes["b"]
    node.offer(message())
    with pytest.raises(WireError, match="already had") as replay:
        node.offer(message())
    assert replay.value.reason == "stale_round"
    state = message(Kind.CHOCO_STATE, {CHOCO_META: {"seq": 4, "crc": fingerprint(message().tensors)}})
    with pytest.raises(WireError) as unasked:
        node.handlers()[Kind.CHOCO_STATE](state)
    assert unasked.value.reason == "choco_unasked"
    node._asked["a"] = 0
    with pytest.raises(WireError) as spoiled:
        node.handlers()[Kind.CHOCO_STATE](message(Kind.CHOCO_STATE, {CHOCO_META: {"seq": 4, "crc": 1}}))
    assert spoiled.value.reason == "choco_crc"
    node.handlers()[Kind.CHOCO_STATE](state)  # asked and intact: taken


def test_resync_requests_are_rate_limited():
    net = Net(initial())
    ask = message(Kind.CHOCO_RESYNC, {}, sender="b")

    async def twice() -> None:
        net.nodes["a"].handlers()[Kind.CHOCO_RESYNC](ask)
        with pytest.raises(WireError) as again:
            net.nodes["a"].handlers()[Kind.CHOCO_RESYNC](ask)
        assert again.value.reason == "choco_rate_limited"

    asyncio.run(twice())
    assert net.links["a"].kinds == [Kind.CHOCO_STATE]


def test_an_unanswered_request_is_repeated_only_after_rounds_and_the_answerers_interval(monkeypatch):
    """An honest repeat must never meet the answerer's rate limit (fast async rounds)."""
    import p2pfl.node.gossip_choco as choco

    clock = [100.0]
    monkeypatch.setattr(choco.time, "monotonic", lambda: clock[0])
    net = Net(initial(), drop=lambda *_: True)  # every answer lost
    node = net.nodes["a"]
    asks = lambda: net.links["a"].kinds.count(Kind.CHOCO_RESYNC)  # noqa: E731
    node._round = 0
    node._ask(["b"])
    node._round = choco.ASK_AGAIN  # rounds enough, but within twice the interval
    clock[0] += 2 * choco.RESYNC_INTERVAL - 0.01
    node._ask(["b"])
    assert asks() == 1
    clock[0] += 0.02
    node._ask(["b"])
    assert asks() == 2


@pytest.mark.parametrize(("spec", "parsed"), [("plain", ("plain", 1.0)), ("choco", ("choco", 0.5)),
                                              ("choco:0.05", ("choco", 0.05)), ("choco:1", ("choco", 1.0))])
def test_gossip_setting_parses(spec, parsed):
    assert parse_gossip(spec) == parsed and SETTINGS["gossip"].problem(spec) is None


@pytest.mark.parametrize("spec", ["choco:0", "choco:1.5", "choco:x", "choco:", "chocolate", "plain:1", ""])
def test_bad_gossip_values_name_the_field_and_the_fix(spec):
    with pytest.raises(ConfigError) as info:
        ExperimentConfig(gossip=spec)
    assert info.value.field == "gossip" and ("choco:GAMMA" in str(info.value) or "(0, 1]" in str(info.value))


@pytest.mark.parametrize(("extra", "words"), [
    ({"secure_aggregation": True, "topology": "complete"}, "secure aggregation"),
    ({"aggregator": "median"}, "aggregator 'median'"),
    ({"fanout": 2}, "static topology"),
])
def test_choco_is_refused_where_it_cannot_work(extra, words):
    with pytest.raises(ConfigError) as info:
        ExperimentConfig(gossip="choco", **extra)
    assert info.value.field == "gossip" and words in str(info.value)


def test_report_titles_name_the_gossip() -> None:
    from p2pfl.report import run_title

    rows = [{"node": "0", "round": 0}]
    base = {"nodes": 16, "topology": "ring", "mode": "sync", "rounds": 40, "compress": "topk:0.02"}
    assert run_title({**base, "gossip": "choco"}, rows) == "ring, 16 nodes, sync, 40 rounds, compress topk:0.02, gossip choco"
    assert run_title({**base, "gossip": "plain"}, rows) == "ring, 16 nodes, sync, 40 rounds, compress topk:0.02"


def test_every_config_takes_gossip_and_refuses_it_with_secure_aggregation() -> None:
    from p2pfl.consortium.bundle import NODE_KEYS
    from p2pfl.consortium.description import TrainingSettings
    from p2pfl.deploy.config import OrgNodeConfig
    from p2pfl.node.records import NodeConfig

    assert "gossip" in NODE_KEYS
    assert TrainingSettings(learner="pkg.mod:build", gossip="choco:0.3").gossip == "choco:0.3"
    assert NodeConfig(name="a", rounds=2, gossip="choco").gossip == "choco"
    node = {"name": "a", "bind": "tcp://0.0.0.0:7002", "peers": {"b": "tcp://b:7002"}, "insecure": True,
            "learner": "pkg.mod:build"}
    assert OrgNodeConfig(**node, gossip="choco").gossip == "choco"
    for make in (lambda: TrainingSettings(learner="pkg.mod:build", gossip="choco", secure_aggregation=True),
                 lambda: OrgNodeConfig(**{**node, "insecure": False, "secret_key": "k"}, gossip="choco",
                                       secure_aggregation=True)):
        with pytest.raises(ConfigError) as info:
            make()
        assert info.value.field == "gossip"


def test_a_difference_that_overflows_the_copy_takes_it_out_of_step():
    from p2pfl.node.choco_copies import Event, PublicCopies

    start = {"w": np.full(SHAPE, 3e38, np.float32)}
    copies = PublicCopies(start)
    huge = {"w": np.full(SHAPE, 3e38, np.float32)}
    copies.apply([Event("diff", "a", 0, 0, huge, fingerprint(huge))])
    assert copies.out_of_step() == ["a"] and copies.in_step("a") is None
