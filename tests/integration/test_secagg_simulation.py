"""Secure aggregation in live simulations: still exact, same accuracy, survives a crash."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import zmq
import zmq.asyncio

from p2pfl import (
    ExperimentConfig,
    Node,
    NodeConfig,
    StaticSchedule,
    ZmqTransport,
    build_experiment,
    build_topology,
    run_reference,
    simulate,
    wire,
)
from p2pfl.privacy.secagg import SecureAggregation, generate_keys
from p2pfl.testing import assert_same_weights, tiny_learner

# fixed point resolution is 2**-32; what remains is float32 rounding of the mixed model
ATOL = 1e-5


async def test_secure_simulation_equals_the_plain_matrix_computation():
    config = ExperimentConfig(
        nodes=8, topology="random-regular:4", partition="dirichlet:0.5", rounds=5, seed=3,
        secure_aggregation=True,
    )
    reference = run_reference(build_experiment(config))
    result = await simulate(config)
    assert result.summary["messages_rejected"] == {}
    networked = [result.final_weights[name] for name in build_experiment(config).names]
    assert_same_weights(networked, reference, atol=ATOL)


async def test_sixteen_nodes_reach_the_same_accuracy_with_and_without_secure_aggregation():
    base = dict(nodes=16, topology="random-regular:4", partition="iid", rounds=6, seed=5)
    plain = await simulate(ExperimentConfig(**base))
    secure = await simulate(ExperimentConfig(**base, secure_aggregation=True))
    assert secure.summary["rounds_completed"] == 6
    assert secure.summary["mean_accuracy"] >= 0.85
    assert abs(secure.summary["mean_accuracy"] - plain.summary["mean_accuracy"]) <= 0.005
    for name, weights in plain.final_weights.items():
        for key, value in weights.items():
            np.testing.assert_allclose(secure.final_weights[name][key], value, rtol=0, atol=ATOL)
    # masked traffic: one uint64 per parameter instead of one float32
    assert secure.summary["bytes_sent_total"] > 1.8 * plain.summary["bytes_sent_total"]


async def test_a_node_crashing_mid_run_is_unmasked_away_and_the_run_completes():
    config = ExperimentConfig(
        nodes=8, topology="random-regular:4", partition="iid", rounds=5, seed=3,
        secure_aggregation=True, fail=("node=3,round=1",), round_timeout=2.0,
    )
    names = build_experiment(config).names
    neighbours_of_3 = set(build_experiment(config).schedule.peers("3"))
    result = await simulate(config)
    # node 3 stops after round 1 for good; the survivors' rounds are what completed
    assert result.summary["rounds_completed"] == 5 and result.summary["failed_nodes"] == ["3"]
    for name in names:
        rounds = [row for row in result.rows if row["node"] == name]
        assert len(rounds) == (2 if name == "3" else 5)
    after = [row for row in result.rows if row["round"] >= 2 and row["node"] in neighbours_of_3]
    assert after and all("3" in row["missing"] and "3" not in row["received_from"] for row in after)
    assert all(len(row["received_from"]) >= 2 for row in after)
    assert result.summary["mean_accuracy"] >= 0.8


async def test_a_late_model_from_a_dropped_neighbour_is_refused():
    """Nodes 0-2 of a complete graph of 4 run a round without 3 (which only advertised its
    ephemeral key, from a raw socket); 3's model then arrives."""
    context = zmq.asyncio.Context()
    schedule = StaticSchedule(build_topology("complete", 4))
    keys = generate_keys(["0", "1", "2", "3"])
    nodes = [
        Node(
            NodeConfig(name=str(i), rounds=1, round_timeout=0.5), tiny_learner(i), schedule,
            ZmqTransport(context, "tcp://127.0.0.1:0"), secure=SecureAggregation(keys[str(i)]),
        )
        for i in range(3)
    ]
    late = SecureAggregation(keys["3"])
    late.bind(wire.schema_of(tiny_learner(3).get_weights()))
    sockets = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            for node in nodes:
                await stack.enter_async_context(node)
            for node in nodes:
                for peer in nodes:
                    if peer is not node:
                        node.add_peer(peer.name, peer.endpoint)
                sock = context.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(node.endpoint)
                sockets.append(sock)
                advert = {"key": late.ephemeral.public, "sig": late.ephemeral.signature}
                await sock.send_multipart(wire.encode(kind="secagg-key", sender="3", round=0, samples=0,
                                                      tensors={}, meta=advert))
                await node.wait_until(lambda stats: stats.messages_accepted >= 1, timeout=5.0)
            metrics = await asyncio.gather(*(node.run() for node in nodes))
            assert all(m[0].missing == ("3",) and len(m[0].received_from) == 2 for m in metrics)
            payload = late.flatten(tiny_learner(3).get_weights()).astype(np.uint64)  # arrives too late anyway
            frames = wire.encode(kind="masked-model", sender="3", round=0, samples=1, tensors={"masked": payload},
                                 meta={"digest": bytes(32), "shares": {}})
            await sockets[0].send_multipart(frames)
            await nodes[0].wait_until(lambda stats: stats.rejected["dropped_late"] == 1, timeout=5.0)
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()


async def test_secure_aggregation_composes_with_update_level_dp():
    from p2pfl import ExperimentConfig, simulate

    base = dict(nodes=8, topology="random-regular:4", rounds=3, dp="update", noise=0.5, clip=1.0, seed=2)
    plain = await simulate(ExperimentConfig(**base))
    secure = await simulate(ExperimentConfig(**base, secure_aggregation=True))
    # the sum of privatised models is the same, only computed under masks
    for name, weights in plain.final_weights.items():
        for key, value in weights.items():
            np.testing.assert_allclose(secure.final_weights[name][key], value, atol=1e-5)
    assert secure.summary["epsilon_max"] == plain.summary["epsilon_max"]
