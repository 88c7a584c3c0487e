"""Hostile compressed models: every way a peer may lie in a codec's parts.

:func:`codec_attack` builds a compressed model message (for the attacked node's codec,
or any codec when it has none) and spoils it in one of :data:`CODEC_ATTACKS`' ways:
indices out of bounds, repeated or unsorted (for a bitmap: a bit beyond the tensor, one
bit fewer or more than declared); more entries than the schema allows; NaN,
infinite or negative scales; int8 values of -128 (int8 itself and topk/randk's ``:int8``
values), int4 values of -8 or a set pad nibble (``:int4``); a truncated payload; a missing or bad
randk seed; another codec's name; a codec on a kind that is never compressed.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from p2pfl import wire
from p2pfl.wire import Codec, parse_codec
from p2pfl.wire.codecs import SEED_META

#: codecs an uncompressed node is sent (tiny models: fractions that keep a few entries)
ANY_CODECS = ("fp16", "bf16", "int8", "int8:3", "topk:0.5", "randk:0.5", "topk:0.5:fp16", "topk:0.5:int8",
              "randk:0.5:int8", "topk:0.5:int4", "randk:0.5:int4")
#: the ways a compressed model is spoiled
CODEC_ATTACKS = (
    "intact", "bad_index", "duplicate_index", "unsorted_index", "count_beyond", "nan_scale", "negative_scale",
    "int8_min", "truncated", "bad_seed", "other_codec", "wrong_kind",
)


def codec_attack(
    rng: random.Random, np_rng: np.random.Generator, codec: Codec | None, sender: str, round_: int,
    weights: dict[str, np.ndarray],
) -> tuple[str, list[bytes]]:
    """One spoiled compressed model (``codec``: the attacked node's, or None); returns the
    way it was spoiled and its frames."""
    use = codec if codec is not None else parse_codec(rng.choice(ANY_CODECS))
    if use is None:  # ANY_CODECS holds no empty spec
        raise RuntimeError("no codec to attack with")
    how = rng.choice(CODEC_ATTACKS)
    encoded = use.encode(weights, np_rng)
    parts = {name: np.array(part) for name, part in encoded.parts.items()}
    meta: dict[str, Any] = dict(encoded.meta)
    kind = "model"
    index_parts = [n for n in parts if n.endswith("#idx")]
    mask_parts = [n for n in parts if n.endswith("#mask")]
    scale_parts = [n for n in parts if n.endswith("#scale")]
    value_parts = [n for n in parts if parts[n].dtype == np.int8]
    nibble_parts = [n for n in parts if n + "#scale" in parts and parts[n].dtype == np.uint8]
    if how == "bad_index" and index_parts:
        idx = parts[rng.choice(index_parts)]  # uint16 or uint32: beyond the (tiny) model either way
        top = int(np.iinfo(idx.dtype).max)
        idx[-1] = rng.choice([min(int(idx[-1]) + 10**6, top), top, 10**4])
    elif how in ("duplicate_index", "unsorted_index") and any(parts[n].size > 1 for n in index_parts):
        idx = parts[rng.choice([n for n in index_parts if parts[n].size > 1])]
        if how == "duplicate_index":
            idx[1] = idx[0]
        else:
            idx[0], idx[1] = idx[1], idx[0]
    elif how in ("bad_index", "duplicate_index", "unsorted_index") and mask_parts:
        name = rng.choice(mask_parts)
        bits = np.unpackbits(parts[name], bitorder="little")
        n = weights[name.removesuffix("#mask")].size
        if how == "bad_index" and n < bits.size:  # a bit beyond the tensor
            bits[rng.randrange(n, bits.size)] = 1
        elif how == "duplicate_index" or not (bits[:n] == 0).any():  # one entry fewer than declared
            bits[rng.choice(np.flatnonzero(bits[:n]).tolist())] = 0
        else:  # one more
            bits[rng.choice(np.flatnonzero(bits[:n] == 0).tolist())] = 1
        parts[name] = np.packbits(bits, bitorder="little")
    elif how == "count_beyond":
        name = rng.choice(sorted(parts))
        parts[name] = np.concatenate([parts[name].reshape(-1), parts[name].reshape(-1)[:1]])
    elif how in ("nan_scale", "negative_scale") and scale_parts:
        scale = parts[rng.choice(scale_parts)]
        scale[0] = rng.choice([np.nan, np.inf, -np.inf]) if how == "nan_scale" else -1.0
    elif how == "int8_min" and value_parts:
        parts[rng.choice(value_parts)].reshape(-1)[0] = -128
    elif how == "int8_min" and nibble_parts:  # int4: a nibble of -8, or a pad nibble set
        name = rng.choice(nibble_parts)
        part, odd = parts[name], use.count(weights[name].size) % 2
        if odd and rng.random() < 0.5:
            part[-1] |= 0x10 << rng.randrange(4)
        else:
            part[0] = (part[0] & 0xF0) | 0x8
    elif how == "bad_seed":
        meta[SEED_META] = rng.choice([-1, 2**63, 1.5, "7", None, [1]])
    elif how == "other_codec":
        meta["codec"] = rng.choice([c for c in ("fp16", "int8", "topk:0.25", "zstd", "", 7, None, ["int8"])
                                    if c != use.spec])
    elif how == "wrong_kind":
        kind = rng.choice(["sync", "hello", "bye"])
    tensors = parts if kind in ("model", "sync") else {}
    frames = [bytes(f) for f in wire.encode(kind=kind, sender=sender, round=round_, samples=8,
                                            tensors=tensors, meta=meta)]
    if how == "truncated" and len(frames) > 1:
        i = rng.randrange(1, len(frames))
        frames[i] = frames[i][: rng.randrange(len(frames[i]) or 1)]
    return how, frames
