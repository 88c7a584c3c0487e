"""The wire format: one msgpack header frame, then one raw frame per tensor.

A message on the wire is a ZeroMQ multipart message::

    frame 0   msgpack map  {"v": 1, "kind": "model", "sender": "org-a", "round": 7,
                            "samples": 512, "tensors": [[name, dtype, shape, nbytes], ...],
                            "meta": {...}}
    frame 1.. the tensors' bytes, little-endian, C order, one frame each, in header order

Tensors are sent straight from their memory (the frames are memoryviews) and decoded as
read-only numpy views of the received frames, so neither side copies the payload. Nothing
here ever unpickles: the header is plain msgpack with size limits and the payload is raw
numbers interpreted only through a dtype from a fixed allow-list.

This module knows nothing of sockets or nodes; it turns buffers into validated messages
and raises :class:`~p2pfl.errors.WireError` (whose ``reason`` feeds the rejection
counters) for anything else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from p2pfl.errors import WireError

PROTOCOL_VERSION = 1

#: Message kinds a node understands. Extensions add theirs here, never reuse a name.
#: "model" carries a round's weights; "hello" (no tensors) says "I am up, at this round";
#: "bye" says "I am leaving"; a node that fell behind sends "sync-request" and gets
#: "sync" back: the neighbour's latest averaged weights and the round they start.
#: Secure aggregation (p2pfl.privacy.secagg) adds "masked-model" (a weighted model in
#: masked fixed point), "reveal-request" (a receiver names dropped neighbours) and
#: "reveal" (a neighbour's masks with those, to remove from the sum).
KINDS = frozenset({"model", "hello", "bye", "sync-request", "sync", "masked-model", "reveal-request", "reveal"})
#: Kinds that carry tensors: checked against the local model's schema, or against the
#: per-kind schema given to :func:`decode` (the masked kinds); all others carry none.
TENSOR_KINDS = frozenset({"model", "sync", "masked-model", "reveal"})

#: dtype names allowed on the wire (numpy names; always little-endian on the wire).
WIRE_DTYPES: Mapping[str, np.dtype[Any]] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "float16", "float32", "float64",
        "int8", "int16", "int32", "int64", "uint8", "uint64", "bool",
    )
}

#: wire name by (little-endian or native) numpy dtype: ``dtype.name`` is a slow property
_NAME_OF_DTYPE: Mapping[np.dtype[Any], str] = {dtype: name for name, dtype in WIRE_DTYPES.items()}
_ITEMSIZE: Mapping[str, int] = {name: dtype.itemsize for name, dtype in WIRE_DTYPES.items()}

_MAX_NAME_CHARS = 256
_MAX_DIMS = 8
_MAX_ROUND = 2**40


@dataclass(frozen=True)
class WireLimits:
    """Bounds every decoded message must respect.

    Attributes:
        max_message_bytes: total size of all frames together.
        max_header_bytes: size of the msgpack header frame.
        max_tensors: number of tensors in one message.
    """

    max_message_bytes: int = 256 * 1024 * 1024
    max_header_bytes: int = 1024 * 1024
    max_tensors: int = 10_000


@dataclass(frozen=True)
class TensorSpec:
    """What a tensor on the wire must look like: the local model's schema entry."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * WIRE_DTYPES[self.dtype].itemsize


#: Expected tensors by name, built from the local model (see ``schema_of``).
ModelSchema = Mapping[str, TensorSpec]


class PackedSchema(dict[str, TensorSpec]):
    """A model schema that also holds its tensor table exactly as :func:`encode` packs it.

    :func:`decode` accepts the usual header (this model's table, in this order, with
    exact types: msgpack packs a float or bool differently from an int) with one
    comparison instead of checking entry by entry. Treat it as read-only.
    """

    def __init__(self, specs: Mapping[str, TensorSpec]) -> None:
        super().__init__(specs)
        table = [[name, spec.dtype, list(spec.shape), spec.nbytes] for name, spec in self.items()]
        self.packed_table: bytes = msgpack.packb(table, use_bin_type=True)
        self.parsed_table: list[tuple[str, TensorSpec, int]] = [
            (name, spec, spec.nbytes) for name, spec in self.items()
        ]


