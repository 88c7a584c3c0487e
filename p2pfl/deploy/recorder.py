"""What a deployed node records after each round: metrics.jsonl, its checkpoint, stats.json,
and the progress it publishes to the discovery broker."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pfl._files import write_atomically
from p2pfl.deploy.checkpoint import save_checkpoint
from p2pfl.learning.learner import Learner, Weights
from p2pfl.node.records import NodeStats, RoundMetrics, json_line, metrics_row

__all__ = ["ProgressQueue", "RoundRecorder", "publish_progress", "write_stats"]

log = logging.getLogger(__name__)


class RoundRecorder:
    """Writes each finished round: its ``metrics.jsonl`` line, then the checkpoint.

    Runs in the node's worker (the node's ``checkpoint`` hook). A crash between the two
    writes leaves one line more than the checkpoint covers; :meth:`trim` drops such
    lines on resume, so the log and the checkpoint always agree.
    """

    def __init__(self, state_dir: Path, name: str, learner: Learner) -> None:
        self.state_dir = state_dir
        self.name = name
        self.learner = learner
        self.path = state_dir / "metrics.jsonl"
        self.stats: Callable[[], NodeStats] | None = None  # the node's counters, once it exists

    def trim(self, last_round: int) -> None:
        """Keep only rows up to ``last_round`` (the checkpoint's round)."""
        if not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line).get("round", -1) <= last_round]
        if len(kept) != len(rows):  # a crash while trimming must not lose the rows kept
            write_atomically(self.path, "".join(line + "\n" for line in kept), mode=0o644)

    def __call__(self, metrics: RoundMetrics) -> None:
        with self.path.open("a") as handle:
            handle.write(json_line(metrics_row(metrics)))
        save_checkpoint(self.state_dir, self.name, metrics.round, self.learner)
        if self.stats is not None:
            write_stats(self.state_dir, self.stats())
        log.info(
            "round %d done: accuracy %.4f, loss %.4f, from %s%s", metrics.round, metrics.test_accuracy,
            metrics.test_loss, ",".join(metrics.received_from) or "nobody",
            f", missing {','.join(metrics.missing)}" if metrics.missing else "",
        )


def write_stats(state_dir: Path, stats: NodeStats) -> Path:
    """``stats.json``: the node's message counters (refused messages by reason), replaced
    atomically so a reader never sees half a file."""
    path = state_dir / "stats.json"
    # Called from the worker (after each round) while the event loop updates the counters:
    # copy each field at once (dict() of the Counter is a single C-level copy), no deep walk.
    row: dict[str, Any] = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
    row["rejected"] = dict(sorted(dict(stats.rejected).items()))
    # each write has a temporary file of its own: the last round's write and the final one may overlap
    write_atomically(path, json.dumps(row, indent=2) + "\n", mode=0o644)
    return path


class ProgressQueue:
    """A RoundObserver handing each round's metrics to the progress publisher."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[RoundMetrics] = asyncio.Queue(maxsize=64)

    def on_round_end(self, metrics: RoundMetrics, weights: Weights) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # the broker is behind: skip a report
            self.queue.put_nowait(metrics)


async def publish_progress(presence: Any, progress: asyncio.Queue[RoundMetrics]) -> None:
    """Forward each round's metrics from ``progress`` to the discovery broker, until cancelled."""
    while True:
        metrics = await progress.get()
        try:
            await presence.publish_progress(metrics.round, metrics.test_accuracy, metrics.test_loss)
        except Exception as exc:  # the broker is optional: training must not depend on it
            log.warning("could not publish progress to the broker: %s", exc)
        finally:
            progress.task_done()  # run_org_node waits for the last report before leaving
