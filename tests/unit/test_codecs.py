"""Codecs on the wire (p2pfl.wire.codecs) and error feedback (p2pfl.node.compression)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from p2pfl import wire
from p2pfl.errors import ConfigError, WireError
from p2pfl.node.compression import ErrorFeedback, encode_model, node_seed
from p2pfl.node.records import NodeConfig, limits_for
from p2pfl.settings import SETTINGS
from p2pfl.wire.codecs import SEED_META, randk_indices

WEIGHTS = {
    "fc.weight": (np.arange(24, dtype=np.float32).reshape(4, 6) - 7) / 3,
    "fc.bias": np.array([0.5, -2, 3], np.float32),
    "n": np.array([3], np.int64),
}
SCHEMA = wire.schema_of(WEIGHTS)
#: sha256 of the frames of WEIGHTS as a model of round 5 from "3" (sync, then async meta),
#: computed before codecs existed: compression off must not change a byte
GOLDEN = {
    None: "8226412aebdbb700198d0e07ff4dd60933240b41c2b70adfb5c0efbdf62eee3c",
    "async": "830adef741407726395dacaf67c155d7be09d64a6888fc24eb1bc80013f75898",
}


def _digest(frames: list) -> str:
    return hashlib.sha256(b"".join(bytes(f) for f in frames)).hexdigest()


@pytest.mark.parametrize("meta", [None, "async"])
def test_without_compression_the_frames_are_todays(meta) -> None:
    extra = {"async": True} if meta else None
    frames = encode_model(None, sender="3", round=5, samples=64, tensors=WEIGHTS, meta=extra)
    assert _digest(frames) == GOLDEN[meta]
    assert _digest(wire.encode(kind="model", sender="3", round=5, samples=64, tensors=WEIGHTS, meta=extra)) == GOLDEN[meta]


def _round_trip(spec: str, weights=WEIGHTS, seed: int = 0) -> tuple[wire.Message, wire.Encoded]:
    codec = wire.parse_codec(spec)
    assert codec is not None
    encoded = codec.encode(weights, np.random.default_rng(seed))
    frames = wire.encode(kind="model", sender="1", round=0, samples=1, tensors=encoded.parts, meta=encoded.meta)
    return wire.decode(frames, schema=wire.schema_of(weights), codec=codec), encoded


@pytest.mark.parametrize(("spec", "tolerance"), [("fp16", 2e-3), ("bf16", 2e-2), ("int8", 0.06), ("int8:5", 0.06)])
def test_quantizers_decode_close_to_the_model(spec: str, tolerance: float) -> None:
    message, encoded = _round_trip(spec)
    for name, array in WEIGHTS.items():
        np.testing.assert_array_equal(message.tensors[name], encoded.sent[name])  # receiver sees what sender thinks
        assert message.tensors[name].dtype == array.dtype and message.tensors[name].shape == array.shape
        np.testing.assert_allclose(message.tensors[name], array, atol=tolerance * max(1, np.abs(array).max()))


def test_bf16_rounds_to_nearest_even_and_fp16_saturates() -> None:
    x = {"t": np.array([1.0 + 2**-8, 1.0 + 3 * 2**-8, 1e6, -7e4], np.float32)}
    message, _ = _round_trip("bf16", x)
    assert message.tensors["t"][:2].tolist() == [1.0, 1.0 + 2**-6]
    message, _ = _round_trip("fp16", x)
    assert message.tensors["t"][2] == 65504 and message.tensors["t"][3] == -65504


def test_int8_stochastic_rounding_is_unbiased_and_seeded() -> None:
    x = {"t": np.full(20_000, 0.3, np.float32), "m": np.array([127.0], np.float32)}
    codec = wire.parse_codec("int8")
    assert codec is not None
    one = codec.encode(x, np.random.default_rng(1)).sent["t"]
    assert abs(float(one.mean()) - 0.3) < 0.01  # values 0 or 1: mean ~0.3
    again = codec.encode(x, np.random.default_rng(1)).sent["t"]
    np.testing.assert_array_equal(one, again)


@pytest.mark.parametrize("spec", ["topk:0.25", "randk:0.25"])
def test_sparse_codecs_send_k_entries(spec: str) -> None:
    message, encoded = _round_trip(spec)
    dense = message.tensors["fc.weight"]
    assert encoded.parts["fc.weight"].size == 6  # ceil(0.25 * 24)
    kept = dense != 0
    np.testing.assert_array_equal(dense[kept], WEIGHTS["fc.weight"][kept])
    if spec.startswith("topk"):  # the largest magnitudes
        assert np.abs(dense).sum() == np.sort(np.abs(WEIGHTS["fc.weight"]).ravel())[-6:].sum()
    assert message.tensors["n"].tolist() == [3]


@pytest.mark.parametrize("spec", ["topk:0.25:fp16", "topk:0.25:int8", "randk:0.25:fp16", "randk:0.25:int8",
                                  "topk:0.25:int4", "randk:0.25:int4"])
def test_sparse_values_travel_smaller(spec: str) -> None:
    message, encoded = _round_trip(spec)
    values = spec.rsplit(":", 1)[1]
    part = encoded.parts["fc.weight"]
    assert (part.dtype, part.size) == {"fp16": ("float16", 6), "int8": ("int8", 6), "int4": ("uint8", 3)}[values]
    assert ("fc.weight#scale" in encoded.parts) == (values != "fp16")
    dense = message.tensors["fc.weight"]
    np.testing.assert_array_equal(dense, encoded.sent["fc.weight"])  # receiver sees what sender thinks
    kept = dense != 0
    scale = {"int8": 127, "int4": 7}.get(values)
    scale = np.abs(WEIGHTS["fc.weight"]).max() / scale if scale else 2e-3 * 6
    np.testing.assert_allclose(dense[kept], WEIGHTS["fc.weight"][kept], atol=scale)
    assert message.tensors["n"].tolist() == [3]


def test_int4_values_pack_two_per_byte_low_nibble_first() -> None:
    x = {"w": np.array([-7.0, 7.0, 3.0], np.float32)}  # exact multiples of the scale: no rounding
    message, encoded = _round_trip("topk:1:int4", x)
    assert encoded.parts["w#scale"].tolist() == [1.0] and encoded.parts["w"].tolist() == [0x79, 0x03]
    assert message.tensors["w"].tolist() == [-7.0, 7.0, 3.0]


def test_topk_indices_are_uint16_up_to_65536_entries() -> None:
    codec = wire.parse_codec("topk:0.001")
    assert codec is not None
    for n, dtype in [(24, "uint16"), (65_536, "uint16"), (65_537, "uint32")]:
        assert codec.parts(wire.schema_of({"w": np.zeros(n, np.float32)}))["w#idx"].dtype == dtype
    x = {"w": np.zeros(65_536, np.float32)}
    x["w"][[0, 65_535]] = [5.0, -7.0]
    message, encoded = _round_trip("topk:0.00001", x)  # k = 1: the largest, the last index
    assert encoded.parts["w#idx"].tolist() == [65_535] and message.tensors["w"][65_535] == -7.0
    wide = {"w": np.arange(70_000, dtype=np.float32)}
    message, encoded = _round_trip("topk:0.0001", wide)
    assert encoded.parts["w#idx"].dtype == np.uint32 and encoded.parts["w#idx"].tolist() == list(range(69_993, 70_000))
    np.testing.assert_array_equal(message.tensors["w"], encoded.sent["w"])


def test_topk_sends_positions_as_indices_or_a_bitmap_whichever_is_smaller() -> None:
    x = {"w": np.random.default_rng(3).normal(size=1000).astype(np.float32)}
    for spec, part, size in [("topk:0.06", "w#idx", 60 * 2), ("topk:0.07", "w#mask", 125)]:
        message, encoded = _round_trip(spec, x)
        assert set(encoded.parts) == {part, "w"} and encoded.parts[part].nbytes == size
        np.testing.assert_array_equal(message.tensors["w"], encoded.sent["w"])
        kept = np.flatnonzero(message.tensors["w"])
        assert np.array_equal(np.sort(np.argsort(-np.abs(x["w"]))[: kept.size]), kept)
    codec = wire.parse_codec("topk:0.06")
    assert codec is not None
    encoded = codec.encode(x, np.random.default_rng(0))
    for edit in ([1, 0], [5, 5]):  # unsorted, repeated
        idx = encoded.parts["w#idx"].copy()
        idx[:2] = idx[edit]
        frames = wire.encode(kind="model", sender="1", round=0, samples=1, tensors={**encoded.parts, "w#idx": idx},
                             meta=encoded.meta)
        with pytest.raises(WireError) as info:
            wire.decode(frames, schema=wire.schema_of(x), codec=codec)
        assert info.value.reason == "codec_value"


def test_randk_indices_follow_the_documented_recipe() -> None:
    expected = np.sort(np.random.default_rng([42, 1]).choice(100, 7, replace=False))
    np.testing.assert_array_equal(randk_indices(42, 1, 100, 7), expected)


@pytest.mark.parametrize("spec", ["topk:0.2", "randk:0.3"])
def test_error_feedback_loses_nothing_for_sparse_codecs(spec: str) -> None:
    """Summed over rounds, what was sent plus the residual is exactly what was meant."""
    codec = wire.parse_codec(spec)
    assert codec is not None
    feedback = ErrorFeedback(codec, seed=7)
    rng = np.random.default_rng(0)
    meant = np.zeros((5, 8), np.float32)
    sent = np.zeros((5, 8), np.float32)
    for _ in range(12):
        x = rng.integers(-50, 50, size=(5, 8)).astype(np.float32)  # integers: sums are exact
        meant += x
        sent += feedback.encode({"w": x}).sent["w"]
    np.testing.assert_array_equal(sent + feedback.residual()["w"], meant)


@pytest.mark.parametrize("spec", ["fp16", "bf16", "int8"])
def test_error_feedback_keeps_the_quantizers_unbiased_over_rounds(spec: str) -> None:
    codec = wire.parse_codec(spec)
    assert codec is not None
    feedback = ErrorFeedback(codec, seed=7)
    x = {"w": np.random.default_rng(1).normal(size=200).astype(np.float32)}
    total = sum(feedback.encode(x).sent["w"].astype(np.float64) for _ in range(50))
    np.testing.assert_allclose(total + feedback.residual()["w"], 50 * x["w"].astype(np.float64), atol=1e-3)


def _frames(spec: str, **change) -> tuple[list[bytes], wire.Codec]:
    codec = wire.parse_codec(spec)
    assert codec is not None
    encoded = codec.encode(WEIGHTS, np.random.default_rng(0))
    parts = {k: np.array(v) for k, v in encoded.parts.items()}
    meta = dict(encoded.meta)
    for key, value in change.items():
        if key == "meta":
            meta.update(value)
        else:
            value(parts)
    frames = wire.encode(kind="model", sender="1", round=0, samples=1, tensors=parts, meta=meta)
    return [bytes(f) for f in frames], codec


def _set(name: str, i: int, value) -> object:
    def edit(parts: dict) -> None:
        parts[name].reshape(-1)[i] = value
    return edit


@pytest.mark.parametrize(("spec", "edit", "reason"), [
    ("topk:0.04", {"a": _set("fc.weight#idx", -1, 24)}, "codec_value"),  # index out of bounds (k = 1: indices)
    ("topk:0.25", {"a": _set("fc.weight#mask", 0, 0xFF)}, "codec_value"),  # k = 6: a bitmap, here 8 bits set
    ("topk:0.25", {"a": _set("fc.bias#mask", 0, 0b1001)}, "codec_value"),  # a bit beyond the 3 entries
    ("topk:0.25", {"a": _set("fc.bias#mask", 0, 0)}, "codec_value"),  # one bit fewer
    ("topk:0.25", {"a": lambda p: p.__setitem__("fc.weight", np.zeros(7, np.float32))}, "schema_shape"),
    ("topk:0.04", {"a": lambda p: p.__setitem__("fc.weight#idx", p["fc.weight#idx"].astype(np.int64))},
     "schema_dtype"),
    ("topk:0.25", {"a": lambda p: p.__setitem__("fc.weight#idx", np.arange(6, dtype=np.uint16))}, "schema_names"),
    ("topk:0.25:int8", {"a": _set("fc.weight", 0, -128)}, "codec_value"),
    ("topk:0.25:int8", {"a": _set("fc.weight#scale", 0, -1.0)}, "codec_value"),
    ("randk:0.25:int8", {"a": _set("fc.weight#scale", 0, np.inf)}, "non_finite"),
    ("topk:0.25:int8", {"a": lambda p: p.__setitem__("fc.weight#scale", np.ones(2, np.float32))}, "schema_shape"),
    ("topk:0.25:fp16", {"a": _set("fc.weight", 0, np.inf)}, "non_finite"),
    ("topk:0.25:int4", {"a": _set("fc.weight", 0, 0x08)}, "codec_value"),  # -8
    ("topk:0.25:int4", {"a": _set("fc.weight", 2, 0x80)}, "codec_value"),  # -8, high nibble
    ("topk:0.25:int4", {"a": _set("fc.bias", 0, 0x10)}, "codec_value"),  # k = 1: the pad nibble set
    ("randk:0.25:int4", {"a": _set("fc.weight#scale", 0, -2.0)}, "codec_value"),
    ("topk:0.25:int4", {"a": lambda p: p.__setitem__("fc.weight", np.zeros(6, np.uint8))}, "schema_shape"),
    ("topk:0.25:fp16", {"a": lambda p: p.__setitem__("fc.weight", p["fc.weight"].astype(np.float32))},
     "schema_dtype"),
    ("topk:0.04:fp16", {"a": _set("fc.weight#idx", -1, 60_000)}, "codec_value"),
    ("topk:0.25:fp16", {"meta": {"codec": "topk:0.25"}}, "codec"),
    ("int8", {"a": _set("fc.weight#scale", 0, np.nan)}, "non_finite"),
    ("int8", {"a": _set("fc.weight#scale", 0, -1.0)}, "codec_value"),
    ("int8", {"a": _set("fc.weight", 0, -128)}, "codec_value"),
    ("int8:5", {"a": lambda p: p.__setitem__("fc.weight#scale", np.ones(6, np.float32))}, "schema_shape"),
    ("bf16", {"a": _set("fc.weight", 0, 0x7FC0)}, "non_finite"),  # a bf16 NaN
    ("fp16", {"a": lambda p: p.pop("fc.bias")}, "schema_names"),
    ("randk:0.5", {"meta": {SEED_META: -1}}, "codec_value"),
    ("randk:0.5", {"meta": {SEED_META: 1.5}}, "codec_value"),
    ("fp16", {"meta": {"codec": "int8"}}, "codec"),
])
def test_spoiled_parts_are_refused(spec: str, edit: dict, reason: str) -> None:
    frames, codec = _frames(spec, **edit)
    with pytest.raises(WireError) as info:
        wire.decode(frames, schema=SCHEMA, codec=codec)
    assert info.value.reason == reason


def test_truncated_payload_and_codec_mismatches_are_refused() -> None:
    frames, codec = _frames("int8")
    with pytest.raises(WireError, match="size_mismatch"):
        wire.decode([*frames[:-1], frames[-1][:-1]], schema=SCHEMA, codec=codec)
    with pytest.raises(WireError) as info:  # a node without compression refuses compressed models
        wire.decode(frames, schema=SCHEMA)
    assert info.value.reason == "codec"
    plain = wire.encode(kind="model", sender="1", round=0, samples=1, tensors=WEIGHTS)
    with pytest.raises(WireError) as info:  # ... and a compressing node uncompressed ones
        wire.decode(plain, schema=SCHEMA, codec=codec)
    assert info.value.reason == "codec"
    hello = wire.encode(kind="hello", sender="1", round=0, samples=0, tensors={}, meta={"codec": "int8"})
    with pytest.raises(WireError) as info:
        wire.decode(hello, schema=SCHEMA, codec=codec)
    assert info.value.reason == "codec"


def test_no_decompression_bomb_the_table_is_fixed_by_the_schema() -> None:
    """A tiny topk message cannot claim a big tensor: its shapes come from the receiver."""
    codec = wire.parse_codec("topk:0.01")
    assert codec is not None
    big = wire.schema_of({"w": np.zeros((1000, 1000), np.float32)})
    assert codec.parts(big)["w"].shape == (10_000,) and codec.parts(big)["w#idx"].shape == (10_000,)
    with pytest.raises(WireError) as info:
        wire.decode(_frames("topk:0.25")[0], schema=big, codec=codec)
    assert info.value.reason in {"schema_names", "codec"}


@pytest.mark.parametrize("spec", ["", "fp16", "bf16", "int8", "int8:64", "topk:0.01", "randk:1", "topk:1e-3",
                                  "topk:0.1:fp16", "topk:0.05:int8", "randk:0.5:int8", "randk:1:fp16",
                                  "topk:0.2:int4"])
def test_the_setting_and_the_wire_accept_the_same_specs(spec: str) -> None:
    assert SETTINGS["compress"].problem(spec) is None
    codec = wire.parse_codec(spec)
    assert (codec is None) == (spec == "")
    if codec is not None:
        assert wire.parse_codec(codec.spec) == codec


@pytest.mark.parametrize("spec", ["gzip", "topk", "topk:0", "topk:1.5", "randk:nan", "int8:0", "fp16:2", "int8:x",
                                  "topk:0.1:bf16", "topk:0.1:", "topk:0.1:int8:4", "int8:4:fp16", "topk:fp16",
                                  "int4", "topk:0.1:int2"])
def test_bad_specs_are_refused_by_both(spec: str) -> None:
    assert SETTINGS["compress"].problem(spec) is not None
    with pytest.raises(ValueError):
        wire.parse_codec(spec)


def test_compress_is_refused_with_secure_aggregation() -> None:
    from p2pfl.simulation.config import ExperimentConfig

    with pytest.raises(ConfigError) as info:
        ExperimentConfig(compress="int8", secure_aggregation=True, topology="random-regular:4")
    assert info.value.field == "compress" and "secure aggregation" in str(info.value)
    assert NodeConfig(name="a", rounds=2, compress="int8").compress == "int8"


@pytest.mark.parametrize("spec", ["int8", "topk:0.01", "topk:0.01:int8", "topk:0.5:int4"])
def test_a_node_takes_compressed_models_of_many_tensors(spec: str) -> None:
    """Up to three parts per tensor: a node's limits (fitted to its own model) leave room for them."""
    weights = {f"layer{i}.weight": np.ones((3, 3), np.float32) for i in range(200)}
    limits = limits_for(weights, NodeConfig(name="a", rounds=2, compress=spec))
    codec = wire.parse_codec(spec)
    assert codec is not None
    encoded = codec.encode(weights, np.random.default_rng(0))
    frames = wire.encode(kind="model", sender="1", round=0, samples=1, tensors=encoded.parts, meta=encoded.meta)
    message = wire.decode(frames, schema=wire.schema_of(weights), limits=limits, codec=codec)
    assert len(message.tensors) == 200