@dataclass(frozen=True)
class Message:
    """A decoded, validated message.

    Attributes:
        kind: message kind, one of :data:`KINDS`.
        sender: the sender's node name as it claims in the header (transport-level
            authentication, where on, is checked by the node against this).
        round: the round these weights belong to.
        samples: number of training samples behind the weights.
        tensors: name -> read-only array view into the received frames.
        meta: extension fields (plain msgpack values).
        nbytes: size of the whole message on the wire.
    """

    kind: str
    sender: str
    round: int
    samples: int
    tensors: Mapping[str, np.ndarray]
    meta: Mapping[str, Any] = field(default_factory=dict)
    nbytes: int = 0


def schema_of(tensors: Mapping[str, np.ndarray]) -> PackedSchema:
    """The schema that messages carrying tensors shaped like ``tensors`` must match."""
    schema: dict[str, TensorSpec] = {}
    for name, array in tensors.items():
        dtype = _wire_dtype_name(name, array.dtype)
        schema[name] = TensorSpec(dtype=dtype, shape=tuple(int(d) for d in array.shape))
    return PackedSchema(schema)


def encode(
    *,
    kind: str,
    sender: str,
    round: int,
    samples: int,
    tensors: Mapping[str, np.ndarray],
    meta: Mapping[str, Any] | None = None,
) -> list[bytes | memoryview]:
    """Encode a message into frames; tensor frames are views of the arrays (no copy).

    The caller must not modify the arrays until the frames are sent: give a snapshot.

    Raises:
        WireError: if a tensor has a dtype the wire does not carry.
    """
    table = []
    frames: list[bytes | memoryview] = [b""]
    for name, array in tensors.items():
        dtype = _wire_dtype_name(name, array.dtype)
        little = array.astype(WIRE_DTYPES[dtype], copy=False)  # no-op on little-endian hosts
        # (not np.ascontiguousarray: it turns a 0-d scalar tensor into shape (1,))
        contiguous = little if little.flags.c_contiguous else little.copy(order="C")
        table.append([name, dtype, list(contiguous.shape), contiguous.nbytes])
        # a flat byte view works for scalars and empty tensors alike, still without a copy
        frames.append(memoryview(contiguous.reshape(-1).view(np.uint8)))  # type: ignore[arg-type]
    header = {
        "v": PROTOCOL_VERSION,
        "kind": kind,
        "sender": sender,
        "round": int(round),
        "samples": int(samples),
        "tensors": table,
        "meta": dict(meta or {}),
    }
    frames[0] = msgpack.packb(header, use_bin_type=True)
    return frames


