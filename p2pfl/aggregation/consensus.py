"""How far models are from agreeing: the consensus distance that gossip drives to zero.

Numpy only (no torch), so the consortium tools can score members' final models too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from p2pfl.aggregation._common import Weights

__all__ = ["distances_to", "model_distances", "model_sum"]


#: Elements of all models together handled at once: the stacked block and its float64
#: centred copy stay under ~50 MB. Stacking a whole 10M-parameter tensor of 8 models took
#: 1 GB (3 model copies per node), the run's peak; smaller tensors are one block, as before.
BLOCK_ELEMENTS = 1 << 22


def model_distances(models: Sequence[Weights]) -> np.ndarray:
    """Each model's squared distance to the average model (the consensus distance).

    Computed tensor by tensor, a large tensor in blocks of columns: a few large numpy
    operations per block instead of a flattened copy of every model."""
    total = np.zeros(len(models))
    block = max(1, BLOCK_ELEMENTS // len(models))
    for name in sorted(models[0]):
        flat = [model[name].reshape(-1) for model in models]
        for start in range(0, max(flat[0].size, 1), block):
            stacked = np.stack([f[start : start + block] for f in flat])
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
