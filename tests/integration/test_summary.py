"""summary.json: rounds completed by the nodes alive at the end, and always valid JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from p2pfl import ExperimentConfig, simulate
from p2pfl.cli.main import main
from p2pfl.node.records import summary_json

# short: the survivors wait this long once for the crashed node, then stop waiting
DEADLINE = 0.5


def strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_summary_json_writes_non_finite_floats_as_null() -> None:
    summary = {"consensus_distance": math.nan, "mean_accuracy": math.inf, "rounds": 3, "config": {"lr": 0.05}}
    assert strict_json(summary_json(summary)) == {
        "consensus_distance": None, "mean_accuracy": None, "rounds": 3, "config": {"lr": 0.05},
    }


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_node_that_failed_for_good_does_not_hold_rounds_completed_back(mode: str) -> None:
    result = await simulate(ExperimentConfig(
        nodes=4, rounds=3, round_timeout=DEADLINE, local_steps=2, mode=mode, fail=("node=1,round=0",),
    ))
    survivors = {row["round"] for row in result.rows if row["node"] != "1"}
    assert max(survivors) == 2
    assert result.summary["rounds_completed"] == 3
    assert result.summary["failed_nodes"] == ["1"]


async def test_a_recovered_node_counts_again() -> None:
    result = await simulate(ExperimentConfig(
        nodes=4, rounds=4, round_timeout=DEADLINE, local_steps=2,
        fail=("node=1,round=0",), recover=("node=1,round=1",),
    ))
    assert result.summary["failed_nodes"] == []
    assert max(row["round"] for row in result.rows if row["node"] == "1") == 3
    assert result.summary["rounds_completed"] == 4


def test_cli_line_and_summary_file_count_the_survivors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main([
        "simulate", "--quiet", "--nodes", "4", "--rounds", "3", "--round-timeout", str(DEADLINE),
        "--local-steps", "2", "--fail", "node=1,round=0", "--out", str(out),
    ])
    assert code == 0
    assert capsys.readouterr().out.startswith("4 nodes (1 failed), 3 rounds in ")
    summary = strict_json((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 3 and summary["failed_nodes"] == ["1"]


async def test_asked_metrics_land_in_metrics_jsonl_and_summary_and_equal_scikit_learn(tmp_path: Path) -> None:
    import numpy as np
    import torch
    from sklearn.metrics import f1_score, recall_score, roc_auc_score

    from p2pfl.simulation.setup import build_experiment

    config = ExperimentConfig(
        nodes=3, rounds=2, local_steps=2, dataset="breast_cancer", metrics=("auc", "f1", "recall"),
        out=str(tmp_path / "run"),
    )
    result = await simulate(config)
    rows = [strict_json(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    summary = strict_json((tmp_path / "run" / "summary.json").read_text())
    assert all({"auc", "f1", "recall_0", "recall_1"} <= set(row) for row in rows)
    final = {row["node"]: row for row in rows if row["round"] == 1}
    # the same predictions, scored by scikit-learn: each node's final model on the test set
    experiment = build_experiment(config)
    learner = experiment.learners[0]
    x = torch.from_numpy(experiment.dataset.x_test)
    y = experiment.dataset.y_test
    for name, row in final.items():
        learner.set_weights(result.final_weights[name])
        with torch.no_grad():
            probabilities = torch.softmax(learner.model(x).double(), dim=-1).numpy()
        predicted = probabilities.argmax(1)
        assert row["auc"] == pytest.approx(roc_auc_score(y, probabilities[:, 1]), abs=1e-9)
        assert row["f1"] == pytest.approx(f1_score(y, predicted), abs=1e-9)
        assert [row["recall_0"], row["recall_1"]] == pytest.approx(list(recall_score(y, predicted, average=None)))
    for key in ("auc", "f1", "recall_0", "recall_1"):
        values = [row[key] for row in final.values()]
        assert summary["metrics"][key]["mean"] == pytest.approx(float(np.mean(values)))
        assert summary["metrics"][key]["min"] == min(values)
    assert summary["config"]["metrics"] == ["auc", "f1", "recall"]


async def test_a_run_without_metrics_has_rows_as_before() -> None:
    result = await simulate(ExperimentConfig(nodes=3, rounds=1, local_steps=1))
    assert all("auc" not in row and "metrics" not in row for row in result.rows)
    assert result.summary["metrics"] == {}
