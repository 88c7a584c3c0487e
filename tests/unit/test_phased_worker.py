"""The simulation's worker: jobs in order, round jobs in stages, phases gated on an idle
loop, results (and errors) all delivered."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from p2pfl.simulation.worker import PhasedWorker, loop_idle_event, new_simulation_loop


async def test_results_and_errors_reach_their_awaiters_in_submission_order():
    worker = PhasedWorker()
    ran: list[int] = []

    def job(i: int) -> int:
        ran.append(i)
        if i == 3:
            raise ValueError("job 3 fails")
        return i * i

    loop = asyncio.get_running_loop()
    try:
        futures = [loop.run_in_executor(worker, job, i) for i in range(6)]
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)
    finally:
        worker.shutdown(wait=True)
    assert ran == list(range(6))
    assert results[:3] == [0, 1, 4] and results[4:] == [16, 25]
    assert isinstance(results[3], ValueError)


def test_held_results_are_delivered_after_max_hold_even_if_jobs_keep_coming():
    worker = PhasedWorker(max_hold=0.0)
    first = worker.submit(lambda: "a")
    second = worker.submit(lambda: "b")
    assert first.result(timeout=10) == "a" and second.result(timeout=10) == "b"
    worker.shutdown()
    with pytest.raises(RuntimeError, match="shutdown"):
        worker.submit(lambda: None)


async def test_a_phase_runs_each_stage_for_every_job_before_the_next_and_delivers_them_together():
    idle = threading.Event()  # closed: the jobs queue up until the test opens it
    worker = PhasedWorker(idle=idle, max_idle_wait=30)
    log: list[str] = []
    loop = asyncio.get_running_loop()

    def stages(i: int) -> list[Callable[[int], int]]:
        def finish(value: int) -> int:
            log.append(f"finish {i}")
            if i == 1:
                raise ValueError("finish 1 fails")
            return value

        def train(value: int) -> int:
            log.append(f"train {i}")
            if i == 2:
                raise KeyError("train 2 fails")
            return value * 10

        def snapshot(value: int) -> int:
            log.append(f"snapshot {i}")
            return value + 1

        # job 3 has no snapshot stage: jobs may have different numbers of stages
        return [finish, train, snapshot] if i < 3 else [finish, train]

    try:
        futures = [worker.submit_stages(loop, i, stages(i)) for i in range(4)]
        idle.set()
        done, _ = await asyncio.wait([futures[0]], timeout=10)
        assert done
        # one hand-back for the whole phase: the others are settled in the same callback
        assert all(f.done() for f in futures)
    finally:
        worker.shutdown(wait=True)
    assert log == [
        "finish 0", "finish 1", "finish 2", "finish 3", "train 0", "train 2", "train 3", "snapshot 0",
    ]
    assert futures[0].result() == 1 and futures[3].result() == 30
    assert isinstance(futures[1].exception(), ValueError)  # its later stages never ran
    assert isinstance(futures[2].exception(), KeyError)


def test_a_phase_waits_for_the_loop_to_go_idle():
    idle = threading.Event()
    released = threading.Event()
    worker = PhasedWorker(idle=idle, max_idle_wait=30)
    try:
        future = worker.submit(released.is_set)  # True only if it ran after the release
        released.set()
        idle.set()
        assert future.result(timeout=10) is True
    finally:
        worker.shutdown()


def test_a_loop_that_never_goes_idle_does_not_starve_the_worker():
    worker = PhasedWorker(idle=threading.Event(), max_idle_wait=0.01)
    try:
        assert worker.submit(lambda: "done").result(timeout=10) == "done"
    finally:
        worker.shutdown()


async def test_a_result_for_a_cancelled_awaiter_is_dropped_and_the_worker_goes_on():
    idle = threading.Event()
    worker = PhasedWorker(idle=idle, max_idle_wait=30)
    loop = asyncio.get_running_loop()
    try:
        abandoned = worker.submit_stages(loop, 1, [lambda value: value])
        abandoned.cancel()
        kept = worker.submit_stages(loop, 2, [lambda value: value, lambda value: value + 1])
        idle.set()
        assert await asyncio.wait_for(kept, 10) == 3
        assert await asyncio.wait_for(asyncio.wrap_future(worker.submit(lambda: "still up")), 10) == "still up"
    finally:
        worker.shutdown()


def test_the_simulation_loop_flags_idleness_while_it_waits_and_other_loops_have_no_flag():
    loop = new_simulation_loop()
    try:
        idle = loop_idle_event(loop)
        assert idle is not None and not idle.is_set()

        async def wait_until_flagged() -> bool:
            seen = loop.create_future()

            def watch() -> None:  # another thread sees the flag once the loop blocks
                flagged = idle.wait(10)
                loop.call_soon_threadsafe(seen.set_result, flagged)

            threading.Thread(target=watch, daemon=True).start()
            return await asyncio.wait_for(seen, 10)

        assert loop.run_until_complete(wait_until_flagged()) is True
        assert not idle.is_set()  # cleared as soon as the loop runs again
    finally:
        loop.close()
    plain = asyncio.new_event_loop()
    try:
        assert loop_idle_event(plain) is None
    finally:
        plain.close()
