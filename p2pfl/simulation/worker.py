"""The one worker thread that trains every simulated node, and how it takes turns with the loop.

All simulated nodes share one event loop and one worker thread. Their torch work takes
turns anyway, and on CPU the loop and the worker should take turns too: every torch op
hands Python's GIL over, so two threads running small models at once are slower than
one (measured on 2 cores: 0.6-0.87x the throughput of running them one after the other).
So the worker runs in phases:

* a phase starts once the event loop has gone idle (blocked waiting for sockets or
  timers; the loop from :func:`new_simulation_loop` says so), or at once on any other loop;
* a phase runs every job queued by then, staged jobs stage by stage: every node's mix,
  then every node's evaluation, then every node's training, then every snapshot. Doing
  the same kind of work back to back keeps its code in the CPU's caches: a snapshot
  taken right after each training measured 1.4x slower than one after all of them, and
  with two stages per job evaluating, loading and snapshotting ran 13-40 % slower than
  the same calls in the plain loop (2-6 % with four);
* results go back when the queue runs dry (or after ``max_hold`` seconds), with one
  wake-up of the loop per phase instead of one per job;
* the loop's thread and the worker stay on one core (:func:`pinned_thread`): taking turns,
  they never need two, and every hand-over to a core that went idle meanwhile cost time
  (measured on a 2-vCPU VM: the 16-node benchmark's median 2.78 s -> 2.12 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import selectors
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

_STOP = object()

# loops made by new_simulation_loop -> the event set while that loop waits for I/O
_IDLE_EVENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, threading.Event] = weakref.WeakKeyDictionary()


class _IdleSignallingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The platform's default selector, flagging when the loop blocks with nothing to run."""

    def __init__(self, idle: threading.Event) -> None:
        super().__init__()
        self._idle = idle

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:  # callbacks are ready: the loop is busy
            return super().select(timeout)  # type: ignore[no-any-return]
        self._idle.set()
        try:
            return super().select(timeout)  # type: ignore[no-any-return]
        finally:
            self._idle.clear()


def new_simulation_loop() -> asyncio.AbstractEventLoop:
    """An asyncio event loop that tells the simulation's worker when it is idle.

    ``run_simulation`` and ``p2pfl simulate`` run on one; :func:`simulate` on any other
    loop works the same, only without the turn-taking (phases start as jobs arrive).
    """
    idle = threading.Event()
    loop = asyncio.SelectorEventLoop(_IdleSignallingSelector(idle))
    _IDLE_EVENTS[loop] = idle
    return loop


def loop_idle_event(loop: asyncio.AbstractEventLoop) -> threading.Event | None:
    """The idle flag of a loop from :func:`new_simulation_loop` (None for other loops)."""
    return _IDLE_EVENTS.get(loop)


