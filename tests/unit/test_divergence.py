"""The warning for a run whose models drift apart: loud when accuracy falls as the
consensus distance explodes, silent for the usual shapes of a healthy run."""

from __future__ import annotations

import logging

import pytest

from p2pfl.simulation.divergence import DivergenceWatch, divergence_hint


def feed(watch: DivergenceWatch, curve: list[tuple[float, float]]) -> None:
    for round_, (accuracy, distance) in enumerate(curve):
        watch.round_closed(round_, accuracy, distance)


def test_a_climb_then_a_fall_with_an_exploding_distance_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    watch = DivergenceWatch(divergence_hint("choco:0.8"))
    curve = [(0.5, 0.1), (0.8, 0.5), (0.95, 2.0), (0.94, 5.0), (0.9, 15.0), (0.84, 300.0), (0.5, 9e3), (0.3, 1e5)]
    with caplog.at_level(logging.WARNING):
        feed(watch, curve)
    assert watch.diverged_at == 5
    assert caplog.text.count("drifting apart") == 1
    assert "fell from 0.950 to 0.840" in caplog.text and "smaller GAMMA" in caplog.text


def test_healthy_runs_are_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    growing_while_learning = [(0.1 + 0.02 * r, 0.005 * 1.5**r) for r in range(40)]  # 1,000-node start
    dip = [(0.9, 0.7), (0.95, 0.6), (0.88, 20.0), (0.96, 0.5)]  # a fall smaller than 0.1
    attacked = [(0.5, 50.0), (0.55, 60.0), (0.47, 80.0), (0.5, 70.0)]  # bad, but not a drift
    for curve in (growing_while_learning, dip, attacked):
        watch = DivergenceWatch()
        with caplog.at_level(logging.WARNING):
            feed(watch, curve)
        assert watch.diverged_at is None
    assert "drifting apart" not in caplog.text


def test_a_non_finite_distance_after_a_fall_counts() -> None:
    watch = DivergenceWatch()
    feed(watch, [(0.9, 1.0), (0.7, float("nan"))])
    assert watch.diverged_at == 1


def test_the_hint_names_choco_only_for_choco() -> None:
    assert divergence_hint("plain") == ""
    assert "GAMMA" in divergence_hint("choco")
