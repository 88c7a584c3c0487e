"""The simulation's metrics recorder: rounds close in order, also when clocks jump."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfl.node.records import RoundMetrics
from p2pfl.simulation.recorder import MetricsRecorder, model_distances


def report(node: str, round_: int, accuracy: float) -> RoundMetrics:
    return RoundMetrics(node, round_, 0.1, 0.2, accuracy, 10, 10, 0.01, (), ())


def model(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 2), value, np.float32), "b": np.full(3, value, np.float32)}


def test_model_distances_are_each_models_squared_distance_to_the_mean():
    rng = np.random.default_rng(0)
    models = [{"a": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
              for _ in range(5)]
    flat = np.stack([np.concatenate([m["a"].ravel(), m["b"].ravel()]).astype(np.float64) for m in models])
    expected = ((flat - flat.mean(axis=0)) ** 2).sum(axis=1)
    np.testing.assert_allclose(model_distances(models), expected)


def test_a_round_closes_once_every_node_reported_it_or_a_later_one():
    closed = []
    recorder = MetricsRecorder(["a", "b"], progress=closed.append)
    recorder.on_round_end(report("a", 0, 0.5), model(0.0))
    assert closed == []  # b has not reported yet
    recorder.on_round_end(report("b", 0, 0.7), model(2.0))
    assert [s.round for s in closed] == [0]
    assert closed[0].mean_accuracy == pytest.approx(0.6)
    assert closed[0].consensus_distance == pytest.approx(7.0)  # 7 entries, each 1 from the mean
    # async: b's clock jumps from 0 to 3; a reports every round
    recorder.on_round_end(report("b", 3, 0.9), model(1.0))
    for round_ in (1, 2, 3):
        recorder.on_round_end(report("a", round_, 0.5 + round_ / 10), model(1.0))
    assert [s.round for s in closed] == [0, 1, 2, 3]
    # rounds 1 and 2 count b with its latest model up to then (its round-0 one)
    assert closed[1].mean_accuracy == pytest.approx((0.6 + 0.7) / 2)
    assert closed[1].consensus_distance > 0 and closed[3].consensus_distance == 0
    rows = [(row["node"], row["round"]) for row in recorder.rows]
    assert rows == [("a", 0), ("b", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 3)]  # one per report
    recorder.close()


def test_a_crashed_node_does_not_hold_rounds_and_counts_again_once_back():
    closed = []
    recorder = MetricsRecorder(["a", "b"], progress=closed.append)
    recorder.on_round_end(report("a", 0, 0.5), model(0.0))
    recorder.on_round_end(report("b", 0, 0.5), model(0.0))
    recorder.node_down("b")
    recorder.on_round_end(report("a", 1, 0.6), model(0.0))
    assert closed[-1].round == 1 and closed[-1].nodes == 1
    recorder.node_up("b")
    recorder.on_round_end(report("b", 3, 0.8), model(0.0))  # caught up to round 3
    recorder.on_round_end(report("a", 2, 0.6), model(0.0))
    assert closed[-1].round == 2 and closed[-1].nodes == 1  # b counts from round 3 on
    recorder.on_round_end(report("a", 3, 0.7), model(0.0))
    assert closed[-1].round == 3 and closed[-1].nodes == 2
    recorder.close()


def test_a_node_back_with_a_late_report_is_waited_for_again_even_behind_the_others():
    # the recorder checks each report from the first node still awaited on; a node
    # before that point that comes back from a crash must be awaited again
    closed = []
    recorder = MetricsRecorder(["a", "b", "c"], progress=closed.append)
    recorder.node_down("b")
    recorder.on_round_end(report("a", 0, 0.5), model(0.0))
    recorder.on_round_end(report("c", 0, 0.5), model(0.0))
    recorder.on_round_end(report("a", 1, 0.5), model(0.0))
    assert [s.round for s in closed] == [0]  # round 1 waits for c, b is down
    recorder.node_up("b")
    recorder.on_round_end(report("b", 0, 0.5), model(0.0))  # back, its round 0 late
    recorder.on_round_end(report("c", 1, 0.5), model(0.0))
    assert [s.round for s in closed] == [0]  # and now round 1 waits for b too
    recorder.on_round_end(report("b", 1, 0.5), model(0.0))
    assert [s.round for s in closed] == [0, 1] and closed[1].nodes == 3
    recorder.close()


def test_rounds_of_thousands_of_nodes_close_without_rescanning_every_node_per_report():
    names = [f"n{i:04d}" for i in range(4000)]
    closed = []
    recorder = MetricsRecorder(names, progress=closed.append)
    checks = 0
    reported_up_to = recorder._reported_up_to

    def counted(name: str) -> int:
        nonlocal checks
        checks += 1
        return reported_up_to(name)

    recorder._reported_up_to = counted  # type: ignore[method-assign]
    for name in names:  # in name order: the case that rescanned 8 million times per round
        recorder.on_round_end(report(name, 0, 0.5), model(0.0))
    assert [s.round for s in closed] == [0]
    assert checks < 3 * len(names)
    recorder.close()
