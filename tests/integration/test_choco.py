"""CHOCO gossip over real sockets: it is the plain-math CHOCO-SGD, it reaches consensus
where naive sparse averaging does not, and it records its algorithm."""

from __future__ import annotations

import pytest

from p2pfl import ExperimentConfig, build_experiment, run_reference, simulate
from p2pfl.testing import assert_same_weights

BASE = {"nodes": 6, "topology": "ring", "partition": "dirichlet:0.5", "rounds": 4, "seed": 3}


@pytest.mark.parametrize("compress", ["topk:0.1", ""], ids=["topk", "dense"])
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
