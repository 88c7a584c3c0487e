"""Property-based fuzzing of ``wire.decode`` with hostile frame lists.

Property: ``decode`` either returns a Message consistent with its frames, its schema and
its limits, or raises ``WireError`` with a reason from the known set; never any other
exception, and never slowly (hypothesis deadline per example).

Quick mode (default, CI): ~1,800 examples in all, about 12 s. ``P2PFL_FUZZ_LONG=1``: 40x
the examples, random seeds instead of the fixed derandomized run (about 7 min on 2 cores).
"""

from __future__ import annotations

import math
import os
import tracemalloc
from datetime import timedelta
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2pfl import wire
from p2pfl.errors import WireError
from p2pfl.testing import DECODER_REASONS, outcome_of

LONG = os.environ.get("P2PFL_FUZZ_LONG") == "1"


def fuzz(quick: int) -> settings:
    """Settings for one property: ``quick`` examples, 40x that in long mode."""
    return settings(
        max_examples=quick * 40 if LONG else quick,
        deadline=timedelta(seconds=2),  # generous for loaded CI; typical examples take < 5 ms
        derandomize=not LONG,  # CI runs the same examples every time: no flaky reds
        database=None,  # keep the checkout free of .hypothesis/
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


SCHEMA = {
    "fc.weight": wire.TensorSpec("float32", (4, 3)),
    "fc.bias": wire.TensorSpec("float32", (4,)),
    "bn.running_var": wire.TensorSpec("float64", (4,)),
    "bn.count": wire.TensorSpec("int64", (1,)),  # not (): see test_scalar_tensors_round_trip
}
DEFAULT_LIMITS = wire.WireLimits()
BOMB_PREFIXES = [
    b"\xdd", b"\xdf", b"\xdb", b"\xc6", b"\xc9", b"\xc8", b"\xc7", b"\xdc", b"\xde", b"\xda",
    b"\xd9", b"\xc5", b"\xc4", b"\xd4", b"\xd8", b"\x9f", b"\x8f", b"\xbf",
]

# -- strategies -------------------------------------------------------------------------

leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
junk = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
nasty_ints = st.sampled_from([-1, 0, 1, 2**31, 2**32, 2**40 - 1, 2**40, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1])
dtype_names = st.sampled_from(sorted(wire.WIRE_DTYPES))
nasty_dtypes = st.sampled_from(["float128", "object", "<f4", ">f4", "f4", "complex64", "", "str", "V8"])
nasty_shapes = st.sampled_from([
    [0, 2**32, 2**32], [0] + [2**40 - 1] * 7, [2**40 - 1, 2**40 - 1], [1] * 9, [-1], [True, 4],
    [2.0, 4], [[4], 3], [], [0],
])
limits_st = st.builds(
    wire.WireLimits,
    max_message_bytes=st.integers(0, 4096) | st.just(DEFAULT_LIMITS.max_message_bytes),
    max_header_bytes=st.integers(0, 1024) | st.just(DEFAULT_LIMITS.max_header_bytes),
    max_tensors=st.integers(0, 8) | st.just(DEFAULT_LIMITS.max_tensors),
)
schemas = st.sampled_from([SCHEMA, None])


@st.composite
def valid_tensors(draw: st.DrawFn, schema: wire.ModelSchema = SCHEMA) -> dict[str, np.ndarray]:
    out = {}
    for name, spec in schema.items():
        dtype = wire.WIRE_DTYPES[spec.dtype]
        elements = st.floats(-1e6, 1e6, width=dtype.itemsize * 8) if dtype.kind == "f" else None
        out[name] = draw(hnp.arrays(dtype, spec.shape, elements=elements))
    return out


@st.composite
def valid_frames(draw: st.DrawFn) -> list[bytes]:
    """A valid model message for SCHEMA (bytes frames, as they arrive)."""
    frames = wire.encode(
        kind="model",
        sender=draw(st.text(min_size=1, max_size=8)),
        round=draw(st.integers(0, 2**40 - 1)),
        samples=draw(st.integers(0, 2**63 - 1)),
        tensors=draw(valid_tensors()),
        meta=draw(st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
                                  max_size=3)),
    )
    return [bytes(f) for f in frames]


