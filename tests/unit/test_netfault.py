"""The fault-injecting TCP proxy: forwards, cuts (reset or blackhole), heals, delays."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest
import zmq

from p2pfl.testing.faults import FaultProxy, ProxyLink, parse_endpoint

DEADLINE = 10.0


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A loopback TCP server that sends back whatever it receives."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def _connect(link: ProxyLink) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", link.port)


async def _echoes(link: ProxyLink, payload: bytes) -> bool:
    reader, writer = await _connect(link)
    try:
        writer.write(payload)
        return await asyncio.wait_for(reader.readexactly(len(payload)), DEADLINE) == payload
    finally:
        writer.close()


async def _closed(reader: asyncio.StreamReader) -> bool:
    """True once the proxy closed the connection (end of stream or reset)."""
    try:
        while await asyncio.wait_for(reader.read(65536), DEADLINE):
            pass
    except ConnectionError:
        pass
    return True


async def test_a_link_forwards_both_ways_and_large_payloads_in_order(echo_port):
    link = ProxyLink(("127.0.0.1", echo_port), name="echo")
    try:
        await link.start()
        assert link.endpoint == f"tcp://127.0.0.1:{link.port}"
        assert await _echoes(link, b"hello")
        assert await _echoes(link, os.urandom(3 << 20))  # many chunks each way
        assert link.stats.forwarded == 2 and link.stats.bytes_forwarded >= 2 * (5 + (3 << 20))
    finally:
        await link.close()


async def test_a_reset_cut_drops_live_connections_and_refuses_new_ones_until_healed(echo_port):
    link = ProxyLink(f"tcp://127.0.0.1:{echo_port}")
    try:
        await link.start()
        reader, writer = await _connect(link)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), DEADLINE) == b"ping"

        link.cut()
        assert link.is_cut
        assert await _closed(reader)  # the live connection is gone
        writer.close()
        reader, writer = await _connect(link)  # accepted by the kernel, closed by the link
        assert await _closed(reader)
        writer.close()
        assert link.stats.dropped == 1 and link.stats.reset == 1

        link.heal()
        assert not link.is_cut
        assert await _echoes(link, b"again")
    finally:
        await link.close()


async def test_a_blackhole_cut_swallows_traffic_and_the_heal_closes_held_connections(echo_port):
    link = ProxyLink(f"127.0.0.1:{echo_port}")
    try:
        await link.start()
        link.cut(mode="blackhole")
        reader, writer = await _connect(link)
        writer.write(b"into the void")
        with pytest.raises(TimeoutError):  # nothing comes back, and the connection stays open
            await asyncio.wait_for(reader.read(1), 0.3)
        assert link.stats.blackholed == 1

        link.heal()  # the held connection is closed: its client reconnects through the link
        assert await _closed(reader)
        writer.close()
        assert await _echoes(link, b"through")
    finally:
        await link.close()


async def test_a_delay_holds_back_each_direction_and_keeps_order(echo_port):
    link = ProxyLink(("127.0.0.1", echo_port), delay=0.15)
    try:
        await link.start()
        reader, writer = await _connect(link)
        started = time.monotonic()
        for part in (b"a", b"b", b"c"):
            writer.write(part)
            await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(3), DEADLINE) == b"abc"
        assert time.monotonic() - started >= 0.3  # 0.15 s there and 0.15 s back
        writer.close()
        link.set_delay(0)
        assert await _echoes(link, b"fast")
    finally:
        await link.close()


async def test_an_unreachable_target_closes_the_client_connection():
    link = ProxyLink(("127.0.0.1", 1))  # nothing listens on port 1
    try:
        await link.start()
        reader, writer = await _connect(link)
        assert await _closed(reader)
        writer.close()
        assert link.stats.failed == 1
    finally:
        await link.close()


def test_bad_arguments_are_refused():
    assert parse_endpoint("tcp://10.0.0.7:7002") == ("10.0.0.7", 7002)
    assert parse_endpoint(("::1", 5)) == ("::1", 5)
    for bad in ("ipc:///tmp/x", "tcp://host", "host:port"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)
    link = ProxyLink("tcp://127.0.0.1:9")
    with pytest.raises(ValueError, match="cut mode"):
        link.cut(mode="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delay"):
        link.set_delay(-1)
    with pytest.raises(RuntimeError, match="not started"):
        FaultProxy().cut()


def _receive(router: zmq.Socket, timeout: float) -> bytes | None:
    if not router.poll(int(timeout * 1000)):
        return None
    _, payload = router.recv_multipart()
    return payload


def test_zeromq_reconnects_by_itself_when_a_fault_proxy_link_heals():
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    dealer = context.socket(zmq.DEALER)
    proxy = FaultProxy()
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        proxy.start()
        endpoint = proxy.link(f"tcp://127.0.0.1:{port}", name="a->b")
        with pytest.raises(ValueError, match="already exists"):
            proxy.link(f"tcp://127.0.0.1:{port}", name="a->b")
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.RECONNECT_IVL, 50)
        dealer.connect(endpoint)
        dealer.send(b"before")
        assert _receive(router, DEADLINE) == b"before"

        proxy.cut("a->b")
        dealer.send(b"during")  # queued by ZeroMQ while it keeps reconnecting
        assert _receive(router, 0.5) is None  # bounded: nothing crosses a cut link
        assert proxy.stats("a->b").dropped == 1

        proxy.heal()
        assert _receive(router, DEADLINE) == b"during"  # ZeroMQ reconnected and delivered
        assert proxy.stats("a->b").forwarded >= 2
        with pytest.raises(KeyError):
            proxy.heal("nope")
    finally:
        proxy.stop()
        dealer.close(linger=0)
        router.close(linger=0)
        context.term()
    proxy.stop()  # idempotent