def current_cpu() -> int | None:
    """The core the calling thread runs on (Linux), or None where that cannot be told."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        with open("/proc/thread-self/stat", "rb") as stat:
            # field 39 is the processor; the name in parentheses may itself hold spaces
            return int(stat.read().rsplit(b")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        return None


@contextlib.contextmanager
def pinned_thread(cpu: int | None) -> Iterator[None]:
    """Keep the calling thread on core ``cpu`` inside the block (None: leave it free)."""
    before = _pin(cpu)
    try:
        yield
    finally:
        if before is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, before)


@contextlib.contextmanager
def claimed_core(preferred: int | None) -> Iterator[int | None]:
    """A core for one run to keep its threads on, held by this process inside the block.

    ``preferred`` (the caller's current core) unless another run on this machine holds
    it; then one of this thread's cores that none holds; None (run unpinned) if every
    one is held. Pinned threads cannot be moved off a busy core, so two simulations
    started side by side must not pin the same one. The hold is an abstract Unix socket
    name: the kernel releases it when the process ends, however it ends.
    """
    if preferred is None or not hasattr(os, "sched_getaffinity"):
        yield None
        return
    claim = None
    for cpu in [preferred, *sorted(os.sched_getaffinity(0) - {preferred})]:
        claim = _hold(cpu)
        if claim is not None:
            break
    if claim is None:
        yield None
        return
    try:
        yield cpu
    finally:
        claim.close()


def _hold(cpu: int) -> socket.socket | None:
    """Bind the machine-wide name of ``cpu``'s claim; None if another holds it."""
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0p2pfl-simulation-core-{cpu}")  # abstract namespace: no file to clean up
    except OSError:
        claim.close()
        return None
    return claim


def _pin(cpu: int | None) -> set[int] | None:
    """Pin the calling thread to ``cpu``; returns its previous cores (None if not pinned)."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    try:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu})  # pid 0: this thread only
    except OSError:  # e.g. a cpuset that excludes it: run unpinned
        return None
    return before


@dataclass
class _Job:
    stages: Sequence[Callable[[Any], Any]]  # each is given the previous one's result
    value: Any  # the first stage's input
    future: Future[Any] | asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop | None = None  # set for asyncio futures


class PhasedWorker(Executor):
    """A single-thread executor that runs jobs in phases and completes them in batches.

    Plain :meth:`submit` jobs run in submission order; :meth:`submit_stages` jobs run
    stage by stage (every job's first stage in a phase, then every second stage, ...,
    each job's stages in its own order). Results are
    delivered when no job is waiting, or when the oldest undelivered one is
    ``max_hold`` seconds old.

    Args:
        idle: set while the event loop is idle (:func:`loop_idle_event`); a phase waits
            for it, for at most ``max_idle_wait`` seconds. None: phases start at once.
        max_hold: longest a finished result waits for the rest of its phase.
        max_idle_wait: longest a phase waits for the loop to go idle.
        cpu: the core to keep the worker thread on (the loop's, see :func:`pinned_thread`);
            None leaves it free.
    """

    def __init__(
        self,
        *,
        idle: threading.Event | None = None,
        max_hold: float = 0.05,
        max_idle_wait: float = 0.01,
        cpu: int | None = None,
        name: str = "p2pfl-train",
    ) -> None:
        self._cpu = cpu
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle = idle
        self._max_hold = max_hold
        self._max_idle_wait = max_idle_wait
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._shutdown = False
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self._check_open()
        future: Future[Any] = Future()
        self._jobs.put(_Job((lambda _: fn(*args, **kwargs),), None, future))
        return future

    def submit_stages(
        self, loop: asyncio.AbstractEventLoop, value: Any, stages: Sequence[Callable[[Any], Any]]
    ) -> asyncio.Future[Any]:
        """Run ``stages[-1](... stages[1](stages[0](value)))`` in the worker; the result
        (or the first stage's exception, skipping the rest) arrives on ``loop``."""
        self._check_open()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put(_Job(tuple(stages), value, future, loop))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if not self._shutdown:
            self._shutdown = True
            self._jobs.put(_STOP)
        if wait:
            self._thread.join()

    def _check_open(self) -> None:
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")

    def _work(self) -> None:
        _pin(self._cpu)
        held: list[tuple[_Job, bool, Any]] = []
        held_since = 0.0
        while True:
            if held and time.monotonic() - held_since > self._max_hold:
                self._deliver(held)
            try:
                first = self._jobs.get(block=not held)
            except queue.Empty:  # nothing waiting: hand the phase's results back
                self._deliver(held)
                continue
            if self._idle is not None and first is not _STOP:
                self._idle.wait(self._max_idle_wait)  # let the loop finish its turn
            batch = [first]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._jobs.get_nowait())
            stop = _STOP in batch
            jobs = [job for job in batch if job is not _STOP]
            if jobs and not held:
                held_since = time.monotonic()
            held.extend(self._run_phase(jobs))
            if stop:
                self._deliver(held)
                return

    @staticmethod
    def _run_phase(jobs: list[_Job]) -> list[tuple[_Job, bool, Any]]:
        done: list[tuple[_Job, bool, Any]] = []
        # jobs still going, with the value their next stage takes
        going = [
            [job, job.value] for job in jobs
            if not isinstance(job.future, Future) or job.future.set_running_or_notify_cancel()
        ]
        stage = 0
        while going:
            still: list[list[Any]] = []
            for entry in going:
                job = entry[0]
                try:
                    entry[1] = job.stages[stage](entry[1])
                except BaseException as exc:  # delivered to the awaiting node, like any executor
                    done.append((job, False, exc))
                    continue
                if stage + 1 < len(job.stages):
                    still.append(entry)
                else:
                    done.append((job, True, entry[1]))
            going = still
            stage += 1
        return done

    @staticmethod
    def _deliver(held: list[tuple[_Job, bool, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for job, ok, value in held:
            if job.loop is None:
                assert isinstance(job.future, Future)
                if ok:
                    job.future.set_result(value)
                else:
                    job.future.set_exception(value)
            else:
                assert isinstance(job.future, asyncio.Future)
                by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        held.clear()
        for loop, results in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody awaits them
                loop.call_soon_threadsafe(_settle, results)


def _settle(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if future.done():  # the awaiting task was cancelled
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
