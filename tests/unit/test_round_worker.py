"""A node's worker steps alone: four stages per job, typed results, NaN training reverted."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from p2pfl.learning.learner import EvalResult, TrainResult
from p2pfl.node.exchange import Exchanged, Trained
from p2pfl.node.records import NodeStats
from p2pfl.node.steps import Finished, RoundWorker
from p2pfl.simulation.worker import PhasedWorker


class RecordingLearner:
    """Adds 1 to its weight per round (or NaN when told to), logging every call."""

    def __init__(self, name: str, calls: list[str], *, nan_at: int | None = None) -> None:
        self.name, self.calls, self.nan_at = name, calls, nan_at
        self.w = np.zeros(2, dtype=np.float32)

    def train(self, round: int) -> TrainResult:
        self.calls.append(f"train {self.name}")
        self.w = self.w + (np.nan if round == self.nan_at else 1.0)
        return TrainResult(loss=float(round), steps=1, samples=4)

    def evaluate(self) -> EvalResult:
        self.calls.append(f"evaluate {self.name}")
        return EvalResult(loss=0.1, accuracy=0.9, samples=4)

    def get_weights(self) -> dict[str, np.ndarray]:
        self.calls.append(f"get {self.name}")
        return {"w": self.w.copy()}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        self.calls.append(f"set {self.name}")
        self.w = np.array(weights["w"], dtype=np.float32)


def exchanged(round_: int, mixed: dict[str, np.ndarray], calls: list[str], name: str) -> Exchanged:
    def aggregate() -> dict[str, np.ndarray]:
        calls.append(f"mix {name}")
        return mixed

    return Exchanged(round=round_, received_from=("x",), missing=("y",), bytes_sent=10, bytes_received=20,
                     seconds=0.5, aggregate=aggregate)


async def test_a_round_is_trained_then_finished_with_the_next_one_trained() -> None:
    calls: list[str] = []
    checkpoints = []
    worker = RoundWorker("a", RecordingLearner("a", calls), NodeStats(), checkpoints.append)
    with ThreadPoolExecutor(1) as executor:
        worker.use(executor)
        first = await worker.train(0)
        assert isinstance(first, Trained) and first.round == 0 and first.weights["w"].tolist() == [1, 1]
        finished = await worker.finish(first, exchanged(0, {"w": np.full(2, 5.0, np.float32)}, calls, "a"), 1)
        last = await worker.finish(finished.next, exchanged(1, {"w": np.zeros(2, np.float32)}, calls, "a"), None)
    assert isinstance(finished, Finished) and finished.next is not None
    assert finished.next.round == 1 and finished.next.weights["w"].tolist() == [6, 6]  # trained from the mix
    metrics = finished.metrics
    assert (metrics.round, metrics.train_loss, metrics.test_accuracy) == (0, 0.0, 0.9)
    assert (metrics.received_from, metrics.missing, metrics.bytes_sent, metrics.bytes_received) == (
        ("x",), ("y",), 10, 20)
    assert last.next is None and checkpoints == [finished.metrics, last.metrics]


async def test_the_staged_worker_runs_each_stage_for_every_node_before_the_next() -> None:
    calls: list[str] = []
    workers = [RoundWorker(n, RecordingLearner(n, calls), NodeStats(), None) for n in "ab"]
    phased = PhasedWorker()
    try:
        for worker in workers:
            worker.use(phased)
        trained = await asyncio.gather(*(w.train(0) for w in workers))
        calls.clear()
        await asyncio.gather(*(
            w.finish(t, exchanged(0, {"w": np.ones(2, np.float32)}, calls, w.name), 1)
            for w, t in zip(workers, trained, strict=True)
        ))
    finally:
        phased.shutdown()
    # mix, evaluate (set + evaluate), train (+ the NaN fallback is not needed), snapshot
    assert calls == ["mix a", "mix b", "set a", "evaluate a", "set b", "evaluate b",
                     "train a", "train b", "get a", "get b"]


async def test_a_nan_training_step_is_reverted_to_the_weights_it_started_from() -> None:
    calls: list[str] = []
    stats = NodeStats()
    worker = RoundWorker("a", RecordingLearner("a", calls, nan_at=0), stats, None)
    with ThreadPoolExecutor(1) as executor:
        worker.use(executor)
        first = await worker.train(0)
    assert first.weights["w"].tolist() == [0, 0] and stats.non_finite_models == 1
