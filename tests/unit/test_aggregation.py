"""Robust aggregators against closed-form numpy, and the aggregator spec parser."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from p2pfl.aggregation import ClippedGossip, CoordinateMedian, Krum, TrimmedMean, build_aggregator
from p2pfl.errors import ConfigError
from p2pfl.node.mixing import mix

PEERS = ["a", "b", "c", "d"]


def make_models(seed: int = 0, dtype: type = np.float32) -> tuple[dict, dict, dict]:
    """Own model, four peers' models (two tensors each) and uniform mixing weights."""
    rng = np.random.default_rng(seed)

    def model() -> dict[str, np.ndarray]:
        return {"w": rng.normal(size=(3, 4)).astype(dtype), "b": rng.normal(size=5).astype(dtype)}

    own = model()
    received = {p: model() for p in PEERS}
    weights = {"me": 0.2, **{p: 0.2 for p in PEERS}}
    return own, received, weights


def all_models(own: dict, received: dict, key: str) -> np.ndarray:
    return np.stack([own[key], *(received[p][key] for p in sorted(received))]).astype(np.float64)


def read_only(own: dict, received: dict) -> None:
    """Freeze the inputs the way the wire hands them over (read-only views)."""
    for model in [own, *received.values()]:
        for tensor in model.values():
            tensor.flags.writeable = False


AGGREGATORS = [
    pytest.param(CoordinateMedian(), id="median"),
    pytest.param(TrimmedMean(1), id="trimmed-mean"),
    pytest.param(Krum(1), id="krum"),
    pytest.param(Krum(1, multi=3), id="multi-krum"),
    pytest.param(ClippedGossip(), id="clipped-gossip-adaptive"),
    pytest.param(ClippedGossip(0.5), id="clipped-gossip-fixed"),
]


def test_median_is_the_per_coordinate_median() -> None:
    own, received, weights = make_models()
    out = CoordinateMedian()("me", own, received, weights)
    for key in own:
        np.testing.assert_allclose(out[key], np.median(all_models(own, received, key), axis=0), rtol=1e-6)


def test_median_of_an_even_count_averages_the_middle_two() -> None:
    own = {"x": np.array([0.0, 10.0])}
    received = {"a": {"x": np.array([1.0, 20.0])}, "b": {"x": np.array([5.0, 30.0])},
                "c": {"x": np.array([100.0, -40.0])}}
    out = CoordinateMedian()("me", own, received, {"me": 1, "a": 1, "b": 1, "c": 1})
    np.testing.assert_array_equal(out["x"], [3.0, 15.0])


def test_trimmed_mean_drops_b_at_each_end() -> None:
    own, received, weights = make_models()
    out = TrimmedMean(1)("me", own, received, weights)
    for key in own:
        ordered = np.sort(all_models(own, received, key), axis=0)
        np.testing.assert_allclose(out[key], ordered[1:4].mean(axis=0), rtol=1e-6)


def test_trimmed_mean_ignores_one_huge_outlier() -> None:
    own = {"x": np.array([1.0, 2.0])}
    received = {"a": {"x": np.array([2.0, 3.0])}, "b": {"x": np.array([3.0, 4.0])},
                "evil": {"x": np.array([1e30, -1e30])}}
    out = TrimmedMean(1)("me", own, received, {"me": 1, "a": 1, "b": 1, "evil": 1})
    np.testing.assert_array_equal(out["x"], [2.5, 2.5])  # middle two of four


@pytest.mark.parametrize(
    ("trim", "count", "dropped"),
    [(0.2, 5, 1), (0.2, 4, 0), (0.4, 10, 4), (1, 5, 1), (3, 5, 2), (5, 2, 0), (1, 1, 0), (0.0, 9, 0)],
)
def test_trimmed_mean_count_is_clamped_so_one_value_stays(trim: float, count: int, dropped: int) -> None:
    assert TrimmedMean(trim).trimmed(count) == dropped


def test_trimmed_mean_with_too_much_trim_is_the_median_of_an_odd_count() -> None:
    own, received, weights = make_models()
    out = TrimmedMean(10)("me", own, received, weights)
    median = CoordinateMedian()("me", own, received, weights)
    for key in own:
        np.testing.assert_allclose(out[key], median[key], rtol=1e-6)


