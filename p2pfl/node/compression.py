"""Compressed model messages with error feedback: what a codec did not send is sent later.

:class:`ErrorFeedback` keeps, per key (``None`` when one message goes to every
neighbour, a receiver's name where messages differ per receiver, as CHOCO's will), the
residual ``r``: each message compresses ``x + r`` and keeps ``x + r - sent`` as the next
residual. Summed over rounds, what was sent plus the last residual is what was meant,
exactly for topk/randk (they send entries unchanged) and up to float rounding for the
quantizers. Without a codec, messages are encoded exactly as before.
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from p2pfl import wire
from p2pfl.node.exchange import Frames
from p2pfl.wire import Codec, Encoded, Kind


class ErrorFeedback:
    """A codec with a residual per key.

    Args:
        codec: the codec every message is compressed with.
        seed: seeds the codec's randomness (int8's rounding, randk's masks); a node
            derives it from its name (:func:`node_seed`) so runs repeat.
    """

    def __init__(self, codec: Codec, seed: int) -> None:
        self.codec = codec
        self._rng = np.random.default_rng(seed)
        self._residual: dict[Hashable, dict[str, np.ndarray]] = {}

    def encode(self, tensors: Mapping[str, np.ndarray], key: Hashable = None) -> Encoded:
        """Compress ``tensors`` plus ``key``'s residual; keep what was not sent."""
        residual = self._residual.get(key, {})
        target = {
            name: (array + residual[name] if name in residual else array) if array.dtype == np.float32 else array
            for name, array in tensors.items()
        }
        encoded = self.codec.encode(target, self._rng)
        self._residual[key] = {
            name: target[name] - encoded.sent[name] for name in target if target[name].dtype == np.float32
        }
        return encoded

    def residual(self, key: Hashable = None) -> dict[str, np.ndarray]:
        """What ``key``'s messages have not sent yet."""
        return dict(self._residual.get(key, {}))

    def forget(self, key: Hashable = None) -> None:
        """Drop ``key``'s residual (its receiver restarted with other weights)."""
        self._residual.pop(key, None)


def node_seed(name: str, seed: int = 0) -> int:
    """A node's codec seed from the run's seed and its name: stable across runs and
    machines (not Python's salted hash), apart between nodes and between run seeds."""
    return (seed << 32) | zlib.crc32(name.encode())


async def encode_model_off_loop(feedback: ErrorFeedback | None, **fields: Any) -> Frames:
    """:func:`encode_model`, compressing in a thread: a codec's passes over a large model
    would stall every node that shares the event loop. Uncompressed, it only frames the
    tensors (no copy), so it stays on the loop."""
    if feedback is None:
        return encode_model(None, **fields)
    return await asyncio.to_thread(functools.partial(encode_model, feedback, **fields))


def encode_model(
    feedback: ErrorFeedback | None,
    *,
    sender: str,
    round: int,
    samples: int,
    tensors: Mapping[str, np.ndarray],
    meta: Mapping[str, Any] | None = None,
) -> Frames:
    """A model message's frames: compressed with error feedback, or exactly
    :func:`p2pfl.wire.encode`'s when ``feedback`` is None."""
    if feedback is None:
        return wire.encode(kind=Kind.MODEL, sender=sender, round=round, samples=samples, tensors=tensors, meta=meta)
    encoded = feedback.encode(tensors)
    return wire.encode(
        kind=Kind.MODEL, sender=sender, round=round, samples=samples, tensors=encoded.parts,
        meta={**(meta or {}), **encoded.meta},
    )
