"""Live Curve-secured nodes against intruders: who gets in, who is refused, revocation.

The attackers are plain pyzmq sockets set up by hand (no p2pfl code on the attack side
beyond building message bytes), as a real intruder would.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from p2pfl import Node, StaticSchedule, ZmqTransport, build_topology
from p2pfl.node.peers import StartCondition
from p2pfl.security import AllowList, CurveSecurity, KeyPair, curve_authenticator
from p2pfl.testing import model_frames, tiny_learner, tiny_node

TIMEOUT = 10.0


def raw_keypair() -> tuple[bytes, bytes]:
    return zmq.curve_keypair()


class Members:
    """The consortium: raw key pairs by name and a mutable allow-list source."""

    def __init__(self, names: str) -> None:
        self.keys = {name: raw_keypair() for name in names}
        self.listed = set(names)
        self.allowlist = AllowList(lambda: {n: self.keys[n][0].decode() for n in sorted(self.listed)})

    def keypair(self, name: str) -> KeyPair:
        public, secret = self.keys[name]
        return KeyPair(public.decode(), secret.decode())

    def public(self, name: str) -> bytes:
        return self.keys[name][0]


@pytest.fixture
async def members(context):
    """Members 0, 1, 2 listed (9 has keys but is not listed yet), one authenticator."""
    consortium = Members("0129")
    consortium.listed = {"0", "1", "2"}
    consortium.allowlist.reload()
    async with curve_authenticator(context, consortium.allowlist):
        yield consortium


@pytest.fixture
async def raw_client(context):
    """Opens raw DEALER sockets, optionally Curve, each with a monitor of its handshakes."""
    opened: list[tuple[zmq.asyncio.Socket, zmq.asyncio.Socket]] = []

    def connect(endpoint: str, *, server_key: bytes | None = None, keys: tuple[bytes, bytes] | None = None):
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if server_key is not None:
            public, secret = keys or raw_keypair()
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        monitor = sock.get_monitor_socket()
        opened.append((sock, monitor))
        sock.connect(endpoint)
        return sock, monitor

    yield connect
    for sock, monitor in opened:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


async def attempt(sock: zmq.asyncio.Socket, message: list[bytes]) -> None:
    """Send without waiting: once a handshake has failed, libzmq drops the refused link's
    queue for good, so a blocking send would wait forever (the refusal may come first)."""
    try:
        await sock.send_multipart(message, flags=zmq.NOBLOCK)
    except zmq.Again:
        pass  # refused before it could even queue


async def handshake_outcome(monitor: zmq.asyncio.Socket) -> zmq.Event:
    """The first handshake verdict the client side sees (bounded by TIMEOUT)."""
    verdicts = {
        zmq.Event.HANDSHAKE_SUCCEEDED, zmq.Event.HANDSHAKE_FAILED_AUTH,
        zmq.Event.HANDSHAKE_FAILED_PROTOCOL, zmq.Event.HANDSHAKE_FAILED_NO_DETAIL,
    }
    async with asyncio.timeout(TIMEOUT):
        while True:
            event = zmq.Event(parse_monitor_message(await monitor.recv_multipart())["event"])
            if event in verdicts:
                return event


def curve_node(context, members: Members, name: str, *, schedule=None, rounds=3, round_timeout=TIMEOUT) -> Node:
    security = CurveSecurity(members.keypair(name), members.allowlist)
    return tiny_node(context, name, schedule=schedule, rounds=rounds, round_timeout=round_timeout, security=security)


def frames(sender: str, round_: int, *, seed: int = 1) -> list[bytes]:
    return model_frames(tiny_learner(seed), sender=sender, round=round_)


async def test_two_curve_nodes_of_a_ring_complete_their_rounds(context, members):
    async with curve_node(context, members, "0", rounds=2, round_timeout=1.0) as a, \
            curve_node(context, members, "1", rounds=2, round_timeout=1.0) as b:
        a.add_peer("1", b.endpoint)
        b.add_peer("0", a.endpoint)
        a.add_peer("2", "tcp://127.0.0.1:1")  # listed, with its own key, but never up
        b.add_peer("2", "tcp://127.0.0.1:1")
        history_a, history_b = await asyncio.wait_for(asyncio.gather(a.run(), b.run()), TIMEOUT)
    for node, history, peer in ((a, history_a, "1"), (b, history_b, "0")):
        assert [m.received_from for m in history] == [(peer,), (peer,)]
        assert all(m.missing == ("2",) for m in history)
        assert node.stats.messages_accepted == 2
        assert not node.stats.rejected


async def test_a_plain_text_client_cannot_even_complete_the_handshake(context, members, raw_client):
    async with curve_node(context, members, "0") as node:
        intruder, monitor = raw_client(node.endpoint)  # no Curve at all
        await attempt(intruder, frames("1", 0))
        assert await handshake_outcome(monitor) == zmq.Event.HANDSHAKE_FAILED_PROTOCOL
        honest, honest_monitor = raw_client(node.endpoint, server_key=members.public("0"), keys=members.keys["1"])
        await honest.send_multipart(frames("1", 0))
        assert await handshake_outcome(honest_monitor) == zmq.Event.HANDSHAKE_SUCCEEDED
        await node.wait_until(lambda s: s.messages_accepted == 1, TIMEOUT)
        # the intruder's message, sent first, never reached the node (not even a rejection)
        await honest.send_multipart(frames("1", 0))
        await node.wait_until(lambda s: s.rejected["duplicate"] == 1, TIMEOUT)
        assert node.stats.messages_accepted == 1
        assert dict(node.stats.rejected) == {"duplicate": 1}


async def test_a_curve_client_with_an_unlisted_key_is_refused_at_the_handshake(context, members, raw_client):
    async with curve_node(context, members, "0") as node:
        intruder, monitor = raw_client(node.endpoint, server_key=members.public("0"))  # random key
        await attempt(intruder, frames("1", 0))
        assert await handshake_outcome(monitor) == zmq.Event.HANDSHAKE_FAILED_AUTH
        # a listed member's key that is not yet listed (9) fares no better
        unlisted, unlisted_monitor = raw_client(node.endpoint, server_key=members.public("0"), keys=members.keys["9"])
        await attempt(unlisted, frames("9", 0))
        assert await handshake_outcome(unlisted_monitor) == zmq.Event.HANDSHAKE_FAILED_AUTH
        honest, _ = raw_client(node.endpoint, server_key=members.public("0"), keys=members.keys["2"])
        await honest.send_multipart(frames("2", 0, seed=2))
        await node.wait_until(lambda s: s.messages_accepted == 1, TIMEOUT)
        assert not node.stats.rejected


async def test_a_member_claiming_to_be_another_is_rejected_as_sender_mismatch(context, members, raw_client):
    async with curve_node(context, members, "0") as node:
        member_1, _ = raw_client(node.endpoint, server_key=members.public("0"), keys=members.keys["1"])
        await member_1.send_multipart(frames("2", 0))  # 1's key, 2's name
        await node.wait_until(lambda s: s.rejected["sender_mismatch"] == 1, TIMEOUT)
        assert node.stats.messages_accepted == 0
        await member_1.send_multipart(frames("1", 0))  # the same link, honest
        await node.wait_until(lambda s: s.messages_accepted == 1, TIMEOUT)
        assert dict(node.stats.rejected) == {"sender_mismatch": 1}


async def test_reloading_the_allowlist_revokes_open_links_and_admits_new_members(context, members, raw_client):
    # a ring of 10: node 0's neighbours are 1 and 9
    schedule = StaticSchedule(build_topology("ring", 10))
    async with curve_node(context, members, "0", schedule=schedule) as node:
        server_key = members.public("0")
        member_1, _ = raw_client(node.endpoint, server_key=server_key, keys=members.keys["1"])
        await member_1.send_multipart(frames("1", 0))
        await node.wait_until(lambda s: s.messages_accepted == 1, TIMEOUT)

        members.listed = {"0", "2", "9"}
        assert members.allowlist.reload() == ({"9"}, {"1"})

        # 1's existing, already authenticated connection: refused message by message
        await member_1.send_multipart(frames("1", 1))
        await node.wait_until(lambda s: s.rejected["unauthenticated"] == 1, TIMEOUT)
        # ... and a new connection of 1 no longer passes the handshake
        again, again_monitor = raw_client(node.endpoint, server_key=server_key, keys=members.keys["1"])
        await attempt(again, frames("1", 1))
        assert await handshake_outcome(again_monitor) == zmq.Event.HANDSHAKE_FAILED_AUTH

        member_9, monitor_9 = raw_client(node.endpoint, server_key=server_key, keys=members.keys["9"])
        await member_9.send_multipart(frames("9", 0, seed=9))
        assert await handshake_outcome(monitor_9) == zmq.Event.HANDSHAKE_SUCCEEDED
        await node.wait_until(lambda s: s.messages_accepted == 2, TIMEOUT)
        assert dict(node.stats.rejected) == {"unauthenticated": 1}


async def test_without_an_authenticator_curve_links_carry_no_identity_and_fail_closed():
    # libzmq admits any Curve client when no ZAP handler runs; the node must not trust it
    context = zmq.asyncio.Context()
    try:
        consortium = Members("01")
        async with curve_node(context, consortium, "0") as node:
            sock = context.socket(zmq.DEALER)
            try:
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.CURVE_SERVERKEY, consortium.public("0"))
                sock.setsockopt(zmq.CURVE_PUBLICKEY, consortium.keys["1"][0])
                sock.setsockopt(zmq.CURVE_SECRETKEY, consortium.keys["1"][1])
                sock.connect(node.endpoint)
                await sock.send_multipart(frames("1", 0))
                await node.wait_until(lambda s: s.rejected["unauthenticated"] == 1, TIMEOUT)
            finally:
                sock.close(linger=0)
        assert node.stats.messages_accepted == 0
    finally:
        context.term()


async def test_one_authenticator_per_context(context, members):
    from p2pfl.errors import TransportError

    with pytest.raises(TransportError, match="one per context"):
        async with curve_authenticator(context, members.allowlist):
            pass


async def test_a_wrong_public_key_for_a_peer_is_logged_on_the_sending_side(context, members):
    """ZeroMQ retries a link whose handshake fails silently; the node must say why."""
    warned = asyncio.Event()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "CurveZMQ handshake with 1" in record.getMessage():
                warned.set()

    wrong_view = AllowList(lambda: {"0": members.public("0").decode(), "1": raw_keypair()[0].decode()})
    sender = ZmqTransport(context, "tcp://127.0.0.1:0", security=CurveSecurity(members.keypair("0"), wrong_view))
    handler = Catch()
    logging.getLogger("p2pfl.transport").addHandler(handler)
    try:
        async with curve_node(context, members, "1") as receiver:
            sender.start()
            try:
                sender.connect("1", receiver.endpoint)
                sender.send("1", frames("0", 0))
                await asyncio.wait_for(warned.wait(), TIMEOUT)
            finally:
                sender.close()
            assert receiver.stats.messages_accepted == 0
    finally:
        logging.getLogger("p2pfl.transport").removeHandler(handler)


async def test_a_plain_text_member_among_curve_members_is_named_on_both_sides(context, members):
    """One member started with --insecure: both ends say so, not "wrong key" / "waiting to start"."""
    said: dict[str, asyncio.Event] = {"curve side": asyncio.Event(), "insecure side": asyncio.Event()}
    lines: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            lines.append(message)
            if message.startswith("1 at ") and "does not use CurveZMQ (is it started with --insecure?): " \
                    "every member must use Curve, or all --insecure" in message:
                said["curve side"].set()
            if message.startswith("0 at ") and message.endswith("requires CurveZMQ; this node runs --insecure"):
                said["insecure side"].set()

    handler = Catch()
    logging.getLogger("p2pfl.transport").addHandler(handler)
    try:
        async with curve_node(context, members, "0") as curve, tiny_node(context, "1") as insecure:
            curve.add_peer("1", insecure.endpoint)
            insecure.add_peer("0", curve.endpoint)
            ready = [asyncio.create_task(node.wait_until_ready(StartCondition.parse("min:1"), hello_interval=0.05))
                     for node in (curve, insecure)]
            try:
                await asyncio.wait_for(asyncio.gather(*(event.wait() for event in said.values())), TIMEOUT)
            finally:
                for task in ready:
                    task.cancel()
                await asyncio.gather(*ready, return_exceptions=True)
            assert not any("the public key listed for" in line for line in lines), lines
            assert curve.stats.messages_accepted == insecure.stats.messages_accepted == 0
    finally:
        logging.getLogger("p2pfl.transport").removeHandler(handler)
