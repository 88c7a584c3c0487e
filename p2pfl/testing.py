"""Helpers for testing code built on p2pfl: tiny learners and crafted raw messages.

Shipped with the package (like ``trio.testing``) so users can test their own learners,
schedules and intruder scenarios the way p2pfl's own tests do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
import torch
from torch import nn

from p2pfl import wire
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


def model_frames(
    learner: TorchLearner,
    *,
    sender: str,
    round: int,
    samples: int = 1,
    tensors: Mapping[str, np.ndarray] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> list[bytes]:
    """A well-formed model message as a raw client would send it (list of bytes)."""
    payload = tensors if tensors is not None else learner.get_weights()
    frames = wire.encode(kind="model", sender=sender, round=round, samples=samples, tensors=payload, meta=meta)
    return [bytes(f) for f in frames]


def with_header(frames: Sequence[bytes], **changes: Any) -> list[bytes]:
    """``frames`` with header fields replaced (to forge or corrupt a message)."""
    header = msgpack.unpackb(frames[0])
    header.update(changes)
    return [msgpack.packb(header), *frames[1:]]
