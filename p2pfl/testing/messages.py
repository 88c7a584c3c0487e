"""Raw messages as a client that knows nothing of p2pfl would send them (lists of bytes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

from p2pfl import wire
from p2pfl.learning.learner import Learner


def model_frames(
    learner: Learner,
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
