"""Compressed plain gossip over real sockets, sync and async: it learns, sends fewer bytes,
repeats with the same seed, and records its codec."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfl import ExperimentConfig, simulate

BASE = {"nodes": 8, "topology": "ring", "partition": "iid", "rounds": 8, "seed": 5}


@pytest.fixture(scope="module")
def uncompressed():
    import asyncio

    return asyncio.run(simulate(ExperimentConfig(**BASE))).summary


@pytest.mark.parametrize(("codec", "fewer"), [("fp16", 1.95), ("bf16", 1.95), ("int8", 3.5), ("int8:64", 3.3)])
async def test_sync_gossip_with_a_quantizer_learns_as_well_with_fewer_bytes(codec, fewer, uncompressed):
    summary = (await simulate(ExperimentConfig(**BASE, compress=codec))).summary
    assert summary["compress"] == codec and uncompressed["compress"] == ""
    assert summary["messages_rejected"] == {}
    assert summary["rounds_completed"] == BASE["rounds"]
    assert uncompressed["bytes_sent_total"] / summary["bytes_sent_total"] >= fewer
    assert summary["bytes_received_total"] == summary["bytes_sent_total"]  # what went on the wire, both ends
    assert abs(summary["mean_accuracy"] - uncompressed["mean_accuracy"]) <= 0.01


async def test_compressed_runs_repeat_with_the_same_seed():
    config = ExperimentConfig(**{**BASE, "rounds": 3}, compress="int8")
    first, second = await simulate(config), await simulate(config)
    for name, weights in first.final_weights.items():
        for key, value in weights.items():
            assert np.array_equal(value, second.final_weights[name][key])


@pytest.mark.parametrize("codec", ["fp16", "int8"])
async def test_async_gossip_with_a_quantizer_learns(codec):
    config = ExperimentConfig(**{**BASE, "rounds": 20}, mode="async", compress=codec)
    summary = (await simulate(config)).summary
    assert summary["compress"] == codec
    assert summary["messages_rejected"] == {}
    assert summary["mean_accuracy"] >= 0.85
