"""Evaluation metrics besides accuracy and loss: the built-ins against scikit-learn, the
learner's hook, the flattened metrics.jsonl row and summary, and the refusals."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, recall_score, roc_auc_score
from torch import nn

from p2pfl import ExperimentConfig, TorchLearner
from p2pfl.config import config_from_mapping
from p2pfl.consortium.description import TrainingSettings
from p2pfl.data import load_dataset
from p2pfl.deploy.config import OrgNodeConfig
from p2pfl.errors import ConfigError
from p2pfl.learning.learner import ArrayBatches
from p2pfl.learning.metrics import (
    BUILTIN_METRICS,
    RESERVED_NAMES,
    check_metrics,
    compute_metrics,
    recall_per_class,
    resolve_metrics,
    roc_auc,
)
from p2pfl.learning.metrics import f1_score as our_f1
from p2pfl.node.records import ROW_KEYS, RoundMetrics, metrics_row, metrics_summary, summary_json
from p2pfl.settings import METRICS


def _binary(n: int, seed: int, *, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1)
    if ties:  # coarse scores: many ties, which AUC must count half
        p1 = np.round(p1, 1)
    return y, np.column_stack([1 - p1, p1])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_builtins_equal_scikit_learn(seed: int, ties: bool) -> None:
    y, scores = _binary(200, seed, ties=ties)
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores[:, 1]), abs=1e-12)
    assert our_f1(y, scores) == pytest.approx(f1_score(y, scores.argmax(1)), abs=1e-12)
    rng = np.random.default_rng(seed)
    y5 = rng.integers(0, 5, 300)
    p5 = rng.dirichlet(np.ones(5), 300)
    expected = recall_score(y5, p5.argmax(1), average=None, labels=range(5))
    assert list(recall_per_class(y5, p5).values()) == pytest.approx(list(expected), abs=1e-12)


def test_auc_of_a_single_class_is_nan_and_recall_of_an_absent_class_is_nan() -> None:
    scores = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert math.isnan(roc_auc(np.array([1, 1]), scores))
    assert math.isnan(recall_per_class(np.array([1, 1]), scores)["0"])


def test_the_builtins_are_the_schemas_names() -> None:
    assert set(BUILTIN_METRICS) == set(METRICS)


def test_a_metric_cannot_take_a_key_a_row_already_has() -> None:
    fields = {f.name for f in dataclasses.fields(RoundMetrics)}
    assert fields | {"consensus_distance"} <= RESERVED_NAMES
    assert ROW_KEYS < RESERVED_NAMES
    with pytest.raises(ConfigError, match="^metrics: 'test_loss' cannot name a metric"):
        resolve_metrics({"test_loss": lambda y, p: 0.0})


def _learner(classes: int, metrics, *, n: int = 120) -> tuple[TorchLearner, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(n, 6)
    y = (x[:, 0] > 0).long() if classes == 2 else torch.randint(0, classes, (n,))
    model = nn.Linear(6, classes)
    learner = TorchLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), ArrayBatches(x, y, 16),
                           ArrayBatches(x, y, 32, shuffle=False), metrics=metrics)
    return learner, x, y


def test_the_learners_hook_computes_the_metrics_on_its_own_predictions() -> None:
    def sensitivity(y_true: np.ndarray, y_score: np.ndarray) -> float:
        return float(((y_score.argmax(1) == 1) & (y_true == 1)).sum() / (y_true == 1).sum())

    learner, x, y = _learner(2, ["auc", "f1", "recall", sensitivity])
    learner.train(0)
    result = learner.evaluate()
    with torch.no_grad():
        probabilities = torch.softmax(learner.model(x).double(), dim=-1).numpy()
    labels = y.numpy()
    predicted = probabilities.argmax(1)
    assert result.metrics["auc"] == pytest.approx(roc_auc_score(labels, probabilities[:, 1]), abs=1e-12)
    assert result.metrics["f1"] == pytest.approx(f1_score(labels, predicted), abs=1e-12)
    recall = recall_score(labels, predicted, average=None)
    assert [result.metrics["recall_0"], result.metrics["recall_1"]] == pytest.approx(list(recall), abs=1e-12)
    assert result.metrics["sensitivity"] == pytest.approx(recall[1], abs=1e-12)
    assert result.accuracy == pytest.approx((predicted == labels).mean())


def test_no_metric_asked_gives_an_empty_mapping_and_the_same_numbers() -> None:
    plain, _, _ = _learner(3, None)
    counted, _, _ = _learner(3, ["recall"])
    plain.train(0)
    counted.train(0)
    a, b = plain.evaluate(), counted.evaluate()
    assert a.metrics == {} and set(b.metrics) == {"recall_0", "recall_1", "recall_2"}
    assert (a.loss, a.accuracy, a.samples) == (b.loss, b.accuracy, b.samples)


def test_a_binary_metric_on_more_classes_is_refused() -> None:
    with pytest.raises(ConfigError, match="^metrics: auc, f1 need a binary task, but digits has 10 classes"):
        check_metrics(resolve_metrics(["auc", "f1", "recall"]), 10, "digits")
    check_metrics(resolve_metrics(["recall"]), 10, "digits")  # per class: any number of classes
    learner, _, _ = _learner(3, ["auc"])
    assert learner.output_classes() == 3
    with pytest.raises(ValueError, match="'auc' needs a binary task, but the model scores 3 classes"):
        learner.evaluate()


def test_output_classes_leaves_the_learner_as_it_was() -> None:
    a, _, _ = _learner(2, None)
    b, _, _ = _learner(2, None)
    assert b.output_classes() == 2
    a.train(0)
    b.train(0)
    assert all(np.array_equal(a.get_weights()[k], b.get_weights()[k]) for k in a.get_weights())


@pytest.mark.parametrize("cls", [ExperimentConfig, OrgNodeConfig, TrainingSettings])
def test_metrics_are_one_setting_given_as_a_list_or_comma_separated(cls: type) -> None:
    base = {"name": "a", "bind": "tcp://127.0.0.1:1", "learner": "m:f", "insecure": True,
            "peers": {"b": "tcp://127.0.0.1:2"}} if cls is OrgNodeConfig else {}
    if cls is TrainingSettings:
        base = {"learner": "m:f"}
    assert config_from_mapping(cls, {**base, "metrics": ["auc", "f1"]}).metrics == ("auc", "f1")
    assert config_from_mapping(cls, {**base, "metrics": "auc, f1"}).metrics == ("auc", "f1")
    assert config_from_mapping(cls, {**base, "metrics": ["auc,f1", "recall"]}).metrics == ("auc", "f1", "recall")
    assert config_from_mapping(cls, base).metrics == ()


def test_a_bad_metric_name_is_one_error_naming_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(ExperimentConfig, {"metrics": "auk,f1"})
    assert info.value.field == "metrics"
    assert str(info.value) == (
        "metrics: unknown metric 'auk' (did you mean 'auc'?); valid: auc (binary), f1 (binary), "
        "recall (per class), or module:function for your own"
    )
    with pytest.raises(ConfigError, match="names a metric twice"):
        ExperimentConfig(metrics=("auc", "auc"))
    with pytest.raises(ConfigError, match="^metrics: cannot load 'no_such_module_p2pfl:f'"):
        resolve_metrics(["no_such_module_p2pfl:f"])


def test_rows_carry_the_metrics_flat_and_the_summary_takes_mean_and_min() -> None:
    def row(node: str, auc: float, recall: float) -> dict:
        metrics = RoundMetrics(node, 3, 0.1, 0.2, 0.9, 10, 10, 0.01, (), (),
                               metrics={"auc": auc, "recall_0": recall, "recall_1": math.nan})
        return metrics_row(metrics)

    rows = [row("a", 0.9, 0.5), row("b", 0.7, 1.0)]
    assert rows[0]["auc"] == 0.9 and "metrics" not in rows[0]
    summary = metrics_summary(rows)
    assert summary["auc"] == {"mean": pytest.approx(0.8), "min": 0.7, "max": 0.9}
    assert summary["recall_0"] == {"mean": 0.75, "min": 0.5, "max": 1.0}
    assert summary["recall_1"] == {"mean": None, "min": None, "max": None}
    plain = metrics_row(RoundMetrics("a", 0, 0.1, 0.2, 0.9, 10, 10, 0.01, (), ()))
    assert set(plain) == ROW_KEYS - {"consensus_distance"}  # the default row is unchanged
    # nested NaN stays strict JSON
    text = summary_json({"metrics": {"x": {"mean": math.nan}}})
    assert json.loads(text) == {"metrics": {"x": {"mean": None}}}


def test_compute_metrics_refuses_what_is_not_a_number() -> None:
    with pytest.raises(ValueError, match="'bad' returned str"):
        compute_metrics({"bad": lambda y, p: "high"}, np.array([0, 1]), np.array([[0.6, 0.4], [0.3, 0.7]]))


def test_breast_cancer_is_binary_and_digits_is_not() -> None:
    from p2pfl.simulation.setup import build_experiment

    with pytest.raises(ConfigError, match="^metrics: auc needs a binary task, but digits has 10 classes"):
        build_experiment(ExperimentConfig(nodes=3, rounds=1, metrics=("auc",)))
    dataset = load_dataset("breast_cancer", seed=0)
    assert dataset.num_classes == 2


def test_a_deployed_learner_takes_node_toml_metrics_and_refuses_binary_ones_up_front(tmp_path) -> None:
    from p2pfl.deploy.learner_loader import build_learner

    config = OrgNodeConfig(
        name="a", bind="tcp://127.0.0.1:1", insecure=True, peers={"b": "tcp://127.0.0.1:2"},
        learner="p2pfl.examples.bundled:build_learner", learner_args={"index": 0, "nodes": 3}, metrics=("auc",),
    )
    with pytest.raises(ConfigError, match="^metrics: auc needs a binary task, but p2pfl.examples.bundled:"
                                          "build_learner's model has 10 classes"):
        build_learner(config, tmp_path)
    learner = build_learner(dataclasses.replace(config, metrics=("recall",)), tmp_path)
    assert set(learner.evaluate().metrics) == {f"recall_{k}" for k in range(10)}
    binary = dataclasses.replace(
        config, metrics=("auc", "f1"), learner_args={"index": 0, "nodes": 3, "dataset": "breast_cancer"})
    assert set(build_learner(binary, tmp_path).evaluate().metrics) == {"auc", "f1"}
