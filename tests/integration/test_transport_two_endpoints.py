"""One receive socket on two endpoints (a cluster shard's node): inproc for its shard, tcp for the rest."""

from __future__ import annotations

import asyncio

import zmq

from p2pfl.transport import ZmqTransport


async def test_a_node_is_reached_over_inproc_and_tcp_at_once():
    context = zmq.Context()
    both = ZmqTransport(context, "inproc://two-endpoints", also_bind="tcp://127.0.0.1:0")
    near, far = ZmqTransport(context, "inproc://near"), ZmqTransport(context, "tcp://127.0.0.1:0")
    got: asyncio.Queue[bytes] = asyncio.Queue()
    try:
        assert both.start() == "inproc://two-endpoints"
        assert both.also_endpoint is not None and both.also_endpoint.startswith("tcp://127.0.0.1:")
        both.listen(lambda incoming: got.put_nowait(bytes(incoming.frames[0])))
        for sender in (near, far):
            sender.start()
        near.connect("both", both.endpoint)  # type: ignore[arg-type]
        far.connect("both", both.also_endpoint)
        assert near.send("both", [b"over inproc"]) and far.send("both", [b"over tcp"])
        async with asyncio.timeout(10):
            assert {await got.get(), await got.get()} == {b"over inproc", b"over tcp"}
    finally:
        for transport in (both, near, far):
            transport.close()
        context.term()