# -- the property -------------------------------------------------------------------------


def assert_consistent(message: wire.Message, frames: list[bytes], schema: Any, limits: wire.WireLimits) -> None:
    assert message.kind in wire.KINDS
    assert isinstance(message.sender, str) and 0 < len(message.sender) <= 256
    assert type(message.round) is int and 0 <= message.round < 2**40
    assert type(message.samples) is int and message.samples >= 0
    assert isinstance(message.meta, dict)
    assert message.nbytes == sum(len(f) for f in frames) <= limits.max_message_bytes
    assert len(frames[0]) <= limits.max_header_bytes
    assert len(message.tensors) == len(frames) - 1 <= limits.max_tensors
    if message.kind not in wire.TENSOR_KINDS:
        assert not message.tensors
    for (name, array), frame in zip(message.tensors.items(), frames[1:], strict=True):
        assert array.dtype == wire.WIRE_DTYPES[array.dtype.name]
        assert array.nbytes == len(frame) and array.tobytes() == bytes(frame)
        assert not array.flags.writeable  # a view of the received frame, not a copy
        if array.dtype.kind == "f":
            assert np.isfinite(array).all()
        if schema is not None:
            assert (array.dtype.name, array.shape) == (schema[name].dtype, schema[name].shape)
    if schema is not None and message.kind in wire.TENSOR_KINDS:
        assert set(message.tensors) == set(schema)


def check_decode(frames: list[bytes], known_bugs: Any, *, schema: Any = SCHEMA,
                 limits: wire.WireLimits = DEFAULT_LIMITS) -> wire.Message | str:
    """Decode under the property; returns the Message or the WireError reason."""
    try:
        message = wire.decode(frames, schema=schema, limits=limits)
    except WireError as exc:
        assert exc.reason in DECODER_REASONS, f"unknown reason {exc.reason!r}"
        return exc.reason
    except Exception:
        if known_bugs.tolerates(outcome_of(frames, schema, limits)):
            reject()  # reported, reproduced by its own xfail test below
        raise
    assert_consistent(message, frames, schema, limits)
    return message


# -- (a) arbitrary frame lists -------------------------------------------------------------


@fuzz(300)
@given(
    frames=st.lists(st.binary(max_size=512), max_size=12)
    | st.tuples(junk.map(msgpack.packb), st.lists(st.binary(max_size=64), max_size=6)).map(lambda t: [t[0], *t[1]]),
    schema=schemas,
    limits=limits_st,
)
def test_arbitrary_frames(frames, schema, limits, known_bugs):
    check_decode(frames, known_bugs, schema=schema, limits=limits)


# -- (b) valid headers with one field mutated ----------------------------------------------


def field_values(key: str) -> st.SearchStrategy[Any]:
    special = {
        "v": st.sampled_from([0, 2, -1, 99, 2**64 - 1, "1", None, [1], {"v": 1}]),
        "kind": st.sampled_from(["exec", "", "MODEL", "model ", "hello", 1, None, ["model"]]),
        "sender": st.sampled_from(["", "x" * 257, "x" * 256, 1, None, b"a", ["a"]]) | st.text(),
        "round": nasty_ints | st.sampled_from([True, False, 1.0, "1", None]),
        "samples": nasty_ints | st.sampled_from([True, 1.5, "3", None]),
        "tensors": st.sampled_from([[], None, {}, "t", [[]], [None], [[1, 2, 3, 4]] * 4]),
        "meta": st.sampled_from([None, [], "m", 1, {"reply": [1]}, {"k": {"k": []}}]),
    }
    base = special.get(key)
    return junk if base is None else base | junk


@fuzz(200)
@given(frames=valid_frames(), data=st.data())
def test_mutated_header_fields(frames, data, known_bugs):
    header = msgpack.unpackb(frames[0])
    key = data.draw(st.sampled_from([*header, "extra", ""]), label="key")
    if data.draw(st.booleans(), label="delete"):
        header.pop(key, None)
    else:
        header[key] = data.draw(field_values(key), label="value")
    check_decode([msgpack.packb(header), *frames[1:]], known_bugs)


