"""How far models are from agreeing: the consensus distance that gossip drives to zero.

Numpy only (no torch), so the consortium tools can score members' final models too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from p2pfl.aggregation._common import Weights

__all__ = ["model_distances"]


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
