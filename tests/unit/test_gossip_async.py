"""Asynchronous gossip's pieces: the per-neighbour latest-model store, staleness weights,
and the paced executor that emulates slower hardware."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from p2pfl.errors import ConfigError, WireError
from p2pfl.node.gossip_async import LatestModels, staleness_weights
from p2pfl.node.records import NodeConfig
from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.pacing import PacedExecutor
from p2pfl.wire import Message


def message(sender: str, round_: int) -> Message:
    return Message(kind="model", sender=sender, round=round_, samples=1, tensors={}, meta={}, nbytes=10)


def test_latest_models_keeps_the_newest_per_sender_and_refuses_older_or_replayed():
    store = LatestModels()
    store.offer(message("a", 3))
    store.offer(message("a", 5))  # newer replaces
    store.offer(message("b", 1))
    with pytest.raises(WireError) as replay:
        store.offer(message("a", 5))
    assert replay.value.reason == "stale_round"
    with pytest.raises(WireError):
        store.offer(message("a", 4))  # overtaken on the way
    taken = store.take()
    assert list(taken) == ["a", "b"] and taken["a"].round == 5
    assert store.take() == {} and store.pending() == 0
    with pytest.raises(WireError):  # merged once: its replay is refused, too
        store.offer(message("a", 5))
    store.forget("a")  # restarted: its clock starts lower again
    store.offer(message("a", 0))
    assert store.take()["a"].round == 0


RING = {"me": 1 / 3, "l": 1 / 3, "r": 1 / 3}


def test_fresh_models_get_their_mixing_weight_and_the_node_keeps_the_rest():
    merge = staleness_weights("me", 10, {"l": 10, "r": 12}, lambda _: RING, staleness=0.5, grace=5)
    assert merge.weights == pytest.approx(RING)
    assert merge.clock == 10  # upper median of 10, 10, 12: where the neighbourhood is
    alone = staleness_weights("me", 10, {"l": 9}, lambda _: RING, staleness=0.5, grace=5)
    assert alone.weights == pytest.approx({"l": 1 / 3, "me": 2 / 3})  # r's share stays home
    assert alone.clock == 10


def test_models_older_than_the_grace_are_discounted_polynomially():
    merge = staleness_weights("me", 30, {"l": 22, "r": 30}, lambda _: RING, staleness=0.5, grace=5)
    assert merge.weights["l"] == pytest.approx(1 / 3 * (1 + 3) ** -0.5)  # 8 behind = 3 past the grace
    assert merge.weights["r"] == pytest.approx(1 / 3)
    assert sum(merge.weights.values()) == pytest.approx(1.0)
    off = staleness_weights("me", 30, {"l": 0}, lambda _: RING, staleness=0.0, grace=0)
    assert off.weights["l"] == pytest.approx(1 / 3)


def test_the_node_keeps_at_least_its_nominal_share():
    # shares from other rounds of a time-varying schedule may add up to more than 1
    heavy = {"me": 0.2, "a": 0.4, "b": 0.4, "c": 0.4}
    merge = staleness_weights("me", 3, {"a": 3, "b": 3, "c": 3}, lambda _: heavy, staleness=0.5, grace=5)
    assert merge.weights["me"] == pytest.approx(0.2)


def test_modes_and_speeds_are_validated_with_the_field_named():
    with pytest.raises(ConfigError, match="mode"):
        NodeConfig(name="a", rounds=1, mode="eventually")
    with pytest.raises(ConfigError, match="staleness"):
        ExperimentConfig(staleness=-1)
    with pytest.raises(ConfigError, match="slowdown"):
        ExperimentConfig(slow_nodes=2)
    with pytest.raises(ConfigError, match="slow_nodes"):
        ExperimentConfig(slowdown=5)
    with pytest.raises(ConfigError, match="slow_nodes"):
        ExperimentConfig(nodes=4, slow_nodes=5, slowdown=2)
    with pytest.raises(ConfigError, match="secure_aggregation"):
        ExperimentConfig(mode="async", secure_aggregation=True, topology="random-regular:4")


async def test_paced_jobs_take_their_emulated_time_off_the_shared_worker():
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as worker:
        slow = PacedExecutor(worker, loop, factor=20, step_seconds=0.05)  # 1 s: far apart, even under load
        normal = PacedExecutor(worker, loop, factor=1, step_seconds=0.05)
        started = time.monotonic()
        slow_job = loop.run_in_executor(slow, lambda: "slow")
        # the slow node's waiting does not hold the worker: the normal job finishes first
        assert await loop.run_in_executor(normal, lambda: "normal") == "normal"
        normal_done = time.monotonic() - started
        assert not slow_job.done()
        assert await slow_job == "slow"
        slow_done = time.monotonic() - started
    assert 0.05 <= normal_done < 1.0
    assert slow_done >= 1.0

    def broken() -> None:
        raise ValueError("boom")

    with ThreadPoolExecutor(1) as worker, pytest.raises(ValueError, match="boom"):
        await loop.run_in_executor(PacedExecutor(worker, loop, factor=2, step_seconds=0.01), broken)


def test_a_slow_node_takes_its_neighbours_clock_but_one_liar_cannot_end_its_training():
    slow = staleness_weights("me", 8, {"l": 36, "r": 37}, lambda _: RING, staleness=0.5, grace=5)
    assert slow.clock == 36
    lied = staleness_weights("me", 8, {"l": 36, "r": 39}, lambda _: RING, staleness=0.5, grace=5)
    assert lied.clock == 36  # "r" claims the last round (39): the honest neighbour decides
    # the clocks of neighbours with nothing fresh this time count too
    known = staleness_weights(
        "me", 8, {"r": 39}, lambda _: RING, staleness=0.5, grace=5, neighbour_clocks={"l": 30, "r": 39}
    )
    assert known.clock == 30
    never_back = staleness_weights("me", 12, {"l": 3}, lambda _: RING, staleness=0.5, grace=5)
    assert never_back.clock == 12  # a clock never moves back
