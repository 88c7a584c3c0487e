"""Building learners from settings: the model by name, the data split, one learner per node.

The simulation, the reference loop, the benchmarks and the bundled example learner all
build learners here, so they start from bit-identical models, data and shuffling.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Collection
from typing import Protocol

import numpy as np
import torch
from torch import nn

from p2pfl.data import Dataset
from p2pfl.errors import ConfigError, P2PFLError
from p2pfl.learning._imports import cwd_importable
from p2pfl.learning.learner import ArrayBatches, Learner, TorchLearner
from p2pfl.learning.metrics import check_metrics, resolve_metrics
from p2pfl.learning.models import build_model

__all__ = ["LearnerSettings", "build_learners", "check_model_fits", "make_model", "node_seed"]

_EVAL_BATCH = 1024


class LearnerSettings(Protocol):
    """The settings that shape learning (an experiment's, or the bundled learner's)."""

    @property
    def seed(self) -> int: ...
    @property
    def model(self) -> str: ...
    @property
    def lr(self) -> float: ...
    @property
    def momentum(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def local_epochs(self) -> int: ...
    @property
    def local_steps(self) -> int: ...
    @property
    def device(self) -> str: ...
    @property
    def metrics(self) -> tuple[str, ...]: ...


def build_learners(
    settings: LearnerSettings,
    dataset: Dataset,
    parts: list[np.ndarray],
    *,
    wrap: Callable[[TorchLearner, int], Learner] | None = None,
    only: Collection[int] | None = None,
) -> list[Learner]:
    """One learner per partition, all starting from the same initial model.

    Args:
        settings: how to learn (model, optimiser, batches, seed, device).
        dataset: the data; learner ``i`` trains on the rows ``parts[i]``.
        parts: each learner's training rows.
        wrap: applied to each learner as it is built, with its stream seed (e.g.
            differential privacy); the learners are built in order, so a wrapper that
            draws from torch's global RNG draws the same numbers every run.
        only: build only the learners of these partition indices (in index order):
            each is bit-identical to the one the whole build makes, since a learner
            depends only on the initial model, its rows and its stream seed
            ``node_seed(seed, i)`` (a cluster shard builds just its own nodes').
    """
    metrics = resolve_metrics(settings.metrics)  # before the model: a bad name is refused at once
    check_metrics(metrics, dataset.num_classes, dataset.name)
    torch.manual_seed(settings.seed)
    initial = make_model(settings.model, dataset.input_shape, dataset.num_classes)
    check_model_fits(settings.model, initial, dataset, parts[0][: settings.batch_size], settings.device)
    x_test = torch.from_numpy(dataset.x_test)
    y_test = torch.from_numpy(dataset.y_test)
    test_batches = ArrayBatches(x_test, y_test, _EVAL_BATCH, shuffle=False)
    learners: list[Learner] = []
    wanted = range(len(parts)) if only is None else sorted(set(only))
    for i in wanted:
        idx = parts[i]
        model = copy.deepcopy(initial)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=settings.lr, momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )
        stream = node_seed(settings.seed, i)
        train = ArrayBatches(
            torch.from_numpy(dataset.x_train[idx]), torch.from_numpy(dataset.y_train[idx]),
            settings.batch_size, seed=stream,
        )
        learner = TorchLearner(
            model, optimizer, train, test_batches,
            local_epochs=settings.local_epochs, local_steps=settings.local_steps or None,
            device=settings.device, seed=stream, metrics=metrics,
        )
        learners.append(wrap(learner, stream) if wrap is not None else learner)
    return learners


def make_model(spec: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A built-in model by name, or ``module:function`` returning the user's ``nn.Module``.

    The module is looked up in the current folder too, as ``python -m`` would.
    """
    if ":" not in spec:
        if spec.strip().lower() == "cnn" and len(input_shape) != 3:  # a CLI user cannot reshape the data
            raise ConfigError(
                "model", f"the cnn model needs an image dataset such as digits (samples of shape (1, 8, 8)), "
                f"but this dataset's samples have shape {input_shape}; use the mlp or logreg model"
            )
        return build_model(spec, input_shape, num_classes)
    module_name, _, function_name = spec.partition(":")
    try:
        with cwd_importable():
            factory = getattr(importlib.import_module(module_name), function_name)
    except Exception as exc:  # missing, or broken at import: either way the spec is at fault
        raise ConfigError(
            "model", f"cannot load {spec!r} ({type(exc).__name__}: {exc}); give module:function "
            "importable from the current folder or an installed package"
        ) from None
    try:
        with cwd_importable():  # a builder may import its helpers lazily
            model = factory(input_shape, num_classes)
    except P2PFLError:
        raise
    except Exception as exc:
        raise ConfigError(
            "model", f"{spec}({input_shape}, {num_classes}) raised {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError("model", f"{spec} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def check_model_fits(
    spec: str, model: nn.Module, dataset: Dataset, sample: np.ndarray, device: str
) -> None:
    """One forward pass and loss on a training batch, so a model that does not fit the
    data fails here in one line rather than inside every node.

    Runs on a copy with torch's RNG restored afterwards: dropout or batch-norm
    statistics in the probe must not change the run's numbers.

    Raises:
        ConfigError: (field ``model``) with what the model must accept and return.
    """
    shape, classes = dataset.input_shape, dataset.num_classes
    flat = " (flat features: reshape inside the model if it expects images)" if len(shape) == 1 else ""
    expected = (
        f"the model must take float32 inputs of shape (batch, {', '.join(map(str, shape))}){flat} "
        f"and return (batch, {classes}) class scores"
    )
    place = torch.device(device)
    probe = copy.deepcopy(model).to(place)
    x = torch.from_numpy(dataset.x_train[sample]).to(place)
    y = torch.from_numpy(dataset.y_train[sample]).to(place)
    gpus = [place] if place.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=gpus), torch.no_grad():
            scores = probe(x)
            if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (len(x), classes):
                got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
                raise ValueError(f"it returned {got} for a batch of {len(x)}")
            nn.functional.cross_entropy(scores, y)
    except Exception as exc:
        raise ConfigError("model", f"{spec} does not fit {dataset.name} ({type(exc).__name__}: {exc}); {expected}") from None


def node_seed(seed: int, index: int) -> int:
    """Independent, reproducible per-node stream seed."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