def decode(
    frames: Sequence[memoryview | bytes],
    *,
    schema: ModelSchema | None,
    limits: WireLimits = WireLimits(),
    kind_schemas: Mapping[str, ModelSchema] | None = None,
) -> Message:
    """Decode and validate a message.

    Args:
        frames: the message's frames (header first), as buffers.
        schema: the tensors the local model expects for kinds in :data:`TENSOR_KINDS`;
            ``None`` skips the model check (tools that only inspect traffic). Other kinds
            must carry no tensors.
        limits: size bounds.
        kind_schemas: schemas by kind that replace ``schema`` for those kinds (the masked
            kinds of secure aggregation carry one flat uint64 tensor, not the model).

    Raises:
        WireError: the message is malformed, too large, from another protocol version,
            does not match the local model, or carries non-finite values.
    """
    if not frames:
        raise WireError("empty", "message has no frames")
    total = sum(map(len, frames))
    if total > limits.max_message_bytes:
        raise WireError("too_large", f"{total} bytes > limit {limits.max_message_bytes}")
    header_bytes = frames[0]
    if len(header_bytes) > limits.max_header_bytes:
        raise WireError(
            "header_too_large", f"{len(header_bytes)} bytes > limit {limits.max_header_bytes}"
        )
    header = _unpack_header(header_bytes, max_objects=_object_budget(limits))
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # 1.0 and True are not 1
        raise WireError("version", f"protocol version {version!r}, this node speaks {PROTOCOL_VERSION}")
    kind = _field(header, "kind", str)
    if kind not in KINDS:
        raise WireError("unknown_kind", f"kind {kind!r} not in {sorted(KINDS)}")
    sender = _field(header, "sender", str)
    if not sender or len(sender) > _MAX_NAME_CHARS:
        raise WireError("bad_header", "sender must be a non-empty name of at most 256 chars")
    round_ = _field(header, "round", int)
    samples = _field(header, "samples", int)
    if not 0 <= round_ < _MAX_ROUND or samples < 0:
        raise WireError("bad_header", f"round {round_} / samples {samples} out of range")
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        raise WireError("bad_header", "meta must be a map")
    table = _field(header, "tensors", list)
    if len(table) > limits.max_tensors:
        raise WireError("bad_header", f"{len(table)} tensors > limit {limits.max_tensors}")
    if kind_schemas is not None and schema is not None and kind in kind_schemas:
        schema = kind_schemas[kind]
    if kind not in TENSOR_KINDS:
        if table:
            raise WireError("bad_header", f"a {kind!r} message carries no tensors")
        schema = None
    if len(frames) != 1 + len(table):
        raise WireError(
            "frame_count", f"header lists {len(table)} tensors but {len(frames) - 1} frames follow"
        )
    if isinstance(schema, PackedSchema) and _packs_as(table, schema.packed_table):
        parsed = schema.parsed_table  # exactly the local model's table: every entry is valid
    else:
        parsed = _parse_table(table, schema)
    tensors: dict[str, np.ndarray] = {}
    for (name, spec, nbytes), payload in zip(parsed, frames[1:], strict=True):
        if len(payload) != nbytes:
            raise WireError(
                "size_mismatch",
                f"tensor {name!r}: {spec.dtype}{list(spec.shape)} needs {nbytes} bytes, "
                f"frame has {len(payload)}",
            )
        array = np.frombuffer(payload, dtype=WIRE_DTYPES[spec.dtype]).reshape(spec.shape)
        array.flags.writeable = False  # a view of the received frame: nobody may change it
        tensors[name] = array
    bad = first_non_finite(tensors)
    if bad is not None:
        raise WireError("non_finite", f"tensor {bad!r} holds NaN or Inf")
    return Message(
        kind=kind, sender=sender, round=round_, samples=samples,
        tensors=tensors, meta=meta, nbytes=total,
    )


def first_non_finite(tensors: Mapping[str, np.ndarray]) -> str | None:
    """The name of the first floating-point tensor holding NaN or Inf, or None."""
    for name, array in tensors.items():
        # counting is cheaper than .all(), a Python-level wrapper (5 vs 9 us for the MLP)
        if array.dtype.kind == "f" and _count_nonzero(_isfinite(array)) != array.size:
            return name
    return None


_isfinite = np.isfinite  # module globals: called per tensor three times a node-round
_count_nonzero = np.count_nonzero


def _packs_as(table: list[Any], packed: bytes) -> bool:
    try:
        return msgpack.packb(table, use_bin_type=True) == packed  # type: ignore[no-any-return]
    except Exception:  # anything unpackable packs; this is for safety only
        return False


def _parse_table(table: list[Any], schema: ModelSchema | None) -> list[tuple[str, TensorSpec, int]]:
    """Validate every tensor entry (and the set of names, against ``schema`` if given);
    returns name, spec and byte size of each."""
    parsed: list[tuple[str, TensorSpec, int]] = []
    names: set[str] = set()
    for entry in table:
        name, spec, nbytes, actual = _tensor_entry(entry)
        if name in names:
            raise WireError("bad_header", f"tensor {name!r} listed twice")
        names.add(name)
        if nbytes != actual:
            raise WireError(
                "size_mismatch",
                f"tensor {name!r}: {spec.dtype}{list(spec.shape)} needs {actual} bytes, header says {nbytes}",
            )
        if schema is not None:
            _check_against_schema(name, spec, schema)
        parsed.append((name, spec, nbytes))
    if schema is not None and len(parsed) != len(schema):
        missing = sorted(set(schema) - names)
        raise WireError("schema_names", f"missing tensors {missing[:5]}")
    return parsed


def _wire_dtype_name(name: str, dtype: np.dtype[Any]) -> str:
    fast = _NAME_OF_DTYPE.get(dtype)
    if fast is not None:
        return fast
    wire_name = dtype.name  # e.g. a big-endian float32: carried, converted by encode
    if wire_name not in WIRE_DTYPES:
        raise WireError("dtype", f"tensor {name!r} has dtype {dtype}, wire carries {sorted(WIRE_DTYPES)}")
    return wire_name


