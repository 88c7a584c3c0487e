"""Simulated attacks: what an attacking learner sends, trains on, and how specs parse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2pfl.attacks import Attack, AttackingLearner, FlippedLabels, attacker_aggregator, parse_attack
from p2pfl.errors import ConfigError
from p2pfl.learning.learner import ArrayBatches, TorchLearner
from p2pfl.node.mixing import mix


def make_learner(seed: int = 0, *, shuffle: bool = True) -> TorchLearner:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    x = torch.randn(12, 4)
    y = torch.arange(12) % 3
    return TorchLearner(
        model, torch.optim.SGD(model.parameters(), lr=0.1), ArrayBatches(x, y, 4, shuffle=shuffle, seed=seed),
        local_steps=2, seed=seed,
    )


def honest_and_attacked(spec: str, **kwargs) -> tuple[dict, dict]:
    learner = make_learner()
    attacker = AttackingLearner(learner, spec, seed=7, **kwargs)
    sent = attacker.get_weights()
    return learner.get_weights(), sent


def test_sign_flip_negates() -> None:
    honest, sent = honest_and_attacked("sign-flip")
    for key in honest:
        np.testing.assert_array_equal(sent[key], -honest[key])


@pytest.mark.parametrize(("spec", "kwargs", "factor"), [
    ("scale", {}, 100.0), ("scale:-3.5", {}, -3.5), ("scale", {"scale": 7.0}, 7.0), ("scale:2", {"scale": 7.0}, 2.0),
])
def test_scale_multiplies(spec: str, kwargs: dict, factor: float) -> None:
    honest, sent = honest_and_attacked(spec, **kwargs)
    for key in honest:
        np.testing.assert_allclose(sent[key], factor * honest[key], rtol=1e-6)
        assert sent[key].dtype == honest[key].dtype


def test_noise_adds_seeded_gaussian_noise() -> None:
    honest, sent = honest_and_attacked("noise:0.5")
    noise = np.concatenate([(sent[k] - honest[k]).ravel() for k in honest])
    assert noise.std() == pytest.approx(0.5, rel=0.5)  # 15 values: a loose check of the scale
    assert all(sent[k].dtype == honest[k].dtype for k in honest)
    _, again = honest_and_attacked("noise:0.5")
    for key in honest:
        np.testing.assert_array_equal(sent[key], again[key])  # same seed, same noise
    other = AttackingLearner(make_learner(), "noise:0.5", seed=8).get_weights()
    assert any(not np.array_equal(sent[k], other[k]) for k in honest)


def test_noise_default_sigma_and_fresh_noise_each_call() -> None:
    attacker = AttackingLearner(make_learner(), "noise", seed=1, sigma=2.0)
    assert attacker.sigma == 2.0
    first, second = attacker.get_weights(), attacker.get_weights()
    assert any(not np.array_equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize(("spec", "check"), [("nan", np.isnan), ("inf", np.isposinf)])
def test_nan_and_inf_fill_every_tensor(spec: str, check) -> None:
    honest, sent = honest_and_attacked(spec)
    for key in honest:
        assert check(sent[key]).all() and sent[key].shape == honest[key].shape
        assert sent[key].dtype == honest[key].dtype


def test_stale_replays_the_first_rounds_weights_forever() -> None:
    learner = make_learner()
    attacker = AttackingLearner(learner, "stale", seed=0)
    initial = attacker.get_weights()  # before training (a node reads its schema): honest
    for key in initial:
        np.testing.assert_array_equal(initial[key], learner.get_weights()[key])
    attacker.train(0)
    first = attacker.get_weights()
    for round_ in range(1, 4):
        attacker.train(round_)
        sent = attacker.get_weights()
        for key in first:
            np.testing.assert_array_equal(sent[key], first[key])
    assert any(not np.array_equal(first[k], learner.get_weights()[k]) for k in first)  # it did train on


def test_label_flip_trains_on_flipped_labels_and_sends_honest_weights() -> None:
    learner = make_learner(shuffle=False)  # batches in data order: labels 0 1 2 0 1 2 ...
    attacker = AttackingLearner(learner, "label-flip", seed=0, num_classes=3)
    assert isinstance(learner.train_data, FlippedLabels)
    seen = []
    # record the targets the loss (so the gradient) actually sees
    loss_fn = learner.loss_fn
    learner.loss_fn = lambda outputs, targets: (seen.append(targets.clone()), loss_fn(outputs, targets))[1]
    result = attacker.train(0)  # two steps of batch 4
    assert result.samples == 12  # the wrapper keeps the sample count
    assert torch.cat(seen).tolist() == [2, 1, 0, 2, 1, 0, 2, 1]  # C - 1 - y for y = 0 1 2 0 1 2 0 1
    sent = attacker.get_weights()
    for key, value in learner.get_weights().items():
        np.testing.assert_array_equal(sent[key], value)


def test_label_flip_needs_the_class_count_and_train_data() -> None:
    with pytest.raises(ConfigError) as info:
        AttackingLearner(make_learner(), "label-flip", seed=0)
    assert info.value.field == "attack"

    class NoData:
        pass

    with pytest.raises(ConfigError, match="train_data"):
        AttackingLearner(NoData(), "label-flip", seed=0, num_classes=3)  # type: ignore[arg-type]


def test_everything_else_delegates() -> None:
    learner = make_learner()
    attacker = AttackingLearner(learner, "sign-flip", seed=0)
    assert attacker.num_samples == 12 and attacker.model is learner.model
    assert attacker.train(0).steps == 2
    assert attacker.evaluate().accuracy == learner.evaluate().accuracy
    weights = {k: np.zeros_like(v) for k, v in learner.get_weights().items()}
    attacker.set_weights(weights)
    assert all(not learner.get_weights()[k].any() for k in weights)


def test_a_weight_attacker_keeps_its_honest_model_and_label_flip_mixes_normally() -> None:
    learner = make_learner()
    attacker = AttackingLearner(learner, "scale:10", seed=0)
    assert attacker_aggregator(mix, learner) is mix  # honest learners: unchanged
    sent = attacker.get_weights()
    received = {"a": {k: v + 1 for k, v in sent.items()}}
    kept = attacker_aggregator(mix, attacker)("me", sent, received, {"me": 0.5, "a": 0.5})
    for key, value in learner.get_weights().items():
        np.testing.assert_array_equal(kept[key], value)
    flipper = AttackingLearner(make_learner(), "label-flip", seed=0, num_classes=3)
    assert attacker_aggregator(mix, flipper) is mix


@pytest.mark.parametrize(("spec", "expected"), [
    ("sign-flip", Attack("sign-flip")), ("scale", Attack("scale")), ("scale:50", Attack("scale", 50.0)),
    ("noise:0.1", Attack("noise", 0.1)), (" NaN ", Attack("nan")), ("inf", Attack("inf")),
    ("stale", Attack("stale")), ("label-flip", Attack("label-flip")),
])
def test_parse_attack(spec: str, expected: Attack) -> None:
    assert parse_attack(spec) == expected


@pytest.mark.parametrize("spec", [
    "", "flip", "scale:", "scale:big", "scale:inf", "noise:-1", "noise:nan", "nan:1", "sign-flip:2",
])
def test_bad_attack_specs_name_the_field(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_attack(spec)
    assert info.value.field == "attack"
