"""A live node against hostile and missing peers: rejections, deadlines, buffering."""

from __future__ import annotations

import asyncio
import contextlib

import msgpack
import numpy as np
import pytest
import zmq
import zmq.asyncio

from p2pfl import Node, NodeConfig, StaticSchedule, WireLimits, ZmqTransport, build_topology
from p2pfl.errors import TransportError
from p2pfl.simulation.worker import PhasedWorker
from p2pfl.testing import model_frames, tiny_learner, tiny_node, with_header

TIMEOUT = 10.0


def ring_schedule(n: int = 3) -> StaticSchedule:
    return StaticSchedule(build_topology("ring", n))


async def test_every_bad_message_is_rejected_counted_and_the_node_keeps_serving(context, intruder):
    limits = WireLimits(max_message_bytes=4096)
    async with tiny_node(context, rounds=5, limits=limits) as node:
        sock = intruder(node.endpoint)
        good = model_frames(tiny_learner(1), sender="1", round=0)
        weights = tiny_learner(1).get_weights()
        nan_weights = {k: np.full_like(v, np.nan) for k, v in weights.items()}
        wrong_shape = {k: np.zeros((v.size + 1,), v.dtype) for k, v in weights.items()}
        wrong_dtype = {k: v.astype(np.float64) for k, v in weights.items()}
        attacks = {
            "bad_header": [b"\x00garbage-not-msgpack"],
            "version": with_header(good, v=99),
            "unknown_kind": with_header(good, kind="exec"),
            "unknown_sender": with_header(good, sender="7"),  # not a neighbour of 0
            "frame_count": good[:-1],
            "size_mismatch": [good[0], *good[1:-1], good[-1][:-2]],
            "schema_shape": model_frames(tiny_learner(1), sender="1", round=0, tensors=wrong_shape),
            "schema_dtype": model_frames(tiny_learner(1), sender="1", round=0, tensors=wrong_dtype),
            "non_finite": model_frames(tiny_learner(1), sender="1", round=0, tensors=nan_weights),
            # over the total in frames each under it: one frame over the bound never reaches
            # the node (libzmq drops the connection, see test_preauth_memory.py)
            "too_large": [*good[:-1], good[-1] + b"\x00" * 2500, b"\x00" * 2500],
            "future_round": with_header(good, round=5),  # beyond the node's last round
        }
        for frames in attacks.values():
            await sock.send_multipart(frames)
        # a header claiming a huge array in a few bytes (msgpack bomb)
        await sock.send_multipart([b"\xdd\xff\xff\xff\xff"])
        expected = dict.fromkeys(attacks, 1)
        expected["bad_header"] = 2
        await node.wait_until(lambda s: all(s.rejected[r] >= n for r, n in expected.items()), TIMEOUT)
        for reason, count in expected.items():
            assert node.stats.rejected[reason] == count, reason
        assert node.stats.messages_accepted == 0

        # still serving: an honest message is accepted, a replay of it is a duplicate
        await sock.send_multipart(good)
        await node.wait_until(lambda s: s.messages_accepted == 1, TIMEOUT)
        await sock.send_multipart(good)
        await node.wait_until(lambda s: s.rejected["duplicate"] == 1, TIMEOUT)


async def test_a_node_with_a_dead_neighbour_finishes_every_round_through_the_deadline(context):
    # ring of 3: nodes 0 and 1 run, node 2 never starts
    schedule = ring_schedule(3)
    deadline = 0.3
    async with tiny_node(context, "0", rounds=3, round_timeout=deadline, schedule=schedule) as a, \
            tiny_node(context, "1", rounds=3, round_timeout=deadline, schedule=schedule) as b:
        a.add_peer("1", b.endpoint)
        b.add_peer("0", a.endpoint)
        a.add_peer("2", "tcp://127.0.0.1:1")  # nobody listens there
        b.add_peer("2", "tcp://127.0.0.1:1")
        history_a, history_b = await asyncio.wait_for(asyncio.gather(a.run(), b.run()), TIMEOUT)
    for history, peer in ((history_a, "1"), (history_b, "0")):
        assert [m.round for m in history] == [0, 1, 2]
        for metrics in history:
            assert metrics.missing == ("2",)
            assert metrics.received_from == (peer,)
            assert metrics.round_seconds < deadline + 2.0
    # the two live nodes averaged with each other only: equal weights afterwards
    # (Metropolis weights 1/3 each, renormalised over the two present = 1/2 each)
    for key, value in a.learner.get_weights().items():
        np.testing.assert_allclose(value, b.learner.get_weights()[key], rtol=1e-6, atol=1e-7)


