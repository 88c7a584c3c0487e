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


def test_shards_sums_give_the_driver_the_one_process_rows_and_summaries():
    """A cluster run's reduction without Ray: two shards' ShardRounds send their round
    sums, the driver averages them, the shards centre, the ReducedRecorder writes."""
    import queue

    from p2pfl.simulation.cluster_shard import ShardRounds
    from p2pfl.simulation.recorder import ReducedRecorder

    names, shard_of = ["a", "b", "c", "d"], {"a": 0, "b": 0, "c": 1, "d": 1}
    whole = MetricsRecorder(names)
    driver = ReducedRecorder(names)
    events: list[queue.SimpleQueue] = [queue.SimpleQueue(), queue.SimpleQueue()]
    shards = [ShardRounds([n for n in names if shard_of[n] == i], events[i]) for i in range(2)]
    sums: dict[int, dict[int, tuple]] = {}

    def reduce() -> None:
        for i, shard_events in enumerate(events):
            while not shard_events.empty():
                _, round_, total, count = shard_events.get()
                sums.setdefault(round_, {})[i] = (total, count)
        for round_ in sorted(sums):
            if len(sums[round_]) < 2:
                return
            parts = sums.pop(round_)
            count = sum(c for _, c in parts.values())
            keys = next(t for t, c in parts.values() if c)
            mean = {k: sum(t[k] for t, c in parts.values() if c) / count for k in keys}
            distances: dict[str, float] = {}
            for shard in shards:
                distances.update(shard.centre(round_, mean))
            driver.give_distances(round_, distances)

    rng = np.random.default_rng(1)
    # async clocks: c jumps from 0 to 2, d crashes after round 1
    plan = [("a", 0), ("c", 0), ("b", 0), ("d", 0), ("a", 1), ("b", 1), ("d", 1), ("c", 2), ("a", 2), ("b", 2)]
    for node, round_ in plan:
        metrics, weights = report(node, round_, float(rng.random())), model(float(rng.normal()))
        whole.on_round_end(metrics, weights)
        driver.report(metrics)
        shards[shard_of[node]].on_round_end(metrics, weights)
        if (node, round_) == ("d", 1):
            for recorder in (whole, driver, shards[1]):
                recorder.node_down("d")
        reduce()
    whole.close()
    for shard in shards:
        shard.close()
    reduce()
    driver.close()
    assert [r["consensus_distance"] for r in driver.rows] == pytest.approx(
        [r["consensus_distance"] for r in whole.rows], rel=1e-12)
    assert [{**r, "consensus_distance": 0} for r in driver.rows] == [{**r, "consensus_distance": 0} for r in whole.rows]
    assert [(s.round, s.nodes, s.mean_accuracy) for s in driver.rounds] == [
        (s.round, s.nodes, s.mean_accuracy) for s in whole.rounds]
    assert [s.consensus_distance for s in driver.rounds] == pytest.approx(
        [s.consensus_distance for s in whole.rounds], rel=1e-12)
    assert len(driver.rounds) == 3 and len(driver.rows) == len(plan)
    assert set(shards[0].final_weights) | set(shards[1].final_weights) == set(names)
