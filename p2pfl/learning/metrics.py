"""Evaluation metrics besides accuracy and loss: the built-ins and the user's own.

A metric is a function ``f(y_true, y_score)`` of the test set's labels (integers,
shape ``(n,)``) and the model's class probabilities (softmax of its outputs, shape
``(n, classes)``), returning a number or a ``{key: number}`` mapping (written as
``name_key``, e.g. per-class recall as ``recall_0``, ``recall_1``, ...). The built-ins
are plain numpy, so asking for them costs one pass over arrays the evaluation already
has; nothing is collected when no metric is asked for::

    TorchLearner(model, optimizer, train, test, metrics=["auc", "f1"])
    TorchLearner(model, optimizer, train, test, metrics={"sensitivity": my_function})
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from p2pfl.errors import ConfigError, P2PFLError
from p2pfl.learning._imports import cwd_importable
from p2pfl.settings import LEARNER, METRICS

__all__ = [
    "BUILTIN_METRICS", "MetricFn", "Metrics", "RESERVED_NAMES", "check_metrics", "compute_metrics", "f1_score",
    "recall_per_class", "resolve_metrics", "roc_auc",
]

#: ``f(y_true, y_score) -> number | {key: number}``
MetricFn = Callable[[np.ndarray, np.ndarray], Any]
#: What ``TorchLearner(metrics=...)`` takes: names (built-in or ``module:function``),
#: functions, or a ``{name: function or built-in name}`` mapping.
Metrics = Mapping[str, "MetricFn | str"] | Sequence["str | MetricFn"]

#: The keys a ``metrics.jsonl`` row already has: a metric may not take one of them.
RESERVED_NAMES = frozenset({
    "node", "round", "train_loss", "test_loss", "test_accuracy", "bytes_sent", "bytes_received",
    "round_seconds", "received_from", "missing", "epsilon", "timestamp", "metrics", "consensus_distance",
})


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve of a binary task (class 1 positive); NaN if the test set
    holds one class only. Ties count half, as in the Mann-Whitney U statistic."""
    positive = y_true == 1
    n_pos = int(positive.sum())
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(y_score[:, 1], return_inverse=True, return_counts=True)
    # 1-based ranks, tied scores sharing the mean of the ranks they span
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = float(mean_rank[inverse][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def f1_score(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """F1 of class 1 in a binary task, predicting the most probable class (0 when there
    is no positive prediction or label at all, as scikit-learn reports it)."""
    predicted = y_score.argmax(axis=1) == 1
    actual = y_true == 1
    tp = int((predicted & actual).sum())
    wrong = int((predicted != actual).sum())  # false positives + false negatives
    return 2.0 * tp / (2 * tp + wrong) if tp or wrong else 0.0


def recall_per_class(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """Recall (sensitivity) of each class, keyed by class index; NaN for a class the test
    set does not hold."""
    classes = y_score.shape[1]
    support = np.bincount(y_true, minlength=classes)
    hits = np.bincount(y_true[y_score.argmax(axis=1) == y_true], minlength=classes)
    return {str(k): (float(hits[k] / support[k]) if support[k] else math.nan) for k in range(classes)}


#: The built-ins by name (:data:`p2pfl.settings.METRICS` says what each needs).
BUILTIN_METRICS: dict[str, MetricFn] = {"auc": roc_auc, "f1": f1_score, "recall": recall_per_class}
_BINARY = {name for name, needs in METRICS.items() if needs == "binary"}


def resolve_metrics(spec: Metrics | None) -> dict[str, MetricFn]:
    """The metrics ``spec`` names, by the key each is written under.

    Args:
        spec: built-in names (``"auc"``, ``"f1"``, ``"recall"``), ``"module:function"``
            names (imported from the current folder or an installed package; written
            under the function's name), functions (written under their ``__name__``), or
            a ``{name: function or built-in name}`` mapping.

    Raises:
        ConfigError: (field ``metrics``) an unknown name, one that cannot be imported, a
            name a metrics.jsonl row already uses, or the same name twice.
    """
    if not spec:
        return {}
    pairs: list[tuple[str, MetricFn | str]]
    if isinstance(spec, Mapping):
        pairs = list(spec.items())
    elif isinstance(spec, str):
        pairs = [(spec, spec)]
    else:
        pairs = [(_name_of(item), item) for item in spec]
    resolved: dict[str, MetricFn] = {}
    for name, item in pairs:
        if not isinstance(name, str) or not name.isidentifier() or name in RESERVED_NAMES:
            raise ConfigError(
                "metrics", f"{name!r} cannot name a metric: use an identifier that is not one of a metrics.jsonl "
                f"row's keys ({', '.join(sorted(RESERVED_NAMES))})"
            )
        if name in resolved:
            raise ConfigError("metrics", f"names the metric {name!r} twice")
        resolved[name] = _function(item)
    return resolved


def check_metrics(metrics: Mapping[str, MetricFn], num_classes: int, data: str = "the data") -> None:
    """Refuse binary metrics (AUC, F1) on a task that does not have exactly two classes.

    Raises:
        ConfigError: (field ``metrics``) naming them and what to use instead.
    """
    binary = [name for name, fn in metrics.items() if _is_binary(fn)]
    if binary and num_classes != 2:
        raise ConfigError(
            "metrics", f"{', '.join(binary)} {'needs' if len(binary) == 1 else 'need'} a binary task, but {data} "
            f"has {num_classes} classes: use recall (per-class recall) or your own module:function metric"
        )


def compute_metrics(metrics: Mapping[str, MetricFn], y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """Every metric on one evaluation, flattened: ``{"auc": 0.93, "recall_0": 0.9, ...}``.

    Raises:
        ValueError: a binary metric on scores of more than two classes, or a metric
            that returned something other than a number or a mapping of numbers.
    """
    values: dict[str, float] = {}
    for name, fn in metrics.items():
        if _is_binary(fn) and y_score.shape[1] != 2:
            raise ValueError(f"metric {name!r} needs a binary task, but the model scores {y_score.shape[1]} classes")
        value = fn(y_true, y_score)
        try:
            if isinstance(value, Mapping):
                values.update({f"{name}_{key}": float(v) for key, v in value.items()})
            else:
                values[name] = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"metric {name!r} returned {type(value).__name__}; return a number or a mapping of numbers"
            ) from None
    return values


def _is_binary(fn: MetricFn) -> bool:
    return any(fn is BUILTIN_METRICS[name] for name in _BINARY)


def _name_of(item: str | MetricFn) -> str:
    if isinstance(item, str):
        return item.rpartition(":")[2]  # module:function is written under the function's name
    return str(getattr(item, "__name__", type(item).__name__))


def _function(item: MetricFn | str) -> MetricFn:
    if callable(item):
        return item
    if not isinstance(item, str):
        raise ConfigError("metrics", f"expected a metric name or a function, got {type(item).__name__}")
    if item in BUILTIN_METRICS:
        return BUILTIN_METRICS[item]
    if not LEARNER.fullmatch(item):
        valid = ", ".join(f"{key} ({needs})" for key, needs in METRICS.items())
        raise ConfigError("metrics", f"unknown metric {item!r}; valid: {valid}, or module:function for your own")
    module_name, _, function_name = item.partition(":")
    try:
        with cwd_importable():
            fn = getattr(importlib.import_module(module_name), function_name)
    except P2PFLError:
        raise
    except Exception as exc:  # missing, or broken at import: either way the name is at fault
        raise ConfigError(
            "metrics", f"cannot load {item!r} ({type(exc).__name__}: {exc}); give module:function importable "
            "from the current folder or an installed package"
        ) from None
    if not callable(fn):
        raise ConfigError("metrics", f"{item} is a {type(fn).__name__}, not a function(y_true, y_score)")
    return fn  # type: ignore[no-any-return]