@fuzz(200)
@given(frames=valid_frames(), data=st.data())
def test_mutated_tensor_table(frames, data, known_bugs):
    header = msgpack.unpackb(frames[0])
    table = header["tensors"]
    index = data.draw(st.integers(0, len(table) - 1), label="index")
    position = data.draw(st.integers(0, 5), label="position")
    entry = list(table[index])
    if position == 0:
        entry[0] = data.draw(st.sampled_from(["", "x" * 257, "other", table[index - 1][0]]) | junk)
    elif position == 1:
        entry[1] = data.draw(dtype_names | nasty_dtypes | junk)
    elif position == 2:
        entry[2] = data.draw(nasty_shapes | st.lists(st.integers(0, 2**41), max_size=9) | junk)
        if data.draw(st.booleans(), label="claim an empty tensor"):  # consistent if a dim is 0
            entry[3] = 0
            frames[index + 1] = b""
    elif position == 3:
        entry[3] = data.draw(nasty_ints | junk)
    elif position == 4:
        entry = data.draw(junk | st.just(entry[:3]) | st.just([*entry, 0]))
    else:
        table.append(list(entry))
    if position < 5:
        table[index] = entry
    check_decode([msgpack.packb(header), *frames[1:]], known_bugs)


# -- (c) sizes, shapes and dtypes that lie about the frames ---------------------------------


@st.composite
def lying_messages(draw: st.DrawFn) -> list[bytes]:
    names = draw(st.lists(st.sampled_from([*SCHEMA, "x", "fc.weight"]) | st.text(min_size=1, max_size=4),
                          max_size=5))
    table, payloads = [], []
    for name in names:
        dtype = draw(dtype_names)
        shape = draw(st.lists(st.integers(0, 6), max_size=3) | nasty_shapes.filter(
            lambda s: all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in s)))
        spec_bytes = math.prod(shape) * wire.WIRE_DTYPES[dtype].itemsize
        claims = [min(spec_bytes + d, 2**64 - 1) for d in (0, 1, -1) if spec_bytes + d >= 0]
        nbytes = draw(st.sampled_from([*claims, 0]) | st.integers(0, 300))
        size = nbytes if draw(st.booleans()) and nbytes <= 4096 else draw(st.integers(0, 300))
        table.append([name, dtype, shape, nbytes])
        payloads.append(draw(st.binary(min_size=size, max_size=size)) if size < 64 else bytes(size))
    if draw(st.booleans()):  # or a frame too many or too few
        payloads = payloads[:-1] if payloads and draw(st.booleans()) else [*payloads, b"\0" * 8]
    header = {"v": 1, "kind": draw(st.sampled_from(["model", "hello"])), "sender": "a", "round": 0,
              "samples": 1, "tensors": table, "meta": {}}
    return [msgpack.packb(header), *payloads]


@fuzz(200)
@given(frames=lying_messages(), schema=schemas)
def test_lying_sizes_shapes_and_dtypes(frames, schema, known_bugs):
    check_decode(frames, known_bugs, schema=schema)


# -- (d) truncated and oversized frames -----------------------------------------------------


@fuzz(150)
@given(frames=valid_frames(), data=st.data(), limits=limits_st)
def test_truncated_and_oversized_frames(frames, data, limits, known_bugs):
    index = data.draw(st.integers(0, len(frames) - 1), label="frame")
    op = data.draw(st.sampled_from(["truncate", "extend", "drop", "duplicate", "empty", "swap"]), label="op")
    frame = frames[index]
    if op == "truncate":
        frames[index] = frame[: data.draw(st.integers(0, max(len(frame) - 1, 0)))]
    elif op == "extend":
        frames[index] = frame + data.draw(st.binary(min_size=1, max_size=64))
    elif op == "drop":
        del frames[index]
    elif op == "duplicate":
        frames.insert(index, frame)
    elif op == "empty":
        frames[index] = b""
    else:
        frames = [frames[0], *reversed(frames[1:])]
    if frames:
        check_decode(frames, known_bugs, limits=limits)
    else:
        assert check_decode(frames, known_bugs, limits=limits) == "empty"


