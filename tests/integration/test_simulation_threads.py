"""The simulation keeps its event loop and its training worker on one core (they take
turns), never one that a simulation beside it holds, and gives the loop's thread its
cores back when it ends."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading

from p2pfl.simulation import setup
from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.simulator import run_simulation
from p2pfl.simulation.worker import claimed_core, current_cpu


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


def test_a_run_beside_another_pins_a_core_the_other_does_not_hold(monkeypatch):
    before = os.sched_getaffinity(0)
    held = current_cpu()
    assert held is not None
    # another process holds the core this run would start on, as a simulation would
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from p2pfl.simulation.worker import claimed_core\n"
         f"with claimed_core({held}) as cpu:\n    print(cpu, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == str(held)
        monkeypatch.setattr(setup, "current_cpu", lambda: held)  # the run starts on the held core
        for loop_cores, worker_cores in cores_during_a_run():
            if len(before) > 1:
                assert len(loop_cores) == 1 and loop_cores == worker_cores and held not in loop_cores
            else:  # nowhere else to go: run unpinned
                assert loop_cores == before
    finally:
        holder.communicate("")  # closes its stdin: it exits and its claim goes
    with claimed_core(held) as cpu:  # released with the process
        assert cpu == held


def test_claims_are_released_and_a_run_finding_every_core_held_is_not_pinned():
    before = os.sched_getaffinity(0)
    with contextlib.ExitStack() as stack:
        cores = [stack.enter_context(claimed_core(cpu)) for cpu in sorted(before)]
        assert sorted(cores) == sorted(before)  # nobody else held them
        for loop_cores, worker_cores in cores_during_a_run():
            assert loop_cores == before and worker_cores == before
    with claimed_core(min(before)) as cpu:
        assert cpu == min(before)
