"""How far models are from agreeing: the consensus distance that gossip drives to zero.

Numpy only (no torch), so the consortium tools can score members' final models too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from p2pfl.aggregation._common import Weights

__all__ = ["distances_to", "model_distances", "model_sum"]


def model_distances(models: Sequence[Weights]) -> np.ndarray:
    """Each model's squared distance to the average model (the consensus distance).

    Computed tensor by tensor: a few large numpy operations per tensor instead of a
    flattened copy of every model."""
    total = np.zeros(len(models))
    for name in sorted(models[0]):
        stacked = np.stack([model[name] for model in models]).reshape(len(models), -1)
        centred = stacked - stacked.mean(axis=0, dtype=np.float64)
        total += np.einsum("ij,ij->i", centred, centred)
    return total


def model_sum(models: Sequence[Weights]) -> dict[str, np.ndarray]:
    """The sum of ``models`` in float64, tensor by tensor, added in their order.

    A part of the average :func:`model_distances` centres on: the sums of disjoint
    groups of models, added and divided by their count, give the average of them all
    (the same up to rounding: the additions are grouped otherwise)."""
    total = {name: np.zeros(np.shape(value), dtype=np.float64) for name, value in models[0].items()}
    for model in models:
        for name, value in total.items():
            value += model[name]
    return total


def distances_to(models: Sequence[Weights], centre: Weights) -> np.ndarray:
    """Each model's squared distance to ``centre`` (float64): :func:`model_distances`
    with the average given, e.g. formed from :func:`model_sum` of several groups."""
    total = np.zeros(len(models))
    for name in sorted(centre):
        point = np.asarray(centre[name], dtype=np.float64).reshape(-1)
        for i, model in enumerate(models):
            centred = np.asarray(model[name]).reshape(-1) - point
            total[i] += np.dot(centred, centred)
    return total