async def test_messages_for_future_rounds_are_buffered_and_used(context, intruder):
    schedule = ring_schedule(3)
    async with tiny_node(context, "0", rounds=2, schedule=schedule) as node:
        node.add_peer("1", "tcp://127.0.0.1:1")
        node.add_peer("2", "tcp://127.0.0.1:1")
        sock = intruder(node.endpoint)
        peer_models = {}
        # neighbours send both rounds before the node even starts round 0
        for round_ in (1, 0):
            for peer in ("1", "2"):
                learner = tiny_learner(10 + int(peer) + round_)
                peer_models[(peer, round_)] = learner.get_weights()
                await sock.send_multipart(model_frames(learner, sender=peer, round=round_))
        await node.wait_until(lambda s: s.messages_accepted == 4, TIMEOUT)
        history = await asyncio.wait_for(node.run(), TIMEOUT)
    assert [m.received_from for m in history] == [("1", "2"), ("1", "2")]
    assert all(not m.missing for m in history)


async def test_stale_messages_are_dropped(context, intruder):
    schedule = ring_schedule(3)
    async with tiny_node(context, "0", rounds=2, round_timeout=0.1, schedule=schedule) as node:
        node.add_peer("1", "tcp://127.0.0.1:1")
        node.add_peer("2", "tcp://127.0.0.1:1")
        await asyncio.wait_for(node.run(), TIMEOUT)
        sock = intruder(node.endpoint)
        await sock.send_multipart(model_frames(tiny_learner(1), sender="1", round=0))
        await node.wait_until(lambda s: s.rejected["stale_round"] == 1, TIMEOUT)


async def test_run_before_start_is_a_clear_error(context):
    node = tiny_node(context)
    from p2pfl import NodeError

    with pytest.raises(NodeError, match="async with"):
        await node.run()


def test_msgpack_header_helper_round_trips():
    frames = model_frames(tiny_learner(0), sender="x", round=3)
    assert msgpack.unpackb(with_header(frames, round=4)[0])["round"] == 4


async def test_a_context_made_inline_stays_alive_as_long_as_its_transport():
    """``ZmqTransport(zmq.Context(), ...)``, as in the README: nothing else holds the context."""
    import gc

    schedule = StaticSchedule(build_topology("line", 2))
    nodes = [
        Node(NodeConfig(name=str(i), rounds=2, round_timeout=TIMEOUT), tiny_learner(i), schedule,
             ZmqTransport(zmq.Context(), "tcp://127.0.0.1:0"))
        for i in range(2)
    ]
    gc.collect()
    async with nodes[0], nodes[1]:
        nodes[0].add_peer("1", nodes[1].endpoint)
        nodes[1].add_peer("0", nodes[0].endpoint)
        histories = await asyncio.wait_for(asyncio.gather(*(n.run() for n in nodes)), 3 * TIMEOUT)
    assert [[m.received_from for m in h] for h in histories] == [[("1",), ("1",)], [("0",), ("0",)]]


