"""CHOCO gossip over real sockets: it is the plain-math CHOCO-SGD, it reaches consensus
where naive sparse averaging does not, and it records its algorithm."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfl import ExperimentConfig, build_experiment, run_reference, simulate
from p2pfl.testing import assert_same_weights

TIMEOUT = 10.0
BASE = {"nodes": 6, "topology": "ring", "partition": "dirichlet:0.5", "rounds": 4, "seed": 3}


@pytest.mark.parametrize("compress", ["topk:0.1", "topk:0.2:int4", ""], ids=["topk", "topk-int4", "dense"])
async def test_networked_choco_equals_the_plain_math(compress):
    config = ExperimentConfig(**BASE, gossip="choco:0.4", compress=compress)
    reference = run_reference(build_experiment(config))
    result = await simulate(config)
    assert result.summary["gossip"] == "choco:0.4" and result.summary["messages_rejected"] == {}
    networked = [result.final_weights[name] for name in build_experiment(config).names]
    assert_same_weights(networked, reference, atol=1e-5)
    # and the check can fail: another consensus step is another model
    other = run_reference(build_experiment(ExperimentConfig(**{**vars(config), "gossip": "choco:0.3"})))
    with pytest.raises(AssertionError):
        assert_same_weights(networked, other, atol=1e-5)


async def test_choco_without_compression_and_gamma_one_is_plain_gossip():
    plain = ExperimentConfig(**BASE)
    choco = ExperimentConfig(**BASE, gossip="choco:1")
    expected = run_reference(build_experiment(plain))
    result = await simulate(choco)
    assert_same_weights([result.final_weights[n] for n in build_experiment(choco).names], expected, atol=1e-5)


async def test_choco_with_topk_reaches_consensus_where_naive_topk_averaging_does_not():
    config = {"nodes": 8, "topology": "ring", "partition": "iid", "rounds": 12, "seed": 5, "compress": "topk:0.1"}
    naive = (await simulate(ExperimentConfig(**config))).summary
    choco = (await simulate(ExperimentConfig(**config, gossip="choco"))).summary
    assert choco["messages_rejected"] == {}
    assert choco["consensus_distance"] < naive["consensus_distance"] / 3
    assert choco["mean_accuracy"] >= naive["mean_accuracy"] - 0.005
    assert choco["mean_accuracy"] >= 0.9


async def test_async_choco_learns():
    config = ExperimentConfig(**{**BASE, "nodes": 8, "rounds": 16}, mode="async", gossip="choco", compress="topk:0.2")
    summary = (await simulate(config)).summary
    assert summary["messages_rejected"] == {}
    assert summary["mean_accuracy"] >= 0.85


async def test_a_crashed_and_recovered_node_is_resynchronised_and_the_run_completes():
    config = ExperimentConfig(**{**BASE, "rounds": 8, "round_timeout": 2.0}, gossip="choco", compress="topk:0.2",
                              fail=("node=2,round=2",), recover=("node=2,round=4",))
    result = await simulate(config)
    summary = result.summary
    assert summary["rounds_completed"] == 8
    assert set(summary["messages_rejected"]) <= {"stale_round", "unknown_sender"}  # the crash's own
    assert summary["mean_accuracy"] >= 0.8


async def test_a_live_choco_node_refuses_and_counts_bad_messages_and_keeps_serving(context, intruder):
    from p2pfl import wire
    from p2pfl.node.choco_copies import fingerprint
    from p2pfl.testing import model_frames, tiny_learner, tiny_node, with_header

    weights = tiny_learner(1).get_weights()
    zero = {k: np.zeros_like(v) for k, v in weights.items()}

    def diff(seq: int, crc: int = 0) -> list[bytes]:
        return model_frames(tiny_learner(1), sender="1", round=0, tensors=zero, meta={"choco": {"seq": seq, "crc": crc}})

    async with tiny_node(context, rounds=5, gossip="choco") as node, tiny_node(context, "2", rounds=5) as plain:
        sock = intruder(node.endpoint)
        state = [bytes(f) for f in wire.encode(kind="choco-state", sender="1", round=0, samples=0, tensors=weights,
                                                meta={"choco": {"seq": 3, "crc": fingerprint(weights)}})]
        attacks = {
            "gossip_mismatch": model_frames(tiny_learner(1), sender="1", round=0),  # a plain model
            "bad_header": with_header(diff(0), meta={"choco": {"seq": "0", "crc": 0}}),
            "choco_unasked": state,
        }
        for frames in attacks.values():
            await sock.send_multipart(frames)
        await node.wait_until(lambda s: all(s.rejected[r] >= 1 for r in attacks), TIMEOUT)
        await sock.send_multipart(diff(0))
        await node.wait_until(lambda s: s.messages_accepted == 1, TIMEOUT)
        await sock.send_multipart(diff(0))  # a replay
        await node.wait_until(lambda s: s.rejected["stale_round"] == 1, TIMEOUT)
        assert node.stats.messages_accepted == 1
        # and a plain node refuses CHOCO's messages
        sock = intruder(plain.endpoint)
        await sock.send_multipart(diff(0))
        await sock.send_multipart(state)
        await plain.wait_until(lambda s: s.rejected["gossip_mismatch"] == 1 and s.rejected["choco_off"] == 1, TIMEOUT)
