"""Helpers shared by the aggregators: who is present, stacking, flattening."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Weights = dict[str, np.ndarray]  # the same alias as p2pfl.learning.learner (no torch import here)


def present_peers(received: Mapping[str, Mapping[str, np.ndarray]], weights: Mapping[str, float]) -> list[str]:
    """Peers that arrived and belong to this round's plan, in name order.

    Name order (not arrival order) keeps every result bit-identical for a given seed.
    """
    return sorted(p for p in received if p in weights)


def models(
    own: Mapping[str, np.ndarray],
    received: Mapping[str, Mapping[str, np.ndarray]],
    peers: list[str],
) -> list[Mapping[str, np.ndarray]]:
    """``own`` first, then each present peer's tensors in ``peers`` order."""
    return [own, *(received[p] for p in peers)]


def stack(members: list[Mapping[str, np.ndarray]], name: str) -> np.ndarray:
    """One tensor of every model, stacked on a new leading axis (a fresh float64 array).

    float64 so medians and sums do not round differently depending on the input dtype.
    """
    return np.stack([np.asarray(m[name], dtype=np.float64) for m in members])


def flatten(model: Mapping[str, np.ndarray], names: list[str]) -> np.ndarray:
    """All tensors of a model as one float64 vector, in ``names`` order."""
    return np.concatenate([np.asarray(model[n], dtype=np.float64).ravel() for n in names])
