"""Messages on the wire: encoding frames, decoding and validating them (see :mod:`p2pfl.wire`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from p2pfl.errors import WireError
from p2pfl.wire.codecs import CODEC_META, Codec
from p2pfl.wire.kinds import KIND_OF, KINDS, TENSOR_KINDS, Kind
from p2pfl.wire.tensors import (
    MAX_NAME_CHARS,
    WIRE_DTYPES,
    ModelSchema,
    PackedSchema,
    first_non_finite,
    parse_table,
    wire_dtype_name,
)

PROTOCOL_VERSION = 1
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
class Message:
    """A decoded, validated message.

    Attributes:
        kind: message kind: a :class:`~p2pfl.wire.kinds.Kind` when decoded (a ``str``
            equal to its wire name, so plain strings work where one is built by hand).
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
        dtype = wire_dtype_name(name, array.dtype)
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
    codec: Codec | None = None,
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
        codec: the codec ``model`` messages must be compressed with (None: uncompressed);
            their parts are checked against ``codec.parts(schema)`` and decoded into the
            model's dense tensors (see :mod:`p2pfl.wire.codecs`). Other kinds are never
            compressed. Without ``schema`` a compressed message's parts are returned as is.

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
    name = _field(header, "kind", str)
    kind = KIND_OF.get(name)
    if kind is None:
        raise WireError("unknown_kind", f"kind {name!r} not in {sorted(k.value for k in KINDS)}")
    sender = _field(header, "sender", str)
    if not sender or len(sender) > MAX_NAME_CHARS:
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
            raise WireError("bad_header", f"a {kind.value!r} message carries no tensors")
        schema = None
    model_schema = None
    declared = meta.get(CODEC_META)
    if kind is Kind.MODEL and schema is not None:
        wanted = codec.spec if codec is not None else None
        if declared != wanted:
            raise WireError(
                "codec", f"model compressed with {declared or 'nothing'!r}, this node takes {wanted or 'nothing'!r}"
            )
        if codec is not None:
            model_schema, schema = schema, codec.parts(schema)
    elif declared is not None and kind is not Kind.MODEL:
        raise WireError("codec", f"a {kind.value!r} message is never compressed")
    if len(frames) != 1 + len(table):
        raise WireError(
            "frame_count", f"header lists {len(table)} tensors but {len(frames) - 1} frames follow"
        )
    if isinstance(schema, PackedSchema) and _packs_as(table, schema.packed_table):
        parsed = schema.parsed_table  # exactly the local model's table: every entry is valid
    else:
        parsed = parse_table(table, schema)
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
    if bad is None and model_schema is not None and codec is not None:
        tensors = codec.decode(tensors, meta, model_schema)
        bad = first_non_finite(tensors)  # bf16 travels as uint16: checked once dense
    if bad is not None:
        raise WireError("non_finite", f"tensor {bad!r} holds NaN or Inf")
    return Message(
        kind=kind, sender=sender, round=round_, samples=samples,
        tensors=tensors, meta=meta, nbytes=total,
    )


def _packs_as(table: list[Any], packed: bytes) -> bool:
    try:
        return msgpack.packb(table, use_bin_type=True) == packed  # type: ignore[no-any-return]
    except Exception:  # anything unpackable packs; this is for safety only
        return False


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


