"""The simulation keeps its event loop and its training worker on one core (they take
turns), and gives the loop's thread its cores back when it ends."""

from __future__ import annotations

import os
import threading

from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.simulator import run_simulation
from p2pfl.simulation.worker import current_cpu


def cores_during_a_run(**settings: object) -> list[tuple[set[int], set[int]]]:
    """(loop thread's cores, worker thread's cores) seen at the end of every round."""
    seen: list[tuple[set[int], set[int]]] = []

    def progress(_summary: object) -> None:  # runs on the loop's thread
        worker = next(t for t in threading.enumerate() if t.name == "p2pfl-train")
        assert worker.native_id is not None
        seen.append((os.sched_getaffinity(0), os.sched_getaffinity(worker.native_id)))

    run_simulation(ExperimentConfig(nodes=3, rounds=2, **settings), progress=progress)  # type: ignore[arg-type]
    assert len(seen) == 2
    return seen


def test_the_loop_and_the_worker_share_one_core_and_the_loop_gets_its_cores_back():
    before = os.sched_getaffinity(0)
    for loop_cores, worker_cores in cores_during_a_run():
        assert len(loop_cores) == 1 and loop_cores == worker_cores and loop_cores <= before
    assert os.sched_getaffinity(0) == before


def test_nothing_is_pinned_when_turned_off_or_when_torch_uses_several_threads():
    before = os.sched_getaffinity(0)
    for settings in ({"pin_cpu": False}, {"torch_threads": 2}):
        for loop_cores, worker_cores in cores_during_a_run(**settings):
            assert loop_cores == before and worker_cores == before


def test_current_cpu_is_one_of_the_threads_cores():
    assert current_cpu() in os.sched_getaffinity(0)
