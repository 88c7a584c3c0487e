"""Collects per-round metrics from many nodes: consensus distance, metrics.jsonl, progress."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from p2pfl.aggregation.consensus import model_distances
from p2pfl.errors import ConfigError
from p2pfl.learning.learner import Weights
from p2pfl.node.records import RoundMetrics, json_line, metrics_row
from p2pfl.simulation.divergence import DivergenceWatch


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


def make_out_dir(out_dir: Path) -> None:
    """Create the results folder ``out_dir`` and its parents (if not there yet).

    Raises:
        ConfigError: (field ``out``) if it cannot be made, e.g. a file is in the way.
    """
    with _writing_out(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)


def open_metrics_file(out_dir: Path) -> IO[str]:
    """Create ``out_dir`` if need be and open ``metrics.jsonl`` in it for writing.

    Raises:
        ConfigError: (field ``out``) if the folder cannot be made or written to.
    """
    make_out_dir(out_dir)
    with _writing_out(out_dir):
        return (out_dir / "metrics.jsonl").open("w")


@contextlib.contextmanager
def _writing_out(out_dir: Path) -> Iterator[None]:
    try:
        yield
    except FileExistsError:  # mkdir on an existing file
        raise ConfigError("out", f"{out_dir} is a file, not a folder; give a folder path for the results") from None
    except OSError as exc:  # no permission, a parent that is a file, a read-only disk ...
        raise ConfigError(
            "out", f"cannot write {exc.filename or out_dir} ({exc.strerror or exc}); give a folder you can write to"
        ) from None


class MetricsRecorder:
    """A :class:`~p2pfl.node.node.RoundObserver` for a whole simulation.

    A round is closed once every live node has reported it or a later round (or at
    :meth:`close` for rounds some node never finished). In sync mode every node reports
    every round; in async mode a node's clock may jump over rounds, and its model at
    round ``r`` is the one of its latest report up to ``r``. Closing computes the
    consensus distance, appends one ``metrics.jsonl`` line per report and calls
    ``progress``.

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
        divergence_hint: str = "",
    ) -> None:
        self.names = list(names)
        self.progress = progress
        self.divergence = DivergenceWatch(divergence_hint)  # warns once if the models drift apart
        self.rows: list[dict[str, Any]] = []
        self.rounds: list[RoundSummary] = []
        self.final_weights: dict[str, Weights] = {}
        self._next_round = 0  # rounds close in order
        self._reports: dict[str, list[tuple[RoundMetrics, Weights]]] = {n: [] for n in self.names}
        self._queued = 0  # reports in self._reports, all nodes together
        # Index in names of the first node the open round still waits for: the nodes
        # before it have reported it (or are down), so each report checks only from here.
        # Rescanning every node per report cost 4.9 s per round with 4,000 nodes.
        self._waiting_from = 0
        self._state: dict[str, tuple[RoundMetrics, Weights]] = {}  # latest report of a closed round
        self._down: set[str] = set()  # crashed or rejoining nodes: rounds close without them
        self._rejoining: set[str] = set()
        self._required_from: dict[str, int] = {}  # a rejoined node counts from its first round back
        self._closed: dict[int, asyncio.Event] = {}
        self._file: IO[str] | None = None
        if out_dir is not None:
            self._file = open_metrics_file(out_dir)

    def on_round_end(self, metrics: RoundMetrics, weights: Weights) -> None:
        self.final_weights[metrics.node] = weights
        self._report(metrics, weights)

    def _report(self, metrics: RoundMetrics, weights: Weights) -> None:
        if metrics.node in self._rejoining:  # back, possibly rounds later after catching up
            self._rejoining.discard(metrics.node)
            self._down.discard(metrics.node)
            self._required_from[metrics.node] = metrics.round
            self._state.pop(metrics.node, None)  # its model from before the crash is gone
            self._waiting_from = 0  # it may be waited for again, wherever it stands
        if metrics.round < self._next_round:  # closed while this node was down: a late row
            self._write([self._row(metrics, math.nan)])
            return
        reports = self._reports[metrics.node]
        reports.append((metrics, weights))  # nodes hand over fresh arrays
        self._queued += 1
        if reports[0][0].round <= self._next_round:
            # the next close replaces this node's state before reading it: let its older
            # model go now, not once every node has reported (a model copy per node)
            self._state.pop(metrics.node, None)
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

    def _reported_up_to(self, name: str) -> int:
        reports = self._reports[name]
        return reports[-1][0].round if reports else -1

    def _close_complete_rounds(self) -> None:
        names = self.names
        while self._queued:
            round_ = self._next_round
            i = self._waiting_from
            while i < len(names) and (
                names[i] in self._down
                or self._required_from.get(names[i], 0) > round_
                or self._reported_up_to(names[i]) >= round_
            ):
                i += 1
            self._waiting_from = i
            if i < len(names):
                return
            self._close_round(round_)

    def close(self) -> None:
        """Close rounds some nodes never finished, then the metrics file."""
        while self._queued:
            self._close_round(self._next_round)
        if self._file is not None:
            self._file.close()
            self._file = None

    def _close_round(self, round_: int) -> None:
        exact: dict[str, RoundMetrics] = {}  # the reports of this very round
        for name in self.names:
            reports = self._reports[name]
            while reports and reports[0][0].round <= round_:
                self._state[name] = reports.pop(0)
                self._queued -= 1
            if name in self._state and self._state[name][0].round == round_:
                exact[name] = self._state[name][0]
        self._next_round = round_ + 1
        self._waiting_from = 0
        order = [n for n in self.names if n in exact or (n in self._state and n not in self._down)]
        self._round_closed(round_, order, exact)

    def _round_closed(self, round_: int, order: list[str], exact: dict[str, RoundMetrics]) -> None:
        """Round ``round_`` is closed: ``order``, the nodes whose models count (their
        latest report up to it in ``self._state``), ``exact``, the reports of this round."""
        if not order:
            self._event(round_).set()
            return
        distances = self._distances(round_, order)
        by_node = dict(zip(order, distances, strict=True))
        self._write([self._row(metrics, float(by_node[name])) for name, metrics in exact.items()])
        self._event(round_).set()
        accuracies = [self._state[n][0].test_accuracy for n in order]
        summary = RoundSummary(
            round=round_,
            nodes=len(order),
            mean_accuracy=float(np.mean(accuracies)),
            min_accuracy=float(np.min(accuracies)),
            max_accuracy=float(np.max(accuracies)),
            consensus_distance=float(distances.mean()),
            bytes_sent=sum(m.bytes_sent for m in exact.values()),
        )
        self.rounds.append(summary)
        self.divergence.round_closed(round_, summary.mean_accuracy, summary.consensus_distance)
        if self.progress is not None:
            self.progress(summary)

    def _distances(self, round_: int, order: list[str]) -> np.ndarray:
        """The consensus distance of each node in ``order`` at round ``round_``."""
        return model_distances([self._state[n][1] for n in order])

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


