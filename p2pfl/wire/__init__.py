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

This package knows nothing of sockets or nodes; it turns buffers into validated messages
and raises :class:`~p2pfl.errors.WireError` (whose ``reason`` feeds the rejection
counters) for anything else. :mod:`~p2pfl.wire.kinds` names the message kinds,
:mod:`~p2pfl.wire.tensors` the tensors' dtypes and schemas, :mod:`~p2pfl.wire.format`
encodes and decodes, :mod:`~p2pfl.wire.codecs` compresses models (``meta.codec``).
"""

from p2pfl.wire.codecs import CODEC_NAMES, Codec, Encoded, parse_codec
from p2pfl.wire.format import PROTOCOL_VERSION, Message, WireLimits, decode, encode
from p2pfl.wire.kinds import KINDS, TENSOR_KINDS, Kind
from p2pfl.wire.tensors import (
    WIRE_DTYPES,
    ModelSchema,
    PackedSchema,
    TensorSpec,
    first_non_finite,
    schema_of,
)

__all__ = [
    "CODEC_NAMES",
    "KINDS",
    "PROTOCOL_VERSION",
    "TENSOR_KINDS",
    "WIRE_DTYPES",
    "Codec",
    "Encoded",
    "Kind",
    "Message",
    "ModelSchema",
    "PackedSchema",
    "TensorSpec",
    "WireLimits",
    "decode",
    "encode",
    "first_non_finite",
    "parse_codec",
    "schema_of",
]