def _object_budget(limits: WireLimits) -> int:
    """Decoded objects a header may hold: its tensor table (name, dtype, shape, size per
    tensor) plus a little meta. Python objects are ~50x bigger than their msgpack bytes,
    so this, not the byte limit, is what bounds a header's memory."""
    return 16 * limits.max_tensors + 1024


def _unpack_header(data: memoryview | bytes, *, max_objects: int) -> dict[str, Any]:
    decoded = 0

    def count(container: Any) -> Any:
        nonlocal decoded
        decoded += len(container) + 1
        if decoded > max_objects:
            raise WireError("bad_header", f"header holds more than {max_objects} objects")
        return container

    try:
        # unpackb bounds every declared length by the frame's own size, so a tiny frame
        # cannot declare a huge string or array (the classic msgpack bomb); the explicit
        # limits below say so; ext types are refused outright, and the hooks count what
        # is built as it is built.
        size = len(data)
        # Every msgpack object takes at least one byte: a header no longer than the
        # budget cannot exceed it, and needs no counting (the usual case, and cheaper).
        hooks = {} if size <= max_objects else {"list_hook": count, "object_hook": count}
        header = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=0,
            ext_hook=_refuse_ext,
            **hooks,
        )
    except WireError:
        raise
    except Exception as exc:  # msgpack raises many types for garbage; all mean the same
        raise WireError("bad_header", f"header is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise WireError("bad_header", f"header is a {type(header).__name__}, expected a map")
    return header


def _refuse_ext(code: int, data: bytes) -> Any:
    raise WireError("bad_header", f"msgpack extension type {code} is not allowed")


def _field(header: Mapping[str, Any], key: str, kind: type) -> Any:
    value = header.get(key)
    # bool is an int in Python; a bool where a number belongs is malformed
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise WireError("bad_header", f"field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _tensor_entry(entry: Any) -> tuple[str, TensorSpec, int, int]:
    """Validate one table entry; returns name, spec, declared and actual byte sizes.

    Exact type checks (``type(x) is int``): msgpack yields plain ints, and a bool or a
    float where a size belongs is malformed.
    """
    if type(entry) is not list or len(entry) != 4:
        raise WireError("bad_header", "tensor entry must be [name, dtype, shape, nbytes]")
    name, dtype, shape, nbytes = entry
    if type(name) is not str or not name or len(name) > _MAX_NAME_CHARS:
        raise WireError("bad_header", "tensor name must be a non-empty string of at most 256 chars")
    itemsize = _ITEMSIZE.get(dtype) if type(dtype) is str else None
    if itemsize is None:
        raise WireError("dtype", f"tensor {name!r}: dtype {dtype!r} not in {sorted(WIRE_DTYPES)}")
    bad_shape = type(shape) is not list or len(shape) > _MAX_DIMS
    size = nonzero = 1
    if not bad_shape:
        for d in shape:
            if type(d) is not int or not 0 <= d < 2**31:
                bad_shape = True
                break
            size *= d
            nonzero *= d or 1
    # an empty tensor may not hide absurd sizes behind its zero (numpy refuses them)
    if bad_shape or nonzero >= 2**40:
        raise WireError("bad_header", f"tensor {name!r}: shape must be a list of at most 8 sizes")
    if type(nbytes) is not int or nbytes < 0:
        raise WireError("bad_header", f"tensor {name!r}: nbytes must be a non-negative int")
    return name, TensorSpec(dtype=dtype, shape=tuple(shape)), nbytes, size * itemsize


def _check_against_schema(name: str, spec: TensorSpec, schema: ModelSchema) -> None:
    expected = schema.get(name)
    if expected is None:
        raise WireError("schema_names", f"tensor {name!r} is not in the local model")
    if spec.dtype != expected.dtype:
        raise WireError("schema_dtype", f"tensor {name!r}: {spec.dtype}, local model has {expected.dtype}")
    if spec.shape != expected.shape:
        raise WireError(
            "schema_shape", f"tensor {name!r}: shape {list(spec.shape)}, local model has {list(expected.shape)}"
        )
