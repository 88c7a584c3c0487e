"""What the wire decoder makes of a message: the reasons it may give and crash strings."""

from __future__ import annotations

import os
import traceback

from p2pfl import wire
from p2pfl.errors import WireError
from p2pfl.wire import WireLimits

#: Every reason ``wire.decode`` may give (the node adds NODE_REASONS after decoding).
DECODER_REASONS = frozenset({
    "empty", "too_large", "header_too_large", "bad_header", "version", "unknown_kind",
    "frame_count", "size_mismatch", "dtype", "schema_names", "schema_dtype", "schema_shape",
    "non_finite", "codec", "codec_value",
})
#: Reasons the node gives for a well-formed message it still refuses (plain links); the
#: attack must provoke each. Others (e.g. "secagg_off") are counted the same way.
NODE_REASONS = frozenset({"unknown_sender", "future_round", "stale_round", "duplicate"})


def outcome_of(
    frames: list[bytes], schema: wire.ModelSchema, limits: WireLimits, codec: wire.Codec | None = None
) -> str:
    """What ``wire.decode`` makes of ``frames``: "ok", a WireError reason or "crash:...".

    A crash string names the exception, the innermost p2pfl function and the message,
    e.g. ``crash:TypeError@_tensor_entry: unhashable type: 'list'``.
    """
    try:
        wire.decode(frames, schema=schema, limits=limits, codec=codec)
    except WireError as exc:
        return exc.reason
    except Exception as exc:  # a decoder bug: the node turns it into internal_error
        where = "?"
        for frame in traceback.extract_tb(exc.__traceback__):
            if f"p2pfl{os.sep}" in frame.filename:
                where = frame.name
        return f"crash:{type(exc).__name__}@{where}: {exc}"
    return "ok"