def test_consortium_training_carries_compress_into_every_node_toml() -> None:
    from p2pfl.consortium.bundle import NODE_KEYS
    from p2pfl.consortium.description import TrainingSettings

    assert "compress" in NODE_KEYS
    assert TrainingSettings(learner="pkg.mod:build", compress="fp16").compress == "fp16"
    with pytest.raises(ConfigError) as info:
        TrainingSettings(learner="pkg.mod:build", compress="int8", secure_aggregation=True)
    assert info.value.field == "compress"


def test_report_titles_name_the_codec() -> None:
    from p2pfl.report import run_title

    rows = [{"node": "0", "round": 0}]
    base = {"nodes": 16, "topology": "ring", "mode": "sync", "rounds": 40}
    assert run_title({**base, "compress": "int8"}, rows) == "ring, 16 nodes, sync, 40 rounds, compress int8"
    assert run_title({**base, "compress": ""}, rows) == "ring, 16 nodes, sync, 40 rounds"


def test_codec_seed_follows_the_run_seed_and_the_node() -> None:
    """Another run seed draws other randk masks; the same seed and name draw the same."""
    tensors = {"w": np.arange(1000, dtype=np.float32)}

    def mask(name: str, seed: int) -> np.ndarray:
        sent = ErrorFeedback(wire.parse_codec("randk:0.01"), node_seed(name, seed)).encode(tensors).sent["w"]
        return np.flatnonzero(sent)

    assert np.array_equal(mask("a", 0), mask("a", 0))
    assert not np.array_equal(mask("a", 0), mask("a", 1))
    assert not np.array_equal(mask("a", 0), mask("b", 0))
    assert node_seed("a") == node_seed("a", 0)  # seed 0 keeps the masks runs had before
