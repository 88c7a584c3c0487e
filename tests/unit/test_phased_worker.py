"""The simulation's worker: jobs in order, results (and errors) all delivered."""

from __future__ import annotations

import asyncio

import pytest

from p2pfl.simulation.worker import PhasedWorker


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
