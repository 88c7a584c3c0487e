"""Gossip schedules: static plans from W, random-peer plans that all nodes agree on."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from p2pfl.errors import TopologyError
from p2pfl.topology import (
    GossipSchedule,
    RandomPeerSchedule,
    RoundPlan,
    StaticSchedule,
    build_topology,
    mixing_matrix_for_round,
)

HOSPITALS = Path(__file__).resolve().parents[2] / "topologies" / "hospitals-10.graphml"
NAMES = [f"node-{i:02d}" for i in range(12)]


def test_static_plans_match_the_mixing_matrix() -> None:
    topo = build_topology("small-world", 10, seed=2)
    schedule = StaticSchedule(topo)
    assert isinstance(schedule, GossipSchedule)
    for round_ in (0, 5):
        np.testing.assert_allclose(mixing_matrix_for_round(schedule, topo.names, round_), topo.mixing)
    for i, name in enumerate(topo.names):
        plan = schedule.plan(name, 3)
        neighbours = tuple(sorted(topo.names[j] for j in topo.neighbours(i)))
        assert plan.send_to == neighbours
        assert plan.expect_from == neighbours
        assert schedule.peers(name) == neighbours
        assert plan.weights[name] == pytest.approx(topo.mixing[i, i])
        assert math.fsum(plan.weights.values()) == pytest.approx(1.0)


def test_static_schedule_with_named_nodes() -> None:
    topo = build_topology(str(HOSPITALS))
    plan = StaticSchedule(topo).plan("charite", 0)
    assert "st-marys" in plan.send_to
    with pytest.raises(TopologyError, match="unknown node 'nowhere'"):
        StaticSchedule(topo).plan("nowhere", 0)


def test_random_peer_schedule_is_consistent() -> None:
    schedule = RandomPeerSchedule(NAMES, fanout=3, seed=11)
    for round_ in range(20):
        plans = {name: schedule.plan(name, round_) for name in NAMES}
        for name, plan in plans.items():
            assert len(plan.send_to) == 3
            assert name not in plan.send_to
            assert math.fsum(plan.weights.values()) == pytest.approx(1.0)
            k = len(plan.expect_from)
            assert all(w == pytest.approx(1 / (1 + k)) for w in plan.weights.values())
            for peer in plan.send_to:
                assert name in plans[peer].expect_from
            for peer in plan.expect_from:
                assert name in plans[peer].send_to
        w = mixing_matrix_for_round(schedule, NAMES, round_)
        np.testing.assert_allclose(w.sum(axis=1), 1.0)
        assert (np.diag(w) > 0).all()


def test_random_peer_schedule_is_deterministic() -> None:
    a = RandomPeerSchedule(NAMES, fanout=2, seed=5)
    b = RandomPeerSchedule(list(reversed(NAMES)), fanout=2, seed=5)  # member order must not matter
    c = RandomPeerSchedule(NAMES, fanout=2, seed=6)
    sends = lambda s, r: [s.plan(n, r).send_to for n in NAMES]  # noqa: E731
    assert all(sends(a, r) == sends(b, r) for r in range(10))
    assert any(sends(a, r) != sends(c, r) for r in range(10))
    assert any(sends(a, r) != sends(a, r + 1) for r in range(10))
    # Out of the cache and back: same answer.
    first = sends(a, 0)
    for r in range(1, 40):
        a.plan(NAMES[0], r)
    assert sends(a, 0) == first


def test_random_peer_schedule_peers_and_validation() -> None:
    schedule = RandomPeerSchedule(["a", "b", "c"], fanout=2, seed=0)
    assert schedule.peers("b") == ("a", "c")
    assert schedule.plan("a", 0).send_to == ("b", "c")  # fanout n-1 means everyone
    with pytest.raises(TopologyError, match=r"1 <= fanout < 3"):
        RandomPeerSchedule(["a", "b", "c"], fanout=3, seed=0)
    with pytest.raises(TopologyError, match=r"1 <= fanout < 3"):
        RandomPeerSchedule(["a", "b", "c"], fanout=0, seed=0)
    with pytest.raises(TopologyError, match=r"duplicated: \['a'\]"):
        RandomPeerSchedule(["a", "a", "c"], fanout=1, seed=0)
    with pytest.raises(TopologyError, match="at least 2 members"):
        RandomPeerSchedule(["a"], fanout=1, seed=0)
    with pytest.raises(TopologyError, match="round must be a non-negative integer"):
        schedule.plan("a", -1)
    with pytest.raises(TopologyError, match="unknown node 'z'"):
        schedule.plan("z", 0)


def test_round_plan_validates_weights() -> None:
    plan = RoundPlan(send_to=("c", "b"), weights={"a": 0.5, "b": 0.5}, node="a")
    assert plan.send_to == ("b", "c")
    assert plan.expect_from == ("b",)
    with pytest.raises(TypeError):
        plan.weights["a"] = 1.0  # type: ignore[index]
    with pytest.raises(TopologyError, match="sum to 0.9"):
        RoundPlan(send_to=(), weights={"a": 0.5, "b": 0.4}, node="a")
    with pytest.raises(TopologyError, match="must include the node's own weight"):
        RoundPlan(send_to=(), weights={"b": 1.0}, node="a")
    with pytest.raises(TopologyError, match="not itself"):
        RoundPlan(send_to=("a",), weights={"a": 1.0}, node="a")
