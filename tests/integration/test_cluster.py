"""``--cluster``: a simulation sharded over Ray actors on two Ray nodes of this host.

One two-node Ray cluster (``ray.cluster_utils.Cluster``, one CPU each) serves the module
and is shut down after it, Ray and all: starting one costs ~10 s of the budget.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from p2pfl import ExperimentConfig, simulate

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from p2pfl.cli.main import main  # noqa: E402
from p2pfl.simulation.cluster import run_cluster  # noqa: E402

pytestmark = pytest.mark.slow

SMALL = 80 * 2**20  # bytes of object store per Ray node: only metrics travel through it


@pytest.fixture(scope="module")
def two_ray_nodes():
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "object_store_memory": SMALL},
    )
    try:
        cluster.add_node(num_cpus=1, object_store_memory=SMALL)
        ray.init(address=cluster.address, configure_logging=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def _accuracies(rows):
    return {(row["node"], row["round"]): row["test_accuracy"] for row in rows}


def _distances(rows):
    return {(row["node"], row["round"]): row["consensus_distance"] for row in rows}


async def test_two_shards_give_the_one_process_accuracies_and_outputs(two_ray_nodes, tmp_path, capsys):
    one = await simulate(ExperimentConfig(nodes=6, topology="ring", rounds=2, seed=3))
    # through the command (it joins the Ray session this process has): ring 0..5 in shards
    # {0,1,2} and {3,4,5}, links 2-3 and 5-0 cross over tcp, the rest stay inproc
    argv = ["simulate", "--cluster", "auto", "--shard-size", "3", "--nodes", "6", "--topology", "ring",
            "--rounds", "2", "--seed", "3", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    assert "6 nodes, 2 rounds" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert _accuracies(rows) == _accuracies(one.rows)  # exactly: same seed, same bits
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mean_accuracy"] == one.summary["mean_accuracy"]
    assert summary["bytes_sent_total"] == one.summary["bytes_sent_total"]
    assert summary["failed_nodes"] == [] and summary["rounds_completed"] == 2
    assert summary["config"]["cluster"] == "auto"
    # the shards sum their models and the driver adds the sums: the same distances up to rounding
    assert _distances(rows) == pytest.approx(_distances(one.rows), rel=1e-9, abs=1e-15)
    assert summary["consensus_distance"] == pytest.approx(one.summary["consensus_distance"], rel=1e-9)
    # the final models, fetched once at the end: the same bits
    assert (tmp_path / "models" / "average.pt").exists()
    for name, weights in one.final_weights.items():
        saved = torch.load(tmp_path / "models" / f"{name}.pt", weights_only=True)
        for key, value in weights.items():
            np.testing.assert_array_equal(saved[key].numpy(), value)


def test_a_killed_shard_is_a_crash_of_its_nodes_and_the_run_goes_on(two_ray_nodes, caplog):
    killed = []

    def kill_second_shard(summary):
        if summary.round == 0 and not killed:
            [name] = [n for n in ray.util.list_named_actors() if n.endswith("-shard-1")]
            ray.kill(ray.get_actor(name))
            killed.append(name)

    # a round_timeout far above the run's time: the survivors must stop waiting because
    # the driver tells them the shard died, not because a deadline passed
    config = ExperimentConfig(nodes=6, topology="ring", rounds=5, seed=3, cluster="auto", shard_size=3,
                              round_timeout=120)
    started = time.monotonic()
    result = run_cluster(config, progress=kill_second_shard)
    assert time.monotonic() - started < 60
    assert killed
    assert result.summary["failed_nodes"] == ["3", "4", "5"]
    assert result.summary["rounds_completed"] == 5
    assert {row["node"] for row in result.rows if row["round"] == 4} == {"0", "1", "2"}
    assert all(math.isfinite(row["consensus_distance"]) for row in result.rows if row["round"] == 4)
    assert set(result.final_weights) == {"0", "1", "2"}  # the dead shard's models died with it
    assert "shard 1 (nodes 3, 4, 5) died" in caplog.text


def test_an_interrupted_cluster_run_keeps_its_metrics_and_says_so(two_ray_nodes, tmp_path):
    def interrupt(summary):
        if summary.round == 1:
            raise KeyboardInterrupt  # what Ctrl-C raises in the driver

    config = ExperimentConfig(nodes=4, topology="ring", rounds=6, cluster="auto", shard_size=2, out=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        run_cluster(config, progress=interrupt)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert summary["rounds_completed"] >= 2
    assert summary["mean_accuracy"] is not None
