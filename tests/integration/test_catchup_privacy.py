"""Catch-up leaks no model: refused under secure aggregation, rationed without it (issue 13).

In K3,3 (accepted with secure aggregation: every degree is 3) b1, b2, b3 share the
neighbourhood {a1, a2, a3}: two sync replies in the clear plus the secure sum would
solve every individual model. So under secure aggregation a sync request gets nothing,
and a restarted member rejoins with its own weights.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from p2pfl import ExperimentConfig, StaticSchedule, build_topology, simulate, wire
from p2pfl.privacy.secagg import SecureAggregation, generate_keys
from p2pfl.testing import connected_nodes, run_all, tiny_learner, tiny_node
from p2pfl.wire import Kind

TIMEOUT = 30.0
A_SIDE, B_SIDE = ("a1", "a2", "a3"), ("b1", "b2", "b3")


def k33(tmp_path: Path) -> Path:
    path = tmp_path / "k33.txt"
    path.write_text("".join(f"{a} {b}\n" for a in A_SIDE for b in B_SIDE))
    return path


def sync_request(sender: str, round_: int) -> list[bytes | memoryview]:
    return wire.encode(kind=Kind.SYNC_REQUEST, sender=sender, round=round_, samples=0, tensors={})


async def test_k33_with_secure_aggregation_a_neighbours_sync_requests_get_nothing_and_are_counted(
    tmp_path, context, intruder
):
    topology = build_topology(str(k33(tmp_path)))
    schedule = StaticSchedule(topology)
    keys = generate_keys(topology.names)
    nodes = [
        tiny_node(context, name, schedule=schedule, rounds=3, round_timeout=5.0,
                  learner=tiny_learner(i), secure=SecureAggregation(keys[name]))
        for i, name in enumerate(topology.names)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes:
            await stack.enter_async_context(node)
        endpoints = {node.name: node.endpoint for node in nodes}
        for node in nodes:
            for peer in schedule.peers(node.name):
                node.add_peer(peer, endpoints[peer])
        await run_all(nodes, timeout=TIMEOUT)
        a_nodes = [node for node in nodes if node.name in A_SIDE]
        # what today's code answered: b1 asks each of its neighbours, far behind them
        before = {node.name: (node.stats.control_bytes_sent, node.stats.bytes_sent) for node in a_nodes}
        for node in a_nodes:
            sock = intruder(node.endpoint)
            for _ in range(3):
                await sock.send_multipart(sync_request("b1", 0))
        for node in a_nodes:
            await node.wait_until(lambda stats: stats.rejected["sync_refused"] == 3, timeout=TIMEOUT)
        for node in a_nodes:
            # nothing at all went out: no sync reply, no model resent, in the clear or masked
            assert (node.stats.control_bytes_sent, node.stats.bytes_sent) == before[node.name]
            assert node.stats.sync_replies_sent == 0


async def test_a_restarted_secure_aggregation_member_rejoins_with_its_own_model_and_the_run_completes(tmp_path):
    rounds = 10
    result = await simulate(ExperimentConfig(
        topology=str(k33(tmp_path)), rounds=rounds, round_timeout=2.0, seed=0, secure_aggregation=True,
        fail=("node=b1,round=2",), recover=("node=b1,round=5",),
    ))
    assert result.summary["rounds_completed"] == rounds
    # no model was sent in the clear to let it catch up, and it asked for none
    assert result.summary["sync_replies_sent_total"] == 0
    assert "sync_refused" not in result.summary["messages_rejected"]
    b1 = [row["round"] for row in result.rows if row["node"] == "b1"]
    assert b1[:3] == [0, 1, 2] and b1[3] > 5 and b1[-1] == rounds - 1  # rejoined the others' pace
    rejoined = [row for row in result.rows if row["node"] == "b1" and row["round"] > 5]
    assert any(set(row["received_from"]) == set(A_SIDE) for row in rejoined)
    assert result.summary["min_accuracy"] >= 0.8


async def test_without_secure_aggregation_only_a_requester_really_behind_is_answered_and_a_flood_is_rationed(
    context, intruder
):
    async with connected_nodes("ring", 3, context=context, rounds=4, round_timeout=10.0) as nodes:
        await run_all(nodes, timeout=TIMEOUT)
        node = nodes[0]  # now at round 4 (after its last, round 3)
        sock = intruder(node.endpoint)
        control = node.stats.control_bytes_sent

        await sock.send_multipart(sync_request("1", 3))  # one round behind: not behind enough
        await node.wait_until(lambda stats: stats.rejected["sync_not_behind"] == 1, timeout=TIMEOUT)
        assert node.stats.sync_replies_sent == 0 and node.stats.control_bytes_sent == control

        await sock.send_multipart(sync_request("1", 1))  # really behind: answered, counted
        await node.wait_until(lambda stats: stats.sync_replies_sent == 1, timeout=TIMEOUT)
        answered = node.stats.control_bytes_sent
        assert answered > control

        for _ in range(20):  # a flood: at most one model per neighbour and round deadline
            await sock.send_multipart(sync_request("1", 1))
        await node.wait_until(lambda stats: stats.rejected["sync_rate_limited"] == 20, timeout=TIMEOUT)
        assert node.stats.sync_replies_sent == 1 and node.stats.control_bytes_sent == answered


async def test_a_node_behind_without_secure_aggregation_still_catches_up_with_its_neighbours_model():
    result = await simulate(ExperimentConfig(
        nodes=6, topology="ring", rounds=12, round_timeout=1.0, seed=0,
        fail=("node=3,round=2",), recover=("node=3,round=6",),
    ))
    assert result.summary["rounds_completed"] == 12
    assert result.summary["sync_replies_sent_total"] >= 2  # its two neighbours answered
    rounds = [row["round"] for row in result.rows if row["node"] == "3"]
    assert rounds[3] > 6 and rounds[-1] == 11
