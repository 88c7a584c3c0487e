"""Collects per-round metrics from many nodes: consensus distance, metrics.jsonl, progress."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from p2pfl.learning.learner import Weights
from p2pfl.node.node import RoundMetrics


@dataclass(frozen=True)
class RoundSummary:
    """One round across all nodes that reported it."""

    round: int
    nodes: int
    mean_accuracy: float
    min_accuracy: float
    max_accuracy: float
    consensus_distance: float  # mean squared distance of node models to their average
    bytes_sent: int


def flatten(weights: Weights) -> np.ndarray:
    """All tensors of a model as one float64 vector, in name order."""
    return np.concatenate([np.asarray(weights[k], dtype=np.float64).ravel() for k in sorted(weights)])


def consensus_distances(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Each model's squared distance to the average model."""
    stacked = np.stack(vectors)
    return ((stacked - stacked.mean(axis=0)) ** 2).sum(axis=1)


class MetricsRecorder:
    """A :class:`~p2pfl.node.node.RoundObserver` for a whole simulation.

    A round is closed once every node has reported it (or at :meth:`close` for rounds
    some node never finished); closing computes the consensus distance, appends one
    ``metrics.jsonl`` line per node and calls ``progress``.

    Args:
        names: all node names (defines line order).
        out_dir: where ``metrics.jsonl`` goes; ``None`` keeps everything in memory only.
        progress: called with each closed round's summary.
    """

    def __init__(
        self,
        names: Sequence[str],
        out_dir: Path | None = None,
        progress: Callable[[RoundSummary], None] | None = None,
    ) -> None:
        self.names = list(names)
        self.progress = progress
        self.rows: list[dict[str, Any]] = []
        self.rounds: list[RoundSummary] = []
        self.final_weights: dict[str, Weights] = {}
        self._pending: dict[int, dict[str, tuple[RoundMetrics, np.ndarray]]] = {}
        self._file: IO[str] | None = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._file = (out_dir / "metrics.jsonl").open("w")

    def on_round_end(self, metrics: RoundMetrics, weights: Weights) -> None:
        self.final_weights[metrics.node] = weights
        slot = self._pending.setdefault(metrics.round, {})
        slot[metrics.node] = (metrics, flatten(weights))
        if len(slot) == len(self.names):
            self._close_round(metrics.round)

    def close(self) -> None:
        """Close rounds some nodes never finished, then the metrics file."""
        for round_ in sorted(self._pending):
            self._close_round(round_)
        if self._file is not None:
            self._file.close()
            self._file = None

    def _close_round(self, round_: int) -> None:
        slot = self._pending.pop(round_)
        order = [n for n in self.names if n in slot]
        distances = consensus_distances([slot[n][1] for n in order])
        accuracies = []
        for name, distance in zip(order, distances, strict=True):
            metrics = slot[name][0]
            row = dict(vars(metrics))  # flat dataclass: cheaper than asdict's deep copy
            row["received_from"] = list(metrics.received_from)
            row["missing"] = list(metrics.missing)
            row["consensus_distance"] = float(distance)
            self.rows.append(row)
            accuracies.append(metrics.test_accuracy)
            if self._file is not None:
                self._file.write(json.dumps(_finite(row)) + "\n")
        if self._file is not None:
            self._file.flush()
        summary = RoundSummary(
            round=round_,
            nodes=len(order),
            mean_accuracy=float(np.mean(accuracies)),
            min_accuracy=float(np.min(accuracies)),
            max_accuracy=float(np.max(accuracies)),
            consensus_distance=float(distances.mean()),
            bytes_sent=sum(slot[n][0].bytes_sent for n in order),
        )
        self.rounds.append(summary)
        if self.progress is not None:
            self.progress(summary)


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN: write null so every JSON reader accepts the file
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
