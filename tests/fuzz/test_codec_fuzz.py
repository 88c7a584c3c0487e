"""Property-based fuzzing of compressed models: every codec, every way to spoil its parts.

Property: decoding a compressed model either yields the model's dense, finite tensors of
the schema's shapes, or raises ``WireError`` with a known reason; never another exception.
Quick mode: ~200 examples per codec; ``P2PFL_FUZZ_LONG=1`` 40x that.
"""

from __future__ import annotations

import os
import random
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pfl import wire
from p2pfl.errors import WireError
from p2pfl.testing import DECODER_REASONS
from p2pfl.testing.hostile_codecs import CODEC_ATTACKS, codec_attack

LONG = os.environ.get("P2PFL_FUZZ_LONG") == "1"
CODECS = ["fp16", "bf16", "int8", "int8:5", "topk:0.2", "randk:0.3", "topk:0.2:fp16", "topk:0.2:int8",
          "randk:0.3:int8", "topk:0.2:int4", "randk:0.3:int4"]
WEIGHTS = {
    "fc.weight": np.arange(-12, 12, dtype=np.float32).reshape(4, 6) / 7,
    "fc.bias": np.array([0.5, -2.0, 3.0], np.float32),
    "bn.count": np.array([3], np.int64),
}
SCHEMA = wire.schema_of(WEIGHTS)


def _decode(frames: list[bytes], codec: wire.Codec) -> wire.Message | str:
    try:
        return wire.decode(frames, schema=SCHEMA, codec=codec)
    except WireError as exc:
        assert exc.reason in DECODER_REASONS, f"unknown reason {exc.reason!r}"
        return exc.reason


@pytest.mark.parametrize("spec", CODECS)
@settings(max_examples=8000 if LONG else 200, deadline=timedelta(seconds=2), derandomize=not LONG,
          database=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                       max_size=4))
def test_spoiled_compressed_models_are_refused_or_decode_to_the_schema(spec: str, seed: int, flips) -> None:
    codec = wire.parse_codec(spec)
    assert codec is not None
    rng = random.Random(seed)
    _, frames = codec_attack(rng, np.random.default_rng(seed), codec, "1", 0, dict(WEIGHTS))
    for position, value in flips if len(frames) > 1 else ():  # random bytes in a payload frame, too
        i = 1 + position % (len(frames) - 1)
        if frames[i]:
            payload = bytearray(frames[i])
            payload[position % len(payload)] = value
            frames[i] = bytes(payload)
    outcome = _decode(frames, codec)
    if isinstance(outcome, str):
        return
    # what decodes (intact, a spoiling that does not apply to this codec, a harmless flip)
    # is the model, dense and finite
    for name, spec_ in SCHEMA.items():
        array = outcome.tensors[name]
        assert array.shape == spec_.shape and array.dtype == wire.WIRE_DTYPES[spec_.dtype]
        if array.dtype.kind == "f":
            assert np.isfinite(array).all()


@pytest.mark.parametrize("spec", CODECS)
@pytest.mark.parametrize("how", CODEC_ATTACKS)
def test_each_spoiling_is_refused(spec: str, how: str) -> None:
    """Without random flips, every spoiling that applies to the codec is refused."""
    codec = wire.parse_codec(spec)
    assert codec is not None
    seen = set()
    for seed in range(40):
        rng = random.Random(seed)
        done, frames = codec_attack(rng, np.random.default_rng(seed), codec, "1", 0, dict(WEIGHTS))
        if done != how:
            continue
        outcome = _decode(frames, codec)
        seen.add(outcome if isinstance(outcome, str) else "ok")
    scaled = spec.startswith("int8") or spec.endswith((":int8", ":int4"))
    applies = {
        "intact": True, "bad_index": spec.startswith("topk"), "duplicate_index": spec.startswith("topk"),
        "unsorted_index": spec.startswith("topk"), "count_beyond": True, "nan_scale": scaled,
        "negative_scale": scaled, "int8_min": scaled, "truncated": True,
        "bad_seed": spec.startswith("randk"), "other_codec": True, "wrong_kind": True,
    }[how]
    if how == "intact" or not applies:
        assert seen <= {"ok"}, seen
    else:
        assert seen and "ok" not in seen, (how, seen)