class ReducedRecorder(MetricsRecorder):
    """The recorder of a cluster run's driver: it gets every node's metrics but no model.

    The shards reduce the models themselves (:func:`~p2pfl.aggregation.consensus.model_sum`
    of their nodes', then :func:`~p2pfl.aggregation.consensus.distances_to` the average
    the driver forms); a round closes once :meth:`give_distances` brings its distances,
    in round order. Rows and summaries are a one-process run's, the distances equal up
    to float rounding (the sums are grouped by shard). A node without a distance (its
    shard died in the middle of the round) gets NaN.
    """

    def __init__(
        self,
        names: Sequence[str],
        out_dir: Path | None = None,
        progress: Callable[[RoundSummary], None] | None = None,
        divergence_hint: str = "",
    ) -> None:
        super().__init__(names, out_dir, progress, divergence_hint)
        self._given: dict[int, dict[str, float]] = {}

    def report(self, metrics: RoundMetrics) -> None:
        """A node's report of a round, without its model."""
        self._report(metrics, {})

    def give_distances(self, round_: int, distances: dict[str, float]) -> None:
        """The consensus distances of round ``round_``: every node the shards counted."""
        self._given[round_] = distances
        self._close_complete_rounds()

    def _close_complete_rounds(self) -> None:
        while self._next_round in self._given:
            self._close_round(self._next_round)

    def _distances(self, round_: int, order: list[str]) -> np.ndarray:
        given = self._given.pop(round_, {})
        return np.array([given.get(name, math.nan) for name in order])

    def close(self) -> None:
        """Close the rounds given so far, then (as a one-process run does) the rest,
        without distances (NaN)."""
        while self._given and max(self._given) >= self._next_round:
            self._close_round(self._next_round)
        super().close()
