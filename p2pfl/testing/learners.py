"""Learners small enough that a test's rounds take microseconds."""

from __future__ import annotations

import torch
from torch import nn

from p2pfl.learning.learner import ArrayBatches, TorchLearner


def tiny_learner(seed: int = 0, *, features: int = 4, classes: int = 2, samples: int = 32) -> TorchLearner:
    """A linear classifier on separable synthetic data: trains in microseconds."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=generator)
    y = (x[:, 0] > 0).long() % classes
    torch.manual_seed(0)  # same initial model for every seed, as in a real run
    model = nn.Linear(features, classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = ArrayBatches(x, y, batch_size=8, seed=seed)
    return TorchLearner(model, optimizer, batches, batches, seed=seed)