# -- (e) msgpack bombs ---------------------------------------------------------------------


#: bytes of the declared length after each length-declaring msgpack type byte
LENGTH_WIDTH = {
    b"\xdd": 4, b"\xdf": 4, b"\xdb": 4, b"\xc6": 4, b"\xc9": 4, b"\xc8": 2, b"\xc7": 1,
    b"\xdc": 2, b"\xde": 2, b"\xda": 2, b"\xd9": 1, b"\xc5": 2, b"\xc4": 1,
}


@fuzz(200)
@given(
    prefix=st.sampled_from(BOMB_PREFIXES),
    length=st.sampled_from([2**32 - 1, 2**31, 2**16 - 1, 2**15]) | st.integers(0, 2**32 - 1),
    tail=st.binary(max_size=32),
    in_meta=st.booleans(),
)
def test_huge_declared_lengths_in_tiny_frames(prefix, length, tail, in_meta, known_bugs):
    width = LENGTH_WIDTH.get(prefix, 4)  # fixext/fixarray/fixmap/fixstr: the "length" is just more bytes
    declared = length % 2 ** (8 * width)
    bomb = prefix + declared.to_bytes(width, "big") + tail
    if in_meta:  # after a valid-looking start of header
        start = msgpack.packb({"v": 1, "kind": "model", "sender": "a", "round": 0, "samples": 0, "tensors": []})
        bomb = bytes([start[0] + 1]) + start[1:] + msgpack.packb("meta") + bomb
    result = check_decode([bomb], known_bugs)
    if prefix in LENGTH_WIDTH and declared > len(tail) + 1:
        assert result in ("bad_header", "header_too_large")


@fuzz(100)
@given(
    depth=st.integers(1, 3000) | st.sampled_from([1023, 1024, 1025, 100_000]),
    opener=st.sampled_from([b"\x91", b"\x81\xa1k", b"\x92\xc0"]),
)
def test_deep_nesting(depth, opener, known_bugs):
    start = msgpack.packb({"v": 1, "kind": "hello", "sender": "a", "round": 0, "samples": 0, "tensors": []})
    header = bytes([start[0] + 1]) + start[1:] + msgpack.packb("meta") + b"\x81\xa1x" + opener * depth + b"\xc0"
    result = check_decode([header], known_bugs, schema=None)
    assert depth > 1000 or isinstance(result, wire.Message)  # msgpack's own stack limit is ~1024


@pytest.mark.parametrize("filler", [{}, [], None, 0, ""], ids=["maps", "lists", "nils", "zeros", "strs"])
def test_container_floods_at_the_header_limit_are_decoded_or_refused(filler, known_bugs):
    limits = wire.WireLimits(max_header_bytes=64 * 1024)
    for count in (limits.max_header_bytes - 100, limits.max_header_bytes):  # just under, just over
        header = msgpack.packb({"v": 1, "kind": "hello", "sender": "a", "round": 0, "samples": 0,
                                "tensors": [], "meta": {"x": [filler] * count}})
        result = check_decode([header], known_bugs, schema=None, limits=limits)
        expected_ok = len(header) <= limits.max_header_bytes
        assert isinstance(result, wire.Message) if expected_ok else result == "header_too_large"


# -- (f) valid messages round-trip ----------------------------------------------------------


@st.composite
def any_tensors(draw: st.DrawFn) -> dict[str, np.ndarray]:
    names = draw(st.lists(st.text(min_size=1, max_size=12), unique=True, max_size=4))
    out = {}
    for name in names:
        dtype = np.dtype(draw(dtype_names))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        elements = st.floats(width=dtype.itemsize * 8, allow_nan=False, allow_infinity=False) if dtype.kind == "f" else None
        out[name] = draw(hnp.arrays(dtype, shape, elements=elements))
    return out


