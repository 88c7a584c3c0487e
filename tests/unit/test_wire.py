"""Wire format: round trip and every rejection reason of the decoder."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from p2pfl import wire
from p2pfl.errors import WireError


def model_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "fc.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "fc.bias": rng.standard_normal(4).astype(np.float32),
        "bn.running_var": np.ones(4, dtype=np.float64),
    }


def encode(**overrides):
    fields = dict(kind="model", sender="a", round=3, samples=17, tensors=model_tensors())
    fields.update(overrides)
    return wire.encode(**fields)


DEFAULT_LIMITS = wire.WireLimits()


def decode(frames, schema=None, limits=DEFAULT_LIMITS):
    return wire.decode(
        [bytes(f) for f in frames],
        schema=schema if schema is not None else wire.schema_of(model_tensors()),
        limits=limits,
    )


def reason_of(frames, **kwargs) -> str:
    with pytest.raises(WireError) as info:
        decode(frames, **kwargs)
    return info.value.reason


def header_of(frames) -> dict:
    return msgpack.unpackb(frames[0])


def with_header(frames, header) -> list:
    return [msgpack.packb(header), *frames[1:]]


def test_round_trip_preserves_every_field_and_value():
    tensors = model_tensors()
    frames = encode(meta={"note": "x"})
    message = decode(frames)
    assert (message.kind, message.sender, message.round, message.samples) == ("model", "a", 3, 17)
    assert message.meta == {"note": "x"}
    assert list(message.tensors) == list(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(message.tensors[name], array)
        assert message.tensors[name].dtype == array.dtype
    assert message.nbytes == sum(len(f) for f in frames)


def test_tensor_frames_are_views_of_the_arrays_not_copies():
    tensors = model_tensors()
    frames = wire.encode(kind="model", sender="a", round=0, samples=1, tensors=tensors)
    tensors["fc.bias"][0] = 42.0  # visible through the frame: it shares memory
    assert np.frombuffer(frames[2], dtype=np.float32)[0] == 42.0


def test_decoded_arrays_are_read_only_views_of_the_frames():
    frames = [memoryview(bytearray(f)) for f in encode()]
    message = wire.decode(frames, schema=None)
    weight = message.tensors["fc.weight"]
    assert np.shares_memory(weight, np.asarray(frames[1]))  # no copy of the payload
    with pytest.raises(ValueError, match="read-only"):  # even over a writable frame
        weight[0, 0] = 1.0


def test_non_contiguous_and_big_endian_inputs_are_sent_correctly():
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensors = {"t": base.T, "b": np.arange(3, dtype=">f8")}
    message = wire.decode(
        wire.encode(kind="model", sender="a", round=0, samples=0, tensors=tensors), schema=None
    )
    np.testing.assert_array_equal(message.tensors["t"], base.T)
    np.testing.assert_array_equal(message.tensors["b"], np.arange(3))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h: h.update(v=2), "version"),
        (lambda h: h.update(kind="gradients"), "unknown_kind"),
        (lambda h: h.update(sender=""), "bad_header"),
        (lambda h: h.update(sender=7), "bad_header"),
        (lambda h: h.update(round=-1), "bad_header"),
        (lambda h: h.update(round=True), "bad_header"),
        (lambda h: h.update(samples="many"), "bad_header"),
        (lambda h: h.update(meta=[1]), "bad_header"),
        (lambda h: h.pop("tensors"), "bad_header"),
        (lambda h: h["tensors"][0].__setitem__(1, "complex128"), "dtype"),
        (lambda h: h["tensors"][0].__setitem__(1, "object"), "dtype"),
        (lambda h: h["tensors"][0].__setitem__(2, [5, 4]), "size_mismatch"),
        (lambda h: h["tensors"][0].__setitem__(3, 10**12), "size_mismatch"),
        (lambda h: h["tensors"][0].__setitem__(2, "big"), "bad_header"),
        (lambda h: h["tensors"][0].__setitem__(0, ""), "bad_header"),
        (lambda h: h["tensors"].__setitem__(0, ["x"]), "bad_header"),
        (lambda h: h["tensors"].__setitem__(1, list(h["tensors"][0])), "bad_header"),
    ],
)
def test_malformed_headers_are_rejected_with_their_reason(mutate, reason):
    frames = encode()
    header = header_of(frames)
    mutate(header)
    assert reason_of(with_header(frames, header)) == reason


def test_garbage_and_non_map_headers():
    frames = encode()
    assert reason_of([b"\xc1\xff\x00garbage", *frames[1:]]) == "bad_header"
    assert reason_of([msgpack.packb([1, 2, 3]), *frames[1:]]) == "bad_header"
    assert reason_of([]) == "empty"


def test_msgpack_ext_types_are_refused():
    frames = encode()
    header = header_of(frames)
    header["meta"] = {"x": msgpack.ExtType(1, b"evil")}
    assert reason_of(with_header(frames, header)) == "bad_header"


def test_msgpack_bomb_declaring_a_huge_array_is_refused_cheaply():
    # array32 header claiming 2^32-1 elements in a 5-byte frame
    assert reason_of([b"\xdd\xff\xff\xff\xff"]) == "bad_header"


def test_frame_count_must_match_the_table():
    frames = encode()
    assert reason_of(frames[:-1]) == "frame_count"
    assert reason_of([*frames, b"extra"]) == "frame_count"


def test_truncated_tensor_frame_is_a_size_mismatch():
    frames = encode()
    assert reason_of([*frames[:1], bytes(frames[1])[:-4], *frames[2:]]) == "size_mismatch"


def test_schema_checks_names_dtypes_and_shapes():
    schema = wire.schema_of(model_tensors())
    renamed = {("other" if k == "fc.bias" else k): v for k, v in model_tensors().items()}
    assert reason_of(encode(tensors=renamed), schema=schema) == "schema_names"
    missing = {k: v for k, v in model_tensors().items() if k != "fc.bias"}
    assert reason_of(encode(tensors=missing), schema=schema) == "schema_names"
    as_double = {k: v.astype(np.float64) for k, v in model_tensors().items()}
    assert reason_of(encode(tensors=as_double), schema=schema) == "schema_dtype"
    reshaped = dict(model_tensors(), **{"fc.weight": np.zeros((3, 4), np.float32)})
    assert reason_of(encode(tensors=reshaped), schema=schema) == "schema_shape"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(bad):
    tensors = model_tensors()
    tensors["fc.weight"][1, 2] = bad
    assert reason_of(encode(tensors=tensors)) == "non_finite"


def test_size_limits():
    frames = encode()
    total = sum(len(f) for f in frames)
    assert reason_of(frames, limits=wire.WireLimits(max_message_bytes=total - 1)) == "too_large"
    assert decode(frames, limits=wire.WireLimits(max_message_bytes=total)).round == 3
    assert reason_of(frames, limits=wire.WireLimits(max_header_bytes=8)) == "header_too_large"
    assert reason_of(frames, limits=wire.WireLimits(max_tensors=2)) == "bad_header"


def test_encoding_an_unsupported_dtype_is_a_clear_error():
    with pytest.raises(WireError, match="complex"):
        wire.encode(kind="model", sender="a", round=0, samples=0, tensors={"z": np.zeros(2, np.complex64)})


def test_a_header_with_more_objects_than_the_budget_is_refused():
    limits = wire.WireLimits(max_tensors=4)  # budget: 16 * 4 + 1024 = 1088 objects
    frames = encode()
    header = header_of(frames)
    header["meta"] = {"pad": [0] * 500}  # 500 one-byte objects: within the budget
    assert decode(with_header(frames, header), limits=limits).meta["pad"] == [0] * 500
    header["meta"] = {"pad": [[0]] * 600}  # 1200 objects in ~1.2 kB: over it
    with pytest.raises(WireError, match="more than 1088 objects"):
        decode(with_header(frames, header), limits=limits)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda h: h["tensors"][1].__setitem__(3, float(h["tensors"][1][3])),  # nbytes 16.0 == 16
        lambda h: h["tensors"][0].__setitem__(2, [float(d) for d in h["tensors"][0][2]]),  # shape [4.0, 3.0]
    ],
)
def test_a_table_equal_to_the_models_in_value_but_not_in_type_is_still_refused(mutate):
    # decode's shortcut compares the table with the model's packed table: a float where
    # a size belongs compares equal in Python, but must not slip through
    frames = encode()
    header = header_of(frames)
    mutate(header)
    assert header["tensors"] == header_of(frames)["tensors"]  # equal values...
    assert reason_of(with_header(frames, header)) == "bad_header"  # ...still malformed


def test_a_table_in_another_order_than_the_models_is_accepted():
    frames = encode()
    header = header_of(frames)
    order = [2, 0, 1]
    header["tensors"] = [header["tensors"][i] for i in order]
    message = decode([msgpack.packb(header), *(frames[1 + i] for i in order)])
    for name, array in model_tensors().items():
        np.testing.assert_array_equal(message.tensors[name], array)


def test_kinds_are_an_enum_whose_members_are_their_wire_strings() -> None:
    assert {kind.value for kind in wire.Kind} == {
        "model", "masked-model", "hello", "bye", "sync-request", "sync", "reveal-request", "reveal",
        "secagg-key", "secagg-keys", "secagg-set", "secagg-endorsement", "reveal-shares", "choco-resync", "choco-state",
    }
    assert wire.Kind.SYNC_REQUEST == "sync-request" and "model" in wire.KINDS
    tensors = {"w": np.arange(3, dtype=np.float32)}
    as_enum = wire.encode(kind=wire.Kind.MODEL, sender="a", round=1, samples=2, tensors=tensors)
    as_text = wire.encode(kind="model", sender="a", round=1, samples=2, tensors=tensors)
    assert [bytes(f) for f in as_enum] == [bytes(f) for f in as_text]  # byte-identical headers
    decoded = wire.decode(as_text, schema=wire.schema_of(tensors))
    assert decoded.kind is wire.Kind.MODEL
