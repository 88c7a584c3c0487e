"""Small PyTorch classifiers for the bundled datasets, and a factory to build them by name.

All forward passes are deterministic (no dropout, no batch statistics), so a
seeded run gives the same weights on every node that starts from the same
initialisation. Parameters use PyTorch's default initialisation; the caller
seeds ``torch`` before building.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from p2pfl.errors import ConfigError


class MLP(nn.Module):
    """One-hidden-layer perceptron: flatten -> linear -> ReLU -> linear.

    Args:
        in_features: number of input features after flattening a sample.
        num_classes: number of output logits.
        hidden: width of the hidden layer.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return logits of shape ``(batch, num_classes)`` for input ``(batch, *shape)``."""
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 3x3 convolutions, one 2x2 max-pool and a two-layer head.

    Sized for ``(1, 8, 8)`` digits, where the head sees ``32 * 4 * 4`` features;
    any ``(C, H, W)`` with ``H, W >= 2`` works (odd sizes are floored by the pool).

    Args:
        input_shape: per-sample shape ``(channels, height, width)``.
        num_classes: number of output logits.
        hidden: width of the dense hidden layer.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(32 * (height // 2) * (width // 2), hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return logits of shape ``(batch, num_classes)`` for input ``(batch, C, H, W)``."""
        return self.head(self.features(x))


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: flatten -> linear (softmax is left to the loss).

    Args:
        in_features: number of input features after flattening a sample.
        num_classes: number of output logits.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        """Return logits of shape ``(batch, num_classes)`` for input ``(batch, *shape)``."""
        return self.net(x)


def _build_mlp(shape: tuple[int, ...], num_classes: int, hidden: int) -> nn.Module:
    return MLP(math.prod(shape), num_classes, hidden=hidden)


def _build_cnn(shape: tuple[int, ...], num_classes: int, hidden: int) -> nn.Module:
    if len(shape) != 3 or shape[1] < 2 or shape[2] < 2:
        raise ConfigError(
            "model",
            f"'cnn' needs image samples of shape (channels, height, width) with height, width >= 2, "
            f"got input shape {shape}; load the dataset with image=True (e.g. digits as (1, 8, 8)) "
            "or choose 'mlp' or 'logreg' for flat features",
        )
    # `hidden` sizes the MLP only: the CNN keeps its fixed 64-unit head.
    return SmallCNN((shape[0], shape[1], shape[2]), num_classes)


def _build_logreg(shape: tuple[int, ...], num_classes: int, hidden: int) -> nn.Module:
    return LogisticRegression(math.prod(shape), num_classes)


_BUILDERS: dict[str, Callable[[tuple[int, ...], int, int], nn.Module]] = {
    "mlp": _build_mlp,
    "cnn": _build_cnn,
    "logreg": _build_logreg,
}


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`.

    Returns:
        The model names, sorted.
    """
    return sorted(_BUILDERS)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, *, hidden: int = 128) -> nn.Module:
    """Build a freshly initialised classifier by name.

    Args:
        name: ``"mlp"``, ``"cnn"`` or ``"logreg"`` (case-insensitive).
        input_shape: per-sample shape, e.g. ``(64,)`` or ``(1, 8, 8)``.
        num_classes: number of output logits (>= 2).
        hidden: hidden width of the ``mlp``; ignored by the others.

    Returns:
        The model, producing logits of shape ``(batch, num_classes)``.

    Raises:
        ConfigError: (field ``model``) for an unknown name, an unusable shape,
            ``num_classes < 2``, ``hidden < 1``, or ``cnn`` on non-image input.
    """
    key = name.strip().lower()
    if key not in _BUILDERS:
        raise ConfigError("model", f"unknown model {name!r}; choose one of {available_models()}")
    shape = tuple(int(d) for d in input_shape)
    if not shape or min(shape) < 1:
        raise ConfigError(
            "model", f"input shape must be non-empty with positive sizes, got {tuple(input_shape)}"
        )
    if num_classes < 2:
        raise ConfigError("model", f"num_classes must be >= 2, got {num_classes}")
    if hidden < 1:
        raise ConfigError("model", f"hidden width must be >= 1, got {hidden}")
    return _BUILDERS[key](shape, num_classes, hidden)
