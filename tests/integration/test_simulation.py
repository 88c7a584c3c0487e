"""Whole simulations over real sockets: they learn, are exact, and are reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfl import ExperimentConfig, build_experiment, run_reference, simulate
from p2pfl.testing import assert_same_weights


async def test_eight_nodes_over_tcp_loopback_learn_digits():
    config = ExperimentConfig(
        nodes=8, topology="ring", dataset="digits", partition="iid", rounds=8, transport="tcp"
    )
    result = await simulate(config)
    summary = result.summary
    assert summary["rounds_completed"] == 8
    assert summary["mean_accuracy"] >= 0.9
    assert summary["min_accuracy"] >= 0.85
    first, last = result.rounds[0], result.rounds[-1]
    assert last.mean_accuracy > first.mean_accuracy
    assert summary["messages_rejected"] == {}
    # ring: each node sends to 2 neighbours per round
    one_model = summary["bytes_sent_total"] / (8 * 8 * 2)
    assert one_model > 4 * (64 * 128 + 128 + 128 * 10 + 10)  # float32 weights + header


@pytest.mark.parametrize(
    ("topology", "fanout"),
    [("ring", 0), ("random-regular:4", 0), ("complete", 2)],
    ids=["ring", "random-regular", "time-varying"],
)
async def test_networked_simulation_equals_the_plain_matrix_computation(topology, fanout):
    config = ExperimentConfig(
        nodes=8, topology=topology, fanout=fanout, partition="dirichlet:0.5", rounds=5, seed=3
    )
    reference = run_reference(build_experiment(config))
    result = await simulate(config)
    networked = [result.final_weights[name] for name in build_experiment(config).names]
    assert_same_weights(networked, reference, atol=1e-5)
    # and the check can fail: one round more is a different model
    longer = run_reference(build_experiment(ExperimentConfig(**{**vars(config), "rounds": 6})))
    with pytest.raises(AssertionError):
        assert_same_weights(networked, longer, atol=1e-5)


async def test_same_seed_gives_identical_runs_and_another_seed_does_not():
    config = ExperimentConfig(nodes=6, topology="random-regular:3", rounds=3, seed=11)
    first = await simulate(config)
    second = await simulate(config)
    names = sorted(first.final_weights)
    for name in names:
        for key, value in first.final_weights[name].items():
            assert np.array_equal(value, second.final_weights[name][key])
    assert [r["test_accuracy"] for r in first.rows] == [r["test_accuracy"] for r in second.rows]
    other = await simulate(ExperimentConfig(nodes=6, topology="random-regular:3", rounds=3, seed=12))
    assert any(
        not np.array_equal(first.final_weights[n][k], other.final_weights[n][k])
        for n in names
        for k in first.final_weights[n]
    )


async def test_ipc_transport_runs(tmp_path):
    config = ExperimentConfig(nodes=4, rounds=2, transport="ipc", out=str(tmp_path / "run"))
    result = await simulate(config)
    assert result.summary["rounds_completed"] == 2
    assert (tmp_path / "run" / "summary.json").exists()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 2