@pytest.mark.parametrize("worker", ["private", "phased"])
async def test_an_extreme_but_finite_model_never_makes_the_node_send_nan(context, intruder, worker):
    """Finite 3e38 weights pass the wire checks, then overflow in training: the node
    must notice, keep its weights finite, count it and go on — on its own worker thread
    (a deployment) and on the simulation's staged one."""
    schedule = StaticSchedule(build_topology("line", 2))
    executor = PhasedWorker() if worker == "phased" else None
    async with contextlib.AsyncExitStack() as stack:
        if executor is not None:
            stack.callback(executor.shutdown)
        node = await stack.enter_async_context(tiny_node(context, "0", rounds=2, schedule=schedule, executor=executor))
        node.add_peer("1", "tcp://127.0.0.1:1")
        sock = intruder(node.endpoint)
        extreme = {k: np.full_like(v, 3e38) for k, v in tiny_learner(1).get_weights().items()}
        for round_ in range(2):
            await sock.send_multipart(model_frames(tiny_learner(1), sender="1", round=round_, tensors=extreme))
        await node.wait_until(lambda s: s.messages_accepted == 2, TIMEOUT)
        history = await asyncio.wait_for(node.run(), TIMEOUT)
    assert [m.received_from for m in history] == [("1",)] * 2
    assert node.stats.non_finite_models >= 1
    assert all(np.isfinite(v).all() for v in node.learner.get_weights().values())


async def test_a_resumed_node_takes_its_neighbours_models_that_arrive_before_it_runs(context, intruder):
    schedule = StaticSchedule(build_topology("line", 2))
    config = NodeConfig(name="0", rounds=10, round_timeout=TIMEOUT, start_round=6)
    async with Node(config, tiny_learner(0), schedule, ZmqTransport(context, "tcp://127.0.0.1:0")) as node:
        node.add_peer("1", "tcp://127.0.0.1:1")
        sock = intruder(node.endpoint)
        for round_ in (6, 7):  # the neighbour is at round 7 already
            await sock.send_multipart(model_frames(tiny_learner(1), sender="1", round=round_))
        await node.wait_until(lambda s: s.messages_accepted + sum(s.rejected.values()) == 2, TIMEOUT)
        assert node.stats.messages_accepted == 2, node.stats.rejected
        history = await asyncio.wait_for(node.run(until_round=7), TIMEOUT)
    assert [(m.round, m.received_from) for m in history] == [(6, ("1",)), (7, ("1",))]


class _FakePresence:
    """Says what a test tells it, like a broker that published a member's Last Will."""

    def __init__(self, offline: set[str]) -> None:
        self.offline = offline
        self.callbacks = []

    def is_offline(self, peer: str) -> bool:
        return peer in self.offline

    def subscribe(self, callback) -> None:
        self.callbacks.append(callback)


async def test_a_neighbour_heard_directly_after_the_broker_called_it_offline_is_waited_for(context, intruder):
    # the broker went down and published every Last Will: "1" is "offline" for good, yet alive
    presence = _FakePresence({"1"})
    round_done = asyncio.Event()

    class Observer:
        def on_round_end(self, metrics, weights) -> None:
            round_done.set()

    schedule = StaticSchedule(build_topology("line", 2))
    config = NodeConfig(name="0", rounds=2, round_timeout=TIMEOUT)
    node = Node(config, tiny_learner(0), schedule, ZmqTransport(context, "tcp://127.0.0.1:0"),
                presence=presence, observer=Observer())
    async with node:
        node.add_peer("1", "tcp://127.0.0.1:1")
        sock = intruder(node.endpoint)
        await sock.send_multipart(model_frames(tiny_learner(1), sender="1", round=0))
        await node.wait_until(lambda s: s.messages_accepted == 1, TIMEOUT)
        run = asyncio.create_task(node.run())
        await asyncio.wait_for(round_done.wait(), TIMEOUT)
        # round 1 must wait for this (it would not, if the stale "offline" still won)
        await sock.send_multipart(model_frames(tiny_learner(1), sender="1", round=1))
        history = await asyncio.wait_for(run, TIMEOUT)
    assert [m.received_from for m in history] == [("1",), ("1",)]


async def test_a_port_in_use_is_one_line_naming_the_address_once_and_the_likely_cause(context):
    async with tiny_node(context, "0") as running:
        second = ZmqTransport(context, running.endpoint)
        with pytest.raises(TransportError) as caught:
            second.start()
    message = str(caught.value)
    assert message == (f"cannot listen on {running.endpoint}: the port is in use "
                       "(is this member's node already running?)")
    assert message.count(running.endpoint.rsplit(":", 1)[1]) == 1
