"""Codecs: compressed encodings of a model's float32 tensors, checked strictly on receipt.

A compressed model message is an ordinary message whose ``meta.codec`` names the codec
(``"int8"``, ``"topk:0.01"``, ...) and whose tensor table lists the codec's *parts*
instead of the model's tensors. Every part is a plain wire tensor, and which parts a
message must carry (names, dtypes, shapes, byte sizes) follows from the receiver's own
model schema and its own codec alone (:meth:`Codec.parts`): the table is checked against
that before any payload is read, so a message cannot declare more entries than the model
has (no decompression bomb), and the decoded size is the model's. Then :meth:`Codec.decode`
checks what a table cannot: index bounds and order, int8 range, finite non-negative scales.

Per float32 tensor ``t`` of ``n`` entries and shape ``S`` (other dtypes travel unchanged):

=========== =====================================================================
``fp16``    ``t``: float16 ``S``
``bf16``    ``t``: uint16 ``S`` (the upper half of each float32, rounded to nearest even)
``int8[:C]`` ``t``: int8 ``S`` in [-127, 127]; ``t#scale``: float32 ``[m]``, ``m = 1``
            (one scale) or ``ceil(n / C)`` (one per chunk of ``C`` entries); value = q * scale
``topk:F``  ``t#idx``: uint16 ``[k]`` (uint32 when ``n > 65536``) strictly increasing,
            ``< n``, or, when smaller (``ceil(n / 8)`` bytes < the indices'), ``t#mask``:
            uint8 ``[ceil(n / 8)]``, bit ``i % 8`` of byte ``i // 8`` set for a sent entry
            (exactly ``k`` bits, none beyond ``n``); ``t``: float32 ``[k]`` in index order
``randk:F`` ``t``: float32 ``[k]`` at the indices drawn from ``meta.codec_seed``
``…:fp16``  (``topk:F:fp16``, ``randk:F:fp16``) ``t``: float16 ``[k]`` instead
``…:int8``  (``topk:F:int8``, ``randk:F:int8``) ``t``: int8 ``[k]`` in [-127, 127] and
            ``t#scale``: float32 ``[1]``, value = q * scale (stochastically rounded)
``…:int4``  the same in [-7, 7], two per byte: ``t``: uint8 ``[ceil(k / 2)]``, entry ``2j``
            in the low nibble of byte ``j``, ``2j + 1`` in the high one, as 4-bit two's
            complement (0x8 refused; the unused high nibble when ``k`` is odd is 0)
=========== =====================================================================

with ``k = max(1, ceil(F * n))`` (``0`` when ``n = 0``). Entries not sent decode as 0.
:func:`p2pfl.node.compression.ErrorFeedback` keeps what was not sent for the next message.
The API is the sender's ``encode`` (which also returns exactly what the receiver will
decode, ``sent``) and the receiver's ``decode``: a CHOCO exchange compresses its
differences ``x - x_hat`` with the same two calls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from p2pfl.errors import WireError
from p2pfl.wire.tensors import PackedSchema, TensorSpec

#: header meta key naming the codec of a compressed model message
CODEC_META = "codec"
#: header meta key of randk's mask seed (an int in [0, 2**63))
SEED_META = "codec_seed"
#: codec names, as ``compress`` takes them
CODEC_NAMES = ("fp16", "bf16", "int8", "topk", "randk")
_MAX_CHUNK = 2**31
#: how the values of a sparse codec's entries travel (``topk:F[:VALUES]``)
SPARSE_VALUES = ("float32", "fp16", "int8", "int4")
#: tensors up to this many entries carry their topk indices as uint16
_U16_ENTRIES = 2**16
_F16_MAX = float(np.finfo(np.float16).max)
_FLOAT32 = "float32"


@dataclass(frozen=True)
class Encoded:
    """One compressed message body: the parts to send, their meta, and what they decode to."""

    parts: dict[str, np.ndarray]  # name -> part, in table order
    meta: dict[str, Any]  # the header meta the parts need (codec, seed)
    sent: dict[str, np.ndarray]  # name -> the dense tensor the receiver will decode


@dataclass(frozen=True)
class Codec:
    """A compression codec; build one with :func:`parse_codec`.

    Attributes:
        name: one of :data:`CODEC_NAMES`.
        fraction: topk/randk: the fraction F of entries sent, in (0, 1].
        chunk: int8: entries per scale (0 = one scale per tensor).
        values: topk/randk: how the values travel, one of :data:`SPARSE_VALUES`.
    """

    name: str
    fraction: float = 0.0
    chunk: int = 0
    values: str = "float32"
    _parts: dict[int, tuple[Mapping[str, TensorSpec], PackedSchema]] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )

    @property
    def spec(self) -> str:
        """The codec as ``compress`` and ``meta.codec`` spell it."""
        if self.name in ("topk", "randk"):
            suffix = "" if self.values == "float32" else f":{self.values}"
            return f"{self.name}:{self.fraction!r}{suffix}"
        if self.name == "int8" and self.chunk:
            return f"int8:{self.chunk}"
        return self.name

    @property
    def sparse(self) -> bool:
        """Sends a fraction of the entries (meant for CHOCO's differences, not weights)."""
        return self.name in ("topk", "randk")

    def count(self, n: int) -> int:
        """Entries of an ``n``-entry tensor that topk/randk send."""
        return 0 if n == 0 else min(n, max(1, math.ceil(self.fraction * n)))

    def parts(self, schema: Mapping[str, TensorSpec]) -> PackedSchema:
        """The table a message compressed with this codec must carry for ``schema``."""
        cached = self._parts.get(id(schema))
        if cached is not None and cached[0] is schema:
            return cached[1]
        table: dict[str, TensorSpec] = {}
        for name, spec in schema.items():
            n = math.prod(spec.shape)
            if spec.dtype != _FLOAT32:
                table[name] = spec
            elif self.name == "fp16":
                table[name] = TensorSpec("float16", spec.shape)
            elif self.name == "bf16":
                table[name] = TensorSpec("uint16", spec.shape)
            elif self.name == "int8":
                table[name] = TensorSpec("int8", spec.shape)
                table[name + "#scale"] = TensorSpec(_FLOAT32, (self._scales(n),))
            else:
                k = self.count(n)
                if self.name == "topk" and bitmap(n, k):
                    table[name + "#mask"] = TensorSpec("uint8", (-(-n // 8),))
                elif self.name == "topk":
                    table[name + "#idx"] = TensorSpec(index_dtype(n), (k,))
                if self.values in ("int8", "int4"):
                    table[name] = TensorSpec("int8", (k,)) if self.values == "int8" else TensorSpec("uint8", ((k + 1) // 2,))
                    table[name + "#scale"] = TensorSpec(_FLOAT32, (1,))
                else:
                    table[name] = TensorSpec("float16" if self.values == "fp16" else _FLOAT32, (k,))
        packed = PackedSchema(table)
        if len(self._parts) >= 8:  # a node has one schema; tests build a few
            self._parts.clear()
        self._parts[id(schema)] = (schema, packed)
        return packed

    def _scales(self, n: int) -> int:
        return 1 if not self.chunk else -(-n // self.chunk)

    # -- sending ---------------------------------------------------------------------------

    def encode(self, tensors: Mapping[str, np.ndarray], rng: np.random.Generator) -> Encoded:
        """Compress ``tensors`` (float32 ones; others pass unchanged); ``rng`` drives int8's
        stochastic rounding and randk's mask seed (seed it per node for reproducible runs)."""
        parts: dict[str, np.ndarray] = {}
        sent: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {CODEC_META: self.spec}
        seed = 0
        if self.name == "randk":
            seed = int(rng.integers(0, 2**63))
            meta[SEED_META] = seed
        for position, (name, array) in enumerate(tensors.items()):
            if array.dtype != np.float32:
                parts[name] = sent[name] = array
                continue
            flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
            if self.name == "fp16":
                half = np.clip(flat, -_F16_MAX, _F16_MAX).astype(np.float16)
                parts[name], dense = half.reshape(array.shape), half.astype(np.float32)
            elif self.name == "bf16":
                bits = flat.view(np.uint32).astype(np.uint64)
                upper = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
                parts[name], dense = upper.reshape(array.shape), _from_bf16(upper)
            elif self.name == "int8":
                q, scale = self._quantize(flat, rng)
                parts[name], parts[name + "#scale"] = q.reshape(array.shape), scale
                dense = self._dequantize(q, scale)
            else:
                k = self.count(flat.size)
                if self.name == "topk":
                    idx = np.sort(np.argpartition(-np.abs(flat), k - 1)[:k]) if k else np.zeros(0, np.int64)
                    if bitmap(flat.size, k):
                        mask = np.zeros(flat.size, np.bool_)
                        mask[idx] = True
                        parts[name + "#mask"] = np.packbits(mask, bitorder="little")
                    else:
                        parts[name + "#idx"] = idx.astype(index_dtype(flat.size))
                else:
                    idx = randk_indices(seed, position, flat.size, k)
                values = flat[idx]
                if self.values == "fp16":
                    half = np.clip(values, -_F16_MAX, _F16_MAX).astype(np.float16)
                    parts[name], values = half, half.astype(np.float32)
                elif self.values == "int8":
                    q, scale = self._quantize(values, rng, chunk=0)
                    parts[name], parts[name + "#scale"] = q, scale
                    values = self._dequantize(q, scale, chunk=0)
                elif self.values == "int4":
                    q, scale = self._quantize(values, rng, chunk=0, levels=7)
                    parts[name], parts[name + "#scale"] = _pack_nibbles(q), scale
                    values = self._dequantize(q, scale, chunk=0)
                else:
                    parts[name] = values
                dense = np.zeros_like(flat)
                dense[idx] = values
            sent[name] = dense.reshape(array.shape)
        return Encoded(parts=parts, meta=meta, sent=sent)

    def _quantize(
        self, flat: np.ndarray, rng: np.random.Generator, chunk: int | None = None, levels: int = 127
    ) -> tuple[np.ndarray, np.ndarray]:
        """int8 in [-levels, levels] with stochastic rounding; ``chunk`` entries per scale
        (None: the codec's)."""
        chunk = self.chunk if chunk is None else chunk
        m = 1 if not chunk else -(-flat.size // chunk)
        chunk = chunk or max(flat.size, 1)
        padded = np.zeros(m * chunk, np.float32)
        padded[: flat.size] = flat
        blocks = padded.reshape(m, chunk)
        scale = (np.abs(blocks).max(axis=1) / levels).astype(np.float32)
        safe = np.where(scale > 0, scale, 1).astype(np.float32)
        # stochastic rounding: floor(y + u) is unbiased, E[q] = y (a model with inf, which the
        # node reports as non-finite anyway, gives NaN here: no warning for it)
        with np.errstate(over="ignore", invalid="ignore"):
            y = blocks / safe[:, None] + rng.random(blocks.shape, dtype=np.float32)
            q = np.clip(np.nan_to_num(np.floor(y)), -levels, levels).astype(np.int8).reshape(-1)[: flat.size]
        return q, scale

    def _dequantize(self, q: np.ndarray, scale: np.ndarray, chunk: int | None = None) -> np.ndarray:
        chunk = self.chunk if chunk is None else chunk
        flat = q.reshape(-1).astype(np.float32)
        # a huge scale overflows to inf: refused afterwards as non-finite, not worth a warning
        with np.errstate(over="ignore", invalid="ignore"):
            if not chunk:
                return flat * scale[0] if scale.size else flat
            return flat * np.repeat(scale, chunk)[: flat.size]

    # -- receiving -------------------------------------------------------------------------

    def decode(
        self, parts: Mapping[str, np.ndarray], meta: Mapping[str, Any], schema: Mapping[str, TensorSpec]
    ) -> dict[str, np.ndarray]:
        """The dense tensors of ``parts``, already checked against :meth:`parts` (names,
        dtypes, shapes, sizes).

        Raises:
            WireError: ``codec_value`` for an index out of bounds, repeated or out of order,
                an int8 of -128, a negative scale, or a bad randk seed.
        """
        seed: Any = 0
        if self.name == "randk":
            seed = meta.get(SEED_META)
            if type(seed) is not int or not 0 <= seed < 2**63:
                raise WireError("codec_value", f"randk needs meta.{SEED_META}, an int in [0, 2**63)")
        out: dict[str, np.ndarray] = {}
        for position, (name, spec) in enumerate(schema.items()):
            part = parts[name]
            if spec.dtype != _FLOAT32:
                out[name] = part
                continue
            n = math.prod(spec.shape)
            if self.name == "fp16":
                dense = part.astype(np.float32)
            elif self.name == "bf16":
                dense = _from_bf16(part.reshape(-1))
            elif self.name == "int8":
                dense = self._dequantize(part, _checked_scale(name, part, parts))
            else:
                k = self.count(n)
                if self.name == "topk" and name + "#mask" in parts:
                    bits = np.unpackbits(parts[name + "#mask"], bitorder="little")
                    idx = np.flatnonzero(bits[:n])
                    if idx.size != k or bits[n:].any():
                        raise WireError("codec_value", f"tensor {name!r}: the mask must set {k} of the "
                                        f"first {n} bits and no other")
                elif self.name == "topk":
                    idx = parts[name + "#idx"].astype(np.int64)
                    if idx.size and (int(idx[-1]) >= n or (idx.size > 1 and not bool((np.diff(idx) > 0).all()))):
                        raise WireError(
                            "codec_value", f"tensor {name!r}: indices must be strictly increasing and < {n}"
                        )
                else:
                    idx = randk_indices(seed, position, n, k)
                if self.values == "int8":
                    values = self._dequantize(part, _checked_scale(name, part, parts), chunk=0)
                elif self.values == "int4":
                    q = _unpack_nibbles(name, part, k)
                    values = self._dequantize(q, _checked_scale(name, q, parts), chunk=0)
                else:
                    values = part.astype(np.float32)
                dense = np.zeros(n, np.float32)
                dense[idx] = values
            dense = dense.reshape(spec.shape)
            dense.flags.writeable = False
            out[name] = dense
        return out


def randk_indices(seed: int, position: int, n: int, k: int) -> np.ndarray:
    """randk's mask for the tensor at ``position`` (0-based, in the model's order): ``k`` of
    ``n`` indices, sorted, drawn by ``numpy.random.default_rng([seed, position]).choice(n,
    k, replace=False)`` (PCG64 seeded through SeedSequence)."""
    if k == 0:
        return np.zeros(0, np.int64)
    return np.sort(np.random.default_rng([seed, position]).choice(n, k, replace=False))


def bitmap(n: int, k: int) -> bool:
    """Whether topk sends ``k`` of ``n`` entries' positions as a bitmap (``ceil(n / 8)``
    bytes), which it does when that is smaller than ``k`` indices."""
    return -(-n // 8) < k * (2 if index_dtype(n) == "uint16" else 4)


def index_dtype(n: int) -> str:
    """The dtype of topk's indices into an ``n``-entry tensor: ``uint16`` when ``n <= 65536``
    (both ends know ``n`` from the model's schema), else ``uint32``."""
    return "uint16" if n <= _U16_ENTRIES else "uint32"


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """int8 values in [-7, 7], two per byte (low nibble first; a last odd one's high nibble 0)."""
    nibbles = (q.astype(np.uint8) & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def _unpack_nibbles(name: str, part: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` int4 values of ``part`` as int8, refusing 0x8 (-8) and a non-zero pad nibble."""
    nibbles = np.empty(2 * part.size, np.uint8)
    nibbles[0::2], nibbles[1::2] = part & 0xF, part >> 4
    if (nibbles[:k] == 8).any() or nibbles[k:].any():
        raise WireError("codec_value", f"tensor {name!r}: int4 value -8 (range is [-7, 7]) or a non-zero pad")
    return (nibbles[:k].astype(np.int8) << 4) >> 4  # sign-extend the 4-bit two's complement


def _checked_scale(name: str, part: np.ndarray, parts: Mapping[str, np.ndarray]) -> np.ndarray:
    """The int8 ``part``'s scales, after refusing an int8 of -128 and a negative or NaN scale."""
    if part.size and int(part.min()) < -127:
        raise WireError("codec_value", f"tensor {name!r}: int8 value -128 (range is [-127, 127])")
    scale = parts[name + "#scale"]
    if scale.size and not float(scale.min()) >= 0:
        raise WireError("codec_value", f"tensor {name!r}: negative or NaN scale")
    return scale


def _from_bf16(upper: np.ndarray) -> np.ndarray:
    return (upper.astype(np.uint32) << 16).view(np.float32)


def parse_codec(spec: str) -> Codec | None:
    """The codec ``spec`` names (``""`` = none): ``fp16``, ``bf16``, ``int8[:CHUNK]``,
    ``topk:F[:VALUES]`` or ``randk:F[:VALUES]`` with F in (0, 1] and VALUES ``fp16``,
    ``int8`` or ``int4`` (float32 without).

    Raises:
        ValueError: naming what would be valid.
    """
    if not spec:
        return None
    name, _, arg = spec.partition(":")
    if name not in CODEC_NAMES:
        raise ValueError(f"codec {name!r} not in {', '.join(CODEC_NAMES)}")
    if name in ("fp16", "bf16"):
        if arg:
            raise ValueError(f"{name} takes no argument, got {spec!r}")
        return Codec(name)
    if name == "int8":
        if not arg:
            return Codec(name)
        if not arg.isdigit() or not 0 < int(arg) <= _MAX_CHUNK:
            raise ValueError(f"int8:CHUNK needs a chunk size in [1, 2**31], got {arg!r}")
        return Codec(name, chunk=int(arg))
    arg, colon, values = arg.partition(":")
    try:
        fraction = float(arg)
    except ValueError:
        fraction = math.nan
    if not 0 < fraction <= 1:  # NaN fails too
        raise ValueError(f"{name}:F needs a fraction F in (0, 1], e.g. {name}:0.01, got {arg!r}")
    if values not in ("fp16", "int8", "int4") and (colon or values):
        raise ValueError(f"{name}:F:VALUES takes fp16, int8 or int4 as VALUES, got {values!r}")
    return Codec(name, fraction=fraction, values=values or "float32")
