"""Membership changes while training runs: a member leaves with a goodbye, a new one joins."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import zmq.asyncio

from p2pfl import StaticSchedule, build_topology
from p2pfl.simulation.pacing import PacedExecutor
from p2pfl.testing import tiny_node

TIMEOUT = 30.0


class RoundEvents:
    """Observer: an event per finished round of one node."""

    def __init__(self) -> None:
        self.finished: dict[int, asyncio.Event] = {}

    def event(self, round_: int) -> asyncio.Event:
        return self.finished.setdefault(round_, asyncio.Event())

    def on_round_end(self, metrics, weights) -> None:
        self.event(metrics.round).set()


def paced_node(context, name, schedule, worker, *, rounds, observer=None, round_timeout=600.0):
    """A node whose rounds last at least 50 ms, so others can come and go meanwhile."""
    executor = PacedExecutor(worker, asyncio.get_running_loop(), factor=1, step_seconds=0.05)
    return tiny_node(context, name, schedule=schedule, rounds=rounds, round_timeout=round_timeout,
                     executor=executor, observer=observer)


async def test_a_node_that_leaves_says_so_and_is_not_waited_for():
    context = zmq.asyncio.Context()
    schedule = StaticSchedule(build_topology("ring", 3))
    leaver_done = RoundEvents()
    try:
        with ThreadPoolExecutor(1) as worker:
            # with a 600 s deadline, only the goodbye lets the others go on without it
            async with paced_node(context, "0", schedule, worker, rounds=8) as a, \
                    paced_node(context, "1", schedule, worker, rounds=8) as b:
                leaver = paced_node(context, "2", schedule, worker, rounds=2, observer=leaver_done)
                async with leaver:
                    for node in (a, b, leaver):
                        for other in (a, b, leaver):
                            if other is not node:
                                node.add_peer(other.name, other.endpoint)
                    runs = asyncio.gather(a.run(), b.run())
                    await asyncio.wait_for(leaver.run(), TIMEOUT)
                # leaving the block closed it gracefully: "bye"
                history_a, history_b = await asyncio.wait_for(runs, TIMEOUT)
    finally:
        context.term()
    for history in (history_a, history_b):
        assert [m.round for m in history] == list(range(8))
        assert "2" not in history[-1].received_from


async def test_a_new_node_joins_a_running_training_and_catches_up(caplog):
    caplog.set_level(logging.INFO, logger="p2pfl")
    context = zmq.asyncio.Context()
    before = StaticSchedule(build_topology("complete", 3))
    after = StaticSchedule(build_topology("complete", 4))
    progress = RoundEvents()
    rounds = 24
    try:
        with ThreadPoolExecutor(1) as worker:
            founders = [paced_node(context, str(i), before, worker, rounds=rounds, observer=progress if i == 0 else None)
                        for i in range(3)]
            newcomer = paced_node(context, "3", after, worker, rounds=rounds)
            async with founders[0], founders[1], founders[2], newcomer:
                for node in founders:
                    for other in founders:
                        if other is not node:
                            node.add_peer(other.name, other.endpoint)
                running = asyncio.gather(*(node.run() for node in founders))
                await asyncio.wait_for(progress.event(4).wait(), TIMEOUT)
                # what a consortium-file reload does on every member: the new topology
                endpoints = {node.name: node.endpoint for node in (*founders, newcomer)}
                for node in founders:
                    node.update_membership(after, endpoints)
                for name in ("0", "1", "2"):
                    newcomer.add_peer(name, endpoints[name])
                async with asyncio.timeout(TIMEOUT):
                    from p2pfl.node.peers import StartCondition

                    await newcomer.wait_until_ready(StartCondition.parse("min:1"), hello_interval=0.05)
                joined = await asyncio.wait_for(newcomer.run(), TIMEOUT)
                histories = await asyncio.wait_for(running, TIMEOUT)
    finally:
        context.term()
    # it took the running model and round instead of starting over from round 0
    assert joined[0].round >= 5 and joined[-1].round == rounds - 1
    assert "took the model of" in caplog.text and "neighbours are now" in caplog.text
    for history in histories:
        assert [m.round for m in history] == list(range(rounds))
        assert "3" in history[-1].received_from  # the founders average with the newcomer
