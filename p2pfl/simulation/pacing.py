"""Emulated hardware speeds: ``--slow-nodes 2 --slowdown 5 --step-seconds 0.1``.

Simulated nodes share this machine's cores, so a node's step takes as long as the
queue of every node's training in front of it, not as long as its own hardware would
need. To emulate distinct machines, a node's worker jobs are paced in wall-clock time:
a job submitted at ``t`` is handed back no earlier than ``t + factor * max(run, step)``,
where ``run`` is the job's measured compute time, ``step`` the emulated step time and
``factor`` the node's slowdown. The waiting happens on the event loop's timers, never
in the shared worker, so a slow node does not hold the others up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any


class PacedExecutor(Executor):
    """Wraps the shared worker for one node: its jobs take at least their emulated time.

    Args:
        inner: the executor that runs the jobs.
        loop: the event loop whose timers deliver late results.
        factor: this node's slowdown (1 = normal speed).
        step_seconds: emulated duration of one job at normal speed (0 = its compute time).
    """

    def __init__(self, inner: Executor, loop: asyncio.AbstractEventLoop, *, factor: float, step_seconds: float) -> None:
        self._inner = inner
        self._loop = loop
        self.factor = factor
        self.step_seconds = step_seconds

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        submitted = time.monotonic()
        compute: list[float] = []

        def timed() -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                compute.append(time.perf_counter() - started)

        outer: Future[Any] = Future()
        outer.set_running_or_notify_cancel()

        def hand_back(inner_future: Future[Any]) -> None:
            emulated = self.factor * max(compute[0] if compute else 0.0, self.step_seconds)
            delay = submitted + emulated - time.monotonic()
            if delay <= 0:
                _transfer(inner_future, outer)
            else:
                self._loop.call_soon_threadsafe(self._loop.call_later, delay, _transfer, inner_future, outer)

        self._inner.submit(timed).add_done_callback(hand_back)
        return outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """The shared worker belongs to the simulation: nothing to stop here."""


def _transfer(source: Future[Any], target: Future[Any]) -> None:
    if target.done():
        return
    exc = source.exception()
    if exc is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())
