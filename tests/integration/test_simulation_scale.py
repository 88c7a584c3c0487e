"""Hundreds of nodes in one process, and the inproc links that make thousands fit."""

from __future__ import annotations

import asyncio

import pytest
import zmq

from p2pfl import ExperimentConfig, simulate
from p2pfl.transport import TransportOptions, ZmqTransport


async def test_three_hundred_nodes_on_a_random_regular_graph_give_every_round():
    # a DEALER per peer needed 1,500 sockets here: over ZeroMQ's default cap of 1,023
    config = ExperimentConfig(
        nodes=300, topology="random-regular:4", model="logreg", partition="iid", rounds=2
    )
    result = await simulate(config)
    assert result.summary["rounds_completed"] == 2
    assert [r.nodes for r in result.rounds] == [300, 300]
    assert len(result.rows) == 600
    # each node sent its model to its 4 neighbours in each round: nothing was dropped
    assert result.summary["messages_rejected"] == {}


async def _received(transport: ZmqTransport, count: int) -> list[list[bytes]]:
    got: list[list[bytes]] = []
    done = asyncio.Event()

    def handler(incoming):  # type: ignore[no-untyped-def]
        got.append([bytes(f) for f in incoming.frames])
        if len(got) >= count:
            done.set()

    transport.listen(handler)
    await asyncio.wait_for(done.wait(), 5)
    return got


async def test_inproc_peers_share_one_sending_socket_with_a_queue_each():
    context = zmq.Context()
    small = TransportOptions(send_hwm=1, recv_hwm=1)
    sender = ZmqTransport(context, "inproc://scale-a", small)
    receivers = [ZmqTransport(context, f"inproc://scale-{name}", small) for name in "bc"]
    try:
        sender.start()
        for receiver in receivers:
            receiver.start()
        sender.connect("b", "inproc://scale-b")
        sender.connect("c", "inproc://scale-c")
        assert sender.peers == ("b", "c")
        assert sender.send("b", [b"to b", b"x"]) and sender.send("c", [b"to c"])
        assert await _received(receivers[0], 1) == [[b"to b", b"x"]]
        assert await _received(receivers[1], 1) == [[b"to c"]]
        receivers[0].close()
        sender.disconnect("b")
        with pytest.raises(Exception, match="no link to peer 'b'"):
            sender.send("b", [b"lost"])
        # reopened at once: a fresh routing id (libzmq aborts on one still held by a closing pipe)
        receivers[0] = ZmqTransport(context, "inproc://scale-b2", small)
        receivers[0].start()
        sender.connect("b", "inproc://scale-b2")
        assert sender.send("b", [b"again"])
        assert await _received(receivers[0], 1) == [[b"again"]]
        # a peer that does not read fills only its own queue (send_hwm + recv_hwm on
        # inproc), then sends to it are dropped while the other peer still takes them
        results = [sender.send("c", [b"more"]) for _ in range(10)]
        assert results[0] and not results[-1]
        assert sender.send("b", [b"still"])
    finally:
        for transport in (sender, *receivers):
            transport.close()
        context.term()