meta_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=10) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@fuzz(200)
@given(
    tensors=any_tensors(),
    kind=st.sampled_from(sorted(wire.KINDS)),
    sender=st.text(min_size=1, max_size=256),
    round_=st.integers(0, 2**40 - 1),
    samples=st.integers(0, 2**63 - 1),
    meta=st.dictionaries(st.text(max_size=8), meta_values, max_size=4),
    poison=st.booleans(),
)
def test_valid_messages_round_trip(tensors, kind, sender, round_, samples, meta, poison, known_bugs):
    if kind not in wire.TENSOR_KINDS:
        tensors = {}
    if known_bugs.scalar_tensors_broken and any(array.ndim == 0 for array in tensors.values()):
        reject()  # reported; reproduced by test_scalar_tensors_round_trip
    if known_bugs.empty_tensors_broken and any(array.ndim > 1 and not array.size for array in tensors.values()):
        reject()  # reported; reproduced by test_empty_tensors_round_trip
    floats = [name for name, array in tensors.items() if array.dtype.kind == "f" and array.size]
    if poison and floats:  # one NaN/Inf anywhere must be refused
        tensors[floats[0]] = tensors[floats[0]].copy()
        tensors[floats[0]].flat[-1] = np.nan
    frames = [bytes(f) for f in wire.encode(kind=kind, sender=sender, round=round_, samples=samples,
                                             tensors=tensors, meta=meta)]
    result = check_decode(frames, known_bugs, schema=wire.schema_of(tensors))
    if poison and floats:
        assert result == "non_finite"
        return
    assert isinstance(result, wire.Message), result
    assert (result.kind, result.sender, result.round, result.samples) == (kind, sender, round_, samples)
    assert result.meta == meta
    assert list(result.tensors) == list(tensors)
    for name, array in tensors.items():
        assert result.tensors[name].dtype == array.dtype and result.tensors[name].shape == array.shape
        np.testing.assert_array_equal(result.tensors[name], array)


# -- regressions: bugs this suite found (now fixed); each reproducer must stay a WireError --


@pytest.mark.parametrize("index", [0, 1], ids=["unhashable-dtype", "zero-dim-huge-shape"])
def test_known_decoder_crash_is_a_wire_error(index, known_bug_list):
    bug = known_bug_list[index]
    with pytest.raises(WireError):
        wire.decode(bug.frames(), schema=None)


def test_decoded_header_memory_is_proportional_to_its_size():
    """The inbox bounds memory in messages; that bounds bytes only if a message's memory
    is O(its wire size). 256 KiB of empty maps would decode into ~18 MB of dicts: the
    decoder's object budget refuses such a header instead."""
    header = msgpack.packb({"v": 1, "kind": "hello", "sender": "a", "round": 0, "samples": 0,
                            "tensors": [], "meta": {"x": [{}] * (256 * 1024 - 100)}})
    tracemalloc.start()
    try:
        with pytest.raises(WireError) as refused:
            wire.decode([header], schema=None)
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.reason == "bad_header"
    assert retained <= 16 * len(header), f"{retained / 2**20:.1f} MB for a {len(header) / 2**10:.0f} KiB header"


def test_scalar_tensors_round_trip():
    """A model with a scalar parameter (e.g. CLIP's logit_scale) could never federate:
    np.ascontiguousarray (wire.encode) returns at least 1-d arrays."""
    tensors = {"logit_scale": np.array(2.5, np.float32)}
    frames = [bytes(f) for f in wire.encode(kind="model", sender="a", round=0, samples=1, tensors=tensors)]
    message = wire.decode(frames, schema=wire.schema_of(tensors))
    assert message.tensors["logit_scale"].shape == ()


def test_empty_tensors_round_trip():
    """A model holding e.g. a (0, 8) tensor crashes its own node's run() in wire.encode."""
    tensors = {"empty": np.zeros((0, 8), np.float32)}
    frames = [bytes(f) for f in wire.encode(kind="model", sender="a", round=0, samples=1, tensors=tensors)]
    message = wire.decode(frames, schema=wire.schema_of(tensors))
    assert message.tensors["empty"].shape == (0, 8)
