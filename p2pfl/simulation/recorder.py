"""Collects per-round metrics from many nodes: consensus distance, metrics.jsonl, progress."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from p2pfl.learning.learner import Weights
from p2pfl.node.records import RoundMetrics, json_line, metrics_row


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
        self._down: set[str] = set()  # crashed or rejoining nodes: rounds close without them
        self._rejoining: set[str] = set()
        self._required_from: dict[str, int] = {}  # a rejoined node counts from its first round back
        self._closed: dict[int, asyncio.Event] = {}
        self._file: IO[str] | None = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._file = (out_dir / "metrics.jsonl").open("w")

    def on_round_end(self, metrics: RoundMetrics, weights: Weights) -> None:
        self.final_weights[metrics.node] = weights
        if metrics.node in self._rejoining:  # back, possibly rounds later after catching up
            self._rejoining.discard(metrics.node)
            self._down.discard(metrics.node)
            self._required_from[metrics.node] = metrics.round
        if self._event(metrics.round).is_set():  # closed while this node was down: a late row
            self._write([self._row(metrics, math.nan)])
            return
        slot = self._pending.setdefault(metrics.round, {})
        slot[metrics.node] = (metrics, flatten(weights))
        self._close_complete_rounds()

    def node_down(self, name: str) -> None:
        """``name`` crashed: close rounds without waiting for it."""
        self._down.add(name)
        self._close_complete_rounds()

    def node_up(self, name: str) -> None:
        """``name`` restarted; it counts again from the first round it reports."""
        self._rejoining.add(name)

    async def wait_for_round(self, round_: int) -> None:
        """Until every live node has finished ``round_``."""
        await self._event(round_).wait()

    def _event(self, round_: int) -> asyncio.Event:
        return self._closed.setdefault(round_, asyncio.Event())

    def _close_complete_rounds(self) -> None:
        for round_ in sorted(self._pending):
            required = {
                n for n in self.names if n not in self._down and self._required_from.get(n, 0) <= round_
            }
            if not required <= self._pending[round_].keys():
                break  # rounds close in order
            self._close_round(round_)

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
        rows = [self._row(slot[name][0], float(d)) for name, d in zip(order, distances, strict=True)]
        accuracies = [row["test_accuracy"] for row in rows]
        self._write(rows)
        self._event(round_).set()
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


    @staticmethod
    def _row(metrics: RoundMetrics, distance: float) -> dict[str, Any]:
        row = metrics_row(metrics)
        row["consensus_distance"] = distance
        return row

    def _write(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        if self._file is not None:
            self._file.writelines(json_line(row) for row in rows)
            self._file.flush()
