"""A node resumed after its neighbours finished stops with a clear error, not a wait forever (issue 16).

Its neighbours run on without it (one deadline, then they stop waiting) and finish; the
resumed node then greets them: a finished neighbour still up answers "finished", one
that exited answers nothing; either way the node stops within one round deadline.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from p2pfl.errors import PeersGoneError
from p2pfl.node.node import Node
from p2pfl.testing import connected_nodes, run_all, tiny_node

ROUNDS = 4
TIMEOUT = 30.0


async def _run_without(nodes: list[Node], victim: Node, stop_after: int) -> None:
    """Everyone runs all rounds but ``victim``, which crashes after ``stop_after``."""

    async def crash() -> None:
        await victim.run(until_round=stop_after)
        await victim.close(graceful=False)

    others = [node.run() for node in nodes if node is not victim]
    await asyncio.wait_for(asyncio.gather(*others, crash()), TIMEOUT)


async def test_a_resumed_node_whose_neighbours_finished_and_still_answer_stops_at_once_saying_so(context):
    async with connected_nodes("ring", 3, transport="tcp", context=context, rounds=ROUNDS, round_timeout=1.0) as nodes:
        victim = nodes[2]
        await _run_without(nodes, victim, stop_after=1)
        # the neighbours finished and are still up (lingering): they answer "finished"
        resumed = tiny_node(context, "2", rounds=ROUNDS, round_timeout=60.0, bind=victim.endpoint, start_round=2)
        async with resumed:
            for node in nodes[:2]:
                resumed.add_peer(node.name, node.endpoint)
            with pytest.raises(PeersGoneError, match=r"resumed at round 2, but its neighbours 0, 1 finished "
                               r"the run \(last round 3\): nobody is left to train with"):
                # long before its 60 s deadline: it knows they finished
                await asyncio.wait_for(resumed.wait_to_resume(hello_interval=0.05), TIMEOUT)


async def test_a_resumed_node_whose_neighbours_exited_stops_after_one_round_deadline(context):
    deadline = 1.0
    async with connected_nodes("ring", 3, transport="tcp", context=context, rounds=ROUNDS, round_timeout=1.0) as nodes:
        victim = nodes[2]
        await _run_without(nodes, victim, stop_after=1)
        for node in nodes[:2]:
            await node.close()  # the neighbours exited
        resumed = tiny_node(context, "2", rounds=ROUNDS, round_timeout=deadline, bind=victim.endpoint, start_round=2)
        async with resumed:
            for node in nodes[:2]:
                resumed.add_peer(node.name, node.endpoint)
            started = time.monotonic()
            with pytest.raises(PeersGoneError, match=r"no neighbour \(0, 1\) answered within 1 s since resuming: "
                               r"they finished the run or are down"):
                await asyncio.wait_for(resumed.wait_to_resume(hello_interval=0.05), TIMEOUT)
            assert deadline <= time.monotonic() - started < deadline + 2.0


async def test_nodes_resumed_together_find_each_other_and_run_their_remaining_rounds():
    async with connected_nodes("ring", 3, rounds=ROUNDS, round_timeout=60.0, start_round=2) as nodes:
        await asyncio.wait_for(asyncio.gather(*(node.wait_to_resume(hello_interval=0.05) for node in nodes)), TIMEOUT)
        histories = await run_all(nodes, timeout=TIMEOUT)
    for node in nodes:
        assert [m.round for m in histories[node.name]] == [2, 3]
        assert all(len(m.received_from) == 2 for m in histories[node.name])


async def test_finished_nodes_linger_only_until_every_neighbour_finished(context):
    async with connected_nodes("ring", 3, context=context, rounds=2, round_timeout=60.0) as nodes:
        await asyncio.wait_for(asyncio.gather(*(node.run() for node in nodes)), TIMEOUT)
        # each says "finished" to the others as it starts lingering: none waits its 60 s out
        await asyncio.wait_for(asyncio.gather(*(node.linger(60.0) for node in nodes)), TIMEOUT)
        for node in nodes:
            assert node.peers.finished() == {peer: 1 for peer in node.peers.peers}


class BrokerSaysFinished:
    """What MQTT discovery reports for neighbours whose retained status is ``finished``."""

    def __init__(self, finished: set[str]) -> None:
        self.finished = finished

    def is_offline(self, peer: str) -> bool:
        return peer in self.finished

    def has_finished(self, peer: str) -> bool:
        return peer in self.finished

    def subscribe(self, callback) -> None:
        pass


async def test_a_resumed_node_takes_the_brokers_word_that_its_neighbours_finished(context):
    node = tiny_node(context, "0", rounds=ROUNDS, round_timeout=60.0, start_round=2,
                     presence=BrokerSaysFinished({"1", "2"}))
    async with node:
        node.add_peer("1", "tcp://127.0.0.1:1")  # exited: nobody listens there
        node.add_peer("2", "tcp://127.0.0.1:1")
        with pytest.raises(PeersGoneError, match=r"its neighbours 1, 2 finished the run: nobody is left"):
            await asyncio.wait_for(node.wait_to_resume(hello_interval=0.05), TIMEOUT)
