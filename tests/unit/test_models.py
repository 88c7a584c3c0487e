"""Tests for p2pfl.learning.models."""

from __future__ import annotations

import pytest
import torch

from p2pfl.errors import ConfigError
from p2pfl.learning.models import (
    MLP,
    LogisticRegression,
    SmallCNN,
    available_models,
    build_model,
)


def test_available_models() -> None:
    assert available_models() == ["cnn", "logreg", "mlp"]


@pytest.mark.parametrize(
    ("name", "shape", "cls"),
    [
        ("mlp", (64,), MLP),
        ("mlp", (1, 8, 8), MLP),
        ("logreg", (30,), LogisticRegression),
        ("logreg", (1, 8, 8), LogisticRegression),
        ("cnn", (1, 8, 8), SmallCNN),
        ("cnn", (3, 5, 7), SmallCNN),
        ("cnn", (2, 2, 2), SmallCNN),
        ("MLP", (10,), MLP),
    ],
)
def test_forward_shapes(name: str, shape: tuple[int, ...], cls: type) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, 10)
    assert isinstance(model, cls)
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, 10)


def test_mlp_hidden_and_flattening() -> None:
    model = build_model("mlp", (1, 8, 8), 3, hidden=7)
    assert sum(p.numel() for p in model.parameters()) == 64 * 7 + 7 + 7 * 3 + 3
    assert model(torch.randn(2, 64)).shape == (2, 3)  # flat input of the same size also works


def test_cnn_digits_layer_sizes() -> None:
    model = SmallCNN((1, 8, 8), 10)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32 * 4 * 4, 64), (64, 10)]


def test_forward_is_deterministic_and_seeded_init_repeats() -> None:
    for name, shape in (("mlp", (64,)), ("cnn", (1, 8, 8)), ("logreg", (64,))):
        torch.manual_seed(1)
        a = build_model(name, shape, 10)
        torch.manual_seed(1)
        b = build_model(name, shape, 10)
        x = torch.randn(5, *shape)
        a.train()
        torch.testing.assert_close(a(x), a(x), rtol=0, atol=0)
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(ConfigError) as err:
        build_model("resnet", (64,), 10)
    assert err.value.field == "model"
    assert "'resnet'" in str(err.value) and "['cnn', 'logreg', 'mlp']" in str(err.value)


@pytest.mark.parametrize("shape", [(64,), (8, 8), (1, 1, 8)])
def test_cnn_on_non_image_shape_explains(shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match="image=True") as err:
        build_model("cnn", shape, 10)
    assert err.value.field == "model"


def test_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="num_classes must be >= 2"):
        build_model("mlp", (4,), 1)
    with pytest.raises(ConfigError, match="hidden width"):
        build_model("mlp", (4,), 2, hidden=0)
    with pytest.raises(ConfigError, match="input shape"):
        build_model("logreg", (), 2)


def test_learners_share_what_is_common_and_own_only_their_rows() -> None:
    """Many nodes on one device: each holds its model, optimizer and rows, never a copy
    of the common test set or of another node's data."""
    from p2pfl.data import load_dataset, partition
    from p2pfl.learning.build import build_learners
    from p2pfl.simulation.config import ExperimentConfig

    config = ExperimentConfig(nodes=3)
    dataset = load_dataset("digits", seed=0)
    parts = partition(dataset.y_train, 3, "iid", seed=0)
    learners = build_learners(config, dataset, parts)
    tests = {learner.test_data.x.data_ptr() for learner in learners}  # type: ignore[attr-defined]
    assert tests == {learners[0].test_data.x.data_ptr()} and len(tests) == 1  # type: ignore[attr-defined]
    for learner, rows in zip(learners, parts, strict=True):
        assert len(learner.train_data.x) == len(rows)  # type: ignore[attr-defined]
    params = [{p.data_ptr() for p in learner.model.parameters()} for learner in learners]  # type: ignore[attr-defined]
    assert not params[0] & params[1] and not params[1] & params[2]
