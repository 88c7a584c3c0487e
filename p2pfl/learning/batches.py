"""Mini-batches over in-memory tensors (re-exported by :mod:`p2pfl.learning.learner`)."""

from __future__ import annotations

import math
from typing import Any

import torch


class ArrayBatches:
    """Mini-batches over in-memory tensors, reshuffled each epoch from a seeded generator.

    A lighter stand-in for ``DataLoader(TensorDataset(...))``: slicing whole tensors avoids
    per-sample Python work, which dominates training time for small models.
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        self.x, self.y = x, y
        self.dataset = x  # len() of it is the sample count, as with a DataLoader
        self.batch_size = batch_size
        self.shuffle = shuffle
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def rng_state(self) -> torch.Tensor:
        return self._generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self._generator.set_state(state)

    def __iter__(self) -> Any:
        n = len(self.x)
        order = torch.randperm(n, generator=self._generator) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                yield self.x[start : start + self.batch_size], self.y[start : start + self.batch_size]
            else:
                idx = order[start : start + self.batch_size]
                yield self.x[idx], self.y[idx]
