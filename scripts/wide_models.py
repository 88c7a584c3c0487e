"""Wide MLPs of real size for the memory benchmarks, passed as ``--model wide_models:mlp_10m``.

Two hidden layers of width ``H``: ``in*H + H*H + H*classes`` weights, so ``H`` sets the
size (digits: 64 inputs, 10 classes). Put ``scripts/`` on ``PYTHONPATH`` to use them.
"""

from __future__ import annotations

from torch import nn

#: hidden width per model name: about 1M, 10.6M and 50M parameters on digits
WIDTHS = {"mlp_1m": 970, "mlp_10m": 3220, "mlp_50m": 7030}


def wide_mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int) -> nn.Module:
    features = 1
    for d in input_shape:
        features *= d
    return nn.Sequential(
        nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
    )


def mlp_1m(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return wide_mlp(input_shape, num_classes, WIDTHS["mlp_1m"])


def mlp_10m(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return wide_mlp(input_shape, num_classes, WIDTHS["mlp_10m"])


def mlp_50m(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return wide_mlp(input_shape, num_classes, WIDTHS["mlp_50m"])