def test_krum_picks_the_model_closest_to_its_neighbours() -> None:
    # four models in a tight cluster and one far away; n=5, f=1: score = 2 nearest
    base = np.zeros(3)
    own = {"x": base + [0.0, 0.0, 0.1]}
    received = {
        "a": {"x": base + [0.1, 0.0, 0.0]},
        "b": {"x": base + [0.0, 0.0, 0.0]},  # the centre: closest to the others
        "c": {"x": base + [0.0, 0.1, 0.0]},
        "evil": {"x": base + [50.0, 50.0, 50.0]},
    }
    weights = {"me": 1.0, "a": 1.0, "b": 1.0, "c": 1.0, "evil": 1.0}
    out = Krum(1)("me", own, received, weights)
    np.testing.assert_array_equal(out["x"], received["b"]["x"])


def test_krum_scores_match_a_brute_force_computation() -> None:
    own, received, weights = make_models(seed=4)
    f, n = 1, 5
    names = sorted(own)
    members = [own, *(received[p] for p in sorted(received))]
    vectors = [np.concatenate([m[k].astype(np.float64).ravel() for k in names]) for m in members]
    scores = []
    for i, v in enumerate(vectors):
        distances = sorted(float(((v - u) ** 2).sum()) for j, u in enumerate(vectors) if j != i)
        scores.append(sum(distances[: n - f - 2]))
    best = int(np.argmin(scores))
    assert Krum(f).select(vectors) == [best]
    out = Krum(f)("me", own, received, weights)
    for key in own:
        np.testing.assert_array_equal(out[key], members[best][key])
    chosen = list(np.argsort(scores, kind="stable")[:3])
    assert Krum(f, multi=3).select(vectors) == chosen
    multi = Krum(f, multi=3)("me", own, received, weights)
    for key in own:
        expected = np.mean([members[i][key].astype(np.float64) for i in chosen], axis=0)
        np.testing.assert_allclose(multi[key], expected, rtol=1e-6)


def test_multi_krum_never_averages_more_than_n_minus_f() -> None:
    vectors = [np.full(2, float(i)) for i in range(5)]
    assert len(Krum(2, multi=10).select(vectors)) == 3


def test_krum_with_too_few_models_falls_back_to_the_median_and_logs_once(caplog) -> None:
    own, received, weights = make_models()
    few = {p: received[p] for p in ["a", "b"]}  # 3 models < 2f + 3 = 5
    krum = Krum(1)
    with caplog.at_level(logging.WARNING, logger="p2pfl.aggregation.robust"):
        first = krum("me", own, few, weights)
        krum("me", own, few, weights)
    median = CoordinateMedian()("me", own, few, weights)
    for key in own:
        np.testing.assert_array_equal(first[key], median[key])
    assert len([r for r in caplog.records if "median instead" in r.getMessage()]) == 1


def test_clipped_gossip_without_clipping_is_mix() -> None:
    own, received, weights = make_models(dtype=np.float64)
    weights = {"me": 0.4, "a": 0.1, "b": 0.2, "c": 0.1, "d": 0.2}
    out = ClippedGossip(float("inf"))("me", own, received, weights)
    expected = mix("me", own, received, weights)
    for key in own:
        np.testing.assert_allclose(out[key], expected[key], rtol=0, atol=1e-12)


def test_clipped_gossip_closed_form_with_a_fixed_radius() -> None:
    own, received, weights = make_models(dtype=np.float64)
    weights = {"me": 0.3, "a": 0.1, "b": 0.2, "c": 0.2, "d": 0.2}
    del received["d"]  # missing: the weights renormalise over me, a, b, c (total 0.8)
    tau = 2.0
    names = sorted(own)
    flat = {p: np.concatenate([m[k].ravel() for k in names]) for p, m in {"me": own, **received}.items()}
    step = np.zeros_like(flat["me"])
    for p in ["a", "b", "c"]:
        delta = flat[p] - flat["me"]
        step += weights[p] / 0.8 * delta * min(1.0, tau / np.linalg.norm(delta))
    out = ClippedGossip(tau)("me", own, received, weights)
    got = np.concatenate([out[k].ravel() for k in names])
    np.testing.assert_allclose(got, flat["me"] + step, rtol=0, atol=1e-12)


def test_clipped_gossip_with_a_tiny_radius_moves_at_most_tau_times_the_peer_weight() -> None:
    own, received, weights = make_models(dtype=np.float64)
    received["evil"] = {k: v * 1e6 for k, v in own.items()}
    weights = {**weights, "evil": 0.2}
    tau = 1e-3
    out = ClippedGossip(tau)("me", own, received, weights)
    moved = np.sqrt(sum(((out[k] - own[k]) ** 2).sum() for k in own))
    peer_share = sum(weights[p] for p in received) / sum(weights.values())
    assert 0 < moved <= tau * peer_share * (1 + 1e-9)


