"""A TorchLearner lends its weights without a copy and never writes into them again."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from p2pfl.learning.learner import ArrayBatches, TorchLearner


def learner() -> TorchLearner:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return TorchLearner(model, optimizer, ArrayBatches(x, y, batch_size=8))


def test_lent_weights_are_views_that_training_and_loading_never_change() -> None:
    lender = learner()
    lent = lender.lend_weights()
    kept = {name: array.copy() for name, array in lent.items()}
    weight = dict(lender.model.named_parameters())["0.weight"]
    assert np.shares_memory(lent["0.weight"], weight.detach().numpy())  # no copy
    with pytest.raises(ValueError):
        lent["0.weight"][0, 0] = 1.0  # read-only
    lender.train(0)  # SGD steps and BatchNorm statistics: into fresh storage
    lender.set_weights({name: array + 1 for name, array in kept.items()})
    lender.train(1)
    for name, array in lent.items():
        np.testing.assert_array_equal(array, kept[name])
    assert not np.shares_memory(lent["0.weight"], weight.detach().numpy())


def test_training_after_lending_gives_the_same_bits_as_without() -> None:
    plain, lender = learner(), learner()
    for round_ in range(3):
        lender.lend_weights()
        plain.train(round_)
        lender.train(round_)
        mixed = {name: array * 0.5 for name, array in plain.get_weights().items()}
        plain.set_weights(mixed)
        lender.lend_weights()
        lender.set_weights(mixed)
    for name, array in plain.get_weights().items():
        np.testing.assert_array_equal(lender.get_weights()[name], array)