def test_clipped_gossip_adaptive_radius_is_the_median_neighbour_distance() -> None:
    own = {"x": np.zeros(1)}
    received = {"a": {"x": np.array([1.0])}, "b": {"x": np.array([2.0])},
                "c": {"x": np.array([3.0])}, "evil": {"x": np.array([1000.0])}}
    weights = {"me": 0.2, "a": 0.2, "b": 0.2, "c": 0.2, "evil": 0.2}
    assert ClippedGossip().radius(np.array([1.0, 2.0, 3.0, 1000.0])) == 2.0
    out = ClippedGossip()("me", own, received, weights)
    # a passes unclipped, b, c and evil are each clipped to 2
    np.testing.assert_allclose(out["x"], [0.2 * (1 + 2 + 2 + 2)])


def test_clipped_gossip_alone_keeps_its_model() -> None:
    own, _, _ = make_models()
    out = ClippedGossip()("me", own, {}, {"me": 1.0, "a": 0.5})
    for key in own:
        np.testing.assert_array_equal(out[key], own[key])
        assert out[key] is not own[key]


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_result_ignores_arrival_order(aggregator) -> None:
    own, received, weights = make_models(seed=1)
    forward = aggregator("me", own, received, weights)
    backward = aggregator("me", own, dict(reversed(list(received.items()))), weights)
    for key in own:
        np.testing.assert_array_equal(forward[key], backward[key])


@pytest.mark.parametrize("aggregator", AGGREGATORS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_never_mutates_inputs_and_returns_new_arrays_of_the_input_dtype(aggregator, dtype) -> None:
    own, received, weights = make_models(seed=2, dtype=dtype)
    before = {p: {k: v.copy() for k, v in m.items()} for p, m in {"me": own, **received}.items()}
    read_only(own, received)  # writing to an input would raise
    out = aggregator("me", own, received, weights)
    assert list(out) == list(own)
    for key, tensor in out.items():
        assert tensor.dtype == dtype and tensor.shape == own[key].shape
        assert tensor.flags.writeable and not np.shares_memory(tensor, own[key])
        assert all(not np.shares_memory(tensor, m[key]) for m in received.values())
    for p, m in {"me": own, **received}.items():
        for key in m:
            np.testing.assert_array_equal(m[key], before[p][key])


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_peers_outside_the_plan_are_ignored(aggregator) -> None:
    own, received, weights = make_models(seed=3)
    stranger = {**received, "zz-stranger": {k: v * 1e9 for k, v in own.items()}}
    plain = aggregator("me", own, received, weights)
    with_stranger = aggregator("me", own, stranger, weights)
    for key in own:
        np.testing.assert_array_equal(plain[key], with_stranger[key])


def test_mean_spec_is_exactly_mix() -> None:
    assert build_aggregator("mean") is mix


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("median", "CoordinateMedian()"),
        ("trimmed-mean:0.2", "TrimmedMean(0.2)"),
        ("trimmed-mean:1", "TrimmedMean(1)"),
        ("krum:1", "Krum(f=1, multi=1)"),
        ("multi-krum:1,3", "Krum(f=1, multi=3)"),
        ("clipped-gossip", "ClippedGossip(tau=None, beta=0.5)"),
        ("clipped-gossip:1.5", "ClippedGossip(tau=1.5, beta=0.5)"),
        (" Krum : 2 ", "Krum(f=2, multi=1)"),
    ],
)
def test_build_aggregator_parses_every_form(spec: str, expected: str) -> None:
    assert repr(build_aggregator(spec)) == expected


@pytest.mark.parametrize(
    "spec",
    ["", "average", "median:3", "mean:1", "trimmed-mean", "trimmed-mean:x", "trimmed-mean:0.5",
     "trimmed-mean:-1", "krum", "krum:-1", "krum:1.5", "multi-krum:1", "multi-krum:1,0",
     "clipped-gossip:-1", "clipped-gossip:abc", "clipped-gossip:nan"],
)
def test_bad_specs_raise_a_config_error_naming_the_field(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_aggregator(spec)
    assert info.value.field == "aggregator"


def test_unknown_spec_lists_the_valid_forms() -> None:
    with pytest.raises(ConfigError, match="multi-krum:F,M"):
        build_aggregator("average")
