"""Faults on multi-process runs: nodes SIGKILLed and restarted, a network partition that
heals (through :mod:`p2pfl.testing.faults`), and a checkpoint write killed halfway."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from processes import (
    STANDBY_READY,
    TIMEOUT,
    finish,
    go,
    kill,
    kill_all,
    metrics_rows,
    rounds_done,
    start,
    start_standby,
    wait_for,
    write_ring_configs,
)

from p2pfl.consortium.rehearsal import free_loopback_ports
from p2pfl.deploy.checkpoint import load_checkpoint
from p2pfl.testing import FaultProxy

# multi-process runs: skipped by `make test-fast`
pytestmark = pytest.mark.slow

N = 8
ROUND_TIMEOUT = 1.5


def _last_round(state: Path) -> int:
    done = rounds_done(state)
    return done[-1] if done else -1


def _logs(tmp_path: Path) -> list[Path]:
    return [tmp_path / f"node{i}.log" for i in range(N)]


def test_sigkill_a_quarter_of_the_nodes_survivors_finish_and_restarted_nodes_rejoin(tmp_path):
    rounds, victims = 120, (2, 6)
    survivors = [i for i in range(N) if i not in victims]
    states = [tmp_path / f"state{i}" for i in range(N)]
    logs = _logs(tmp_path)
    restart_logs = {v: tmp_path / f"node{v}.restart.log" for v in victims}
    configs = write_ring_configs(tmp_path, N, rounds=rounds, round_timeout=ROUND_TIMEOUT)
    processes = [start(config, log=log) for config, log in zip(configs, logs, strict=True)]
    # the victims' replacements: fresh processes, imports done ahead, started on "go"
    standbys = {v: start_standby(configs[v], log=restart_logs[v]) for v in victims}
    everything = [*processes, *standbys.values()]
    try:
        wait_for(lambda: all(len(rounds_done(states[v])) >= 2 for v in victims), TIMEOUT, "two rounds of the victims")
        for victim in victims:
            kill(processes[victim])
        killed_after = {v: _last_round(states[v]) for v in victims}
        # the victims' neighbours stop waiting for them and go on
        watchers = {i: v for v in victims for i in ((v - 1) % N, (v + 1) % N)}

        def went_on_without_victims() -> bool:
            for i, victim in watchers.items():
                rows = metrics_rows(states[i])
                without = [r["round"] for r in rows if str(victim) in r["missing"]]
                if not without or rows[-1]["round"] < without[0] + 2:
                    return False
            return True

        wait_for(went_on_without_victims, TIMEOUT, "the survivors to go on without the victims")
        wait_for(lambda: all(STANDBY_READY in restart_logs[v].read_text() for v in victims), TIMEOUT,
                 "the replacement processes to be ready")
        for victim in victims:
            # what a kill in the middle of a checkpoint write leaves behind
            (states[victim] / ".checkpoint.pt.killed").write_bytes(b"PK\x03\x04 half a checkpoint")
            # default start condition: it greets its neighbours, which answer with their
            # round, so it knows at once that it must catch up
            go(standbys[victim])
        finish([processes[i] for i in survivors])
        finish(list(standbys.values()), timeout=60)
    finally:
        kill_all(everything)

    for i in survivors:
        rows = metrics_rows(states[i])
        assert [r["round"] for r in rows] == list(range(rounds)), logs[i].read_text()[-3000:]
        assert (states[i] / "final_model.pt").exists()
    for victim in victims:
        out = restart_logs[victim].read_text()
        rows = metrics_rows(states[victim])
        assert "resuming from checkpoint after round" in out, out[-3000:]
        assert rows[-1]["round"] == rounds - 1, out[-3000:]
        assert (states[victim] / "final_model.pt").exists()
        # rejoined: after the restart it averaged with the survivors again
        assert any(r["received_from"] for r in rows if r["round"] > killed_after[victim]), out[-3000:]
        # starting the node removed the partial temporary file (and any the kill left)
        assert re.search(r"removed \d+ temporary file\(s\) .*\.checkpoint\.pt\.killed", out), out[-3000:]
        assert not list(states[victim].glob(".checkpoint.pt.*"))


def _side_distance(models: list[dict[str, torch.Tensor]], side_a: range, side_b: range) -> float:
    """Squared L2 distance between the two sides' average models."""
    total = 0.0
    for key in models[0]:
        mean_a = torch.stack([models[i][key].float() for i in side_a]).mean(0)
        mean_b = torch.stack([models[i][key].float() for i in side_b]).mean(0)
        total += float(((mean_a - mean_b) ** 2).sum())
    return total


def _pair_distance(models: list[dict[str, torch.Tensor]], i: int, j: int) -> float:
    return sum(float(((models[i][k].float() - models[j][k].float()) ** 2).sum()) for k in models[i])


def test_a_partition_that_heals_both_sides_train_then_reconverge(tmp_path):
    rounds, cut_rounds = 60, 8
    side_a, side_b = range(0, 4), range(4, 8)
    cross = ((3, 4), (4, 3), (7, 0), (0, 7))  # the two ring edges between the halves, both ways
    states = [tmp_path / f"state{i}" for i in range(N)]
    logs = _logs(tmp_path)
    ports = free_loopback_ports(N)
    proxy = FaultProxy()
    processes: list[subprocess.Popen[str]] = []
    try:
        proxy.start()
        via = {(i, j): proxy.link(f"tcp://127.0.0.1:{ports[j]}", name=f"{i}->{j}") for i, j in cross}
        configs = write_ring_configs(tmp_path, N, rounds=rounds, round_timeout=ROUND_TIMEOUT, ports=ports, via=via)
        processes = [start(config, log=log) for config, log in zip(configs, logs, strict=True)]
        wait_for(lambda: all(_last_round(s) >= 1 for s in states), TIMEOUT, "two rounds everywhere")

        proxy.cut(mode="blackhole")  # packets vanish, as behind a firewall that drops them
        at_cut = [_last_round(s) for s in states]
        assert max(at_cut) + cut_rounds + 20 < rounds, f"the cut came too late: {at_cut}"
        wait_for(
            lambda: all(_last_round(s) >= max(at_cut) + cut_rounds for s in states),
            TIMEOUT, f"{cut_rounds} rounds on both sides of the partition",
        )
        # the models at the end of the partition (checkpoints are renamed into place: whole)
        during = [
            torch.load(s / "checkpoint.pt", weights_only=True)["learner"]["state"]["model"] for s in states
        ]
        at_heal = [_last_round(s) for s in states]
        proxy.heal()
        finish(processes)
        reconnected = {name: proxy.stats(name).forwarded for name in proxy.names}
    finally:
        kill_all(processes)
        proxy.stop()

    rows = [metrics_rows(s) for s in states]
    for i in range(N):
        assert [r["round"] for r in rows[i]] == list(range(rounds)), logs[i].read_text()[-3000:]
        assert (states[i] / "final_model.pt").exists()
        assert rows[i][-1]["test_accuracy"] > 0.9
    # while cut, the nodes at the cut trained without their neighbour across it ...
    # neighbours are at most a round apart: models sent before the cut are for earlier rounds
    isolated = range(max(at_cut) + 4, min(at_heal) + 1)
    assert len(isolated) >= cut_rounds - 3, (at_cut, at_heal)
    for i, j in cross:
        cut_rows = [r for r in rows[i] if r["round"] in isolated]
        assert all(str(j) in r["missing"] for r in cut_rows), (i, j, cut_rows)
        # ... and after the heal, ZeroMQ reconnected through the proxy and models crossed again
        assert any(str(j) in r["received_from"] for r in rows[i] if r["round"] > at_heal[i]), (i, j)
        assert reconnected[f"{i}->{j}"] >= 2, reconnected

    final = [torch.load(s / "final_model.pt", weights_only=True) for s in states]
    apart = _side_distance(during, side_a, side_b)
    neighbours = [(0, 1), (1, 2), (2, 3), (4, 5), (5, 6), (6, 7)]
    within = sum(_pair_distance(during, i, j) for i, j in neighbours) / len(neighbours)
    # the partition split the models: the halves drifted apart, each half stayed together
    assert apart > 5 * within, (apart, within)
    # after the heal they converged again
    assert _side_distance(final, side_a, side_b) < apart / 10, (_side_distance(final, side_a, side_b), apart)


# A child process that saves one checkpoint, then a large second one whose write stops
# halfway (the file wrapper blocks once STALL_AT bytes are on disk) until it is killed:
# the kill lands while the temporary file is partly written, every time.
_HALF_WRITTEN = textwrap.dedent("""
    import os, sys, threading
    from pathlib import Path

    import torch

    from p2pfl.deploy.checkpoint import save_checkpoint

    directory, stall_at, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])


    class StateLearner:
        def __init__(self, tensor):
            self.tensor = tensor

        def state(self):
            return {"model": {"w": self.tensor}}


    class StallingFile:
        def __init__(self, handle):
            self._handle = handle
            self._written = 0

        def write(self, data):
            view = memoryview(data).cast("B")
            if self._written + len(view) >= stall_at:
                self._handle.write(view[: stall_at - self._written])
                self._handle.flush()
                threading.Event().wait()  # until SIGKILL
            self._written += self._handle.write(view)
            return len(view)

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self._handle.close()


    save_checkpoint(directory, "a", 0, StateLearner(torch.arange(16.0)))
    real_fdopen = os.fdopen
    os.fdopen = lambda fd, *args, **kwargs: StallingFile(real_fdopen(fd, *args, **kwargs))
    save_checkpoint(directory, "a", 1, StateLearner(torch.ones(size)))
""")


def test_a_checkpoint_write_killed_halfway_leaves_the_previous_checkpoint_loadable(tmp_path):
    stall_at, floats = 8 << 20, 8 << 20  # killed at 8 MiB of a 32 MiB checkpoint
    child = subprocess.Popen(
        [sys.executable, "-c", _HALF_WRITTEN, str(tmp_path), str(stall_at), str(floats)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        def half_written() -> bool:
            if child.poll() is not None:
                pytest.fail(f"the writer exited ({child.returncode}) before it was killed: {child.communicate()[0]}")
            return any(p.stat().st_size >= stall_at for p in tmp_path.glob(".checkpoint.pt.*"))

        wait_for(half_written, TIMEOUT, "the second checkpoint's temporary file to be partly written")
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=TIMEOUT)
    finally:
        kill_all([child])
    assert child.returncode == -signal.SIGKILL

    (partial,) = tmp_path.glob(".checkpoint.pt.*")
    assert partial.stat().st_size == stall_at < 4 * floats  # really only part of it
    with pytest.raises(RuntimeError):
        torch.load(partial, weights_only=True)
    saved = load_checkpoint(tmp_path, "a")  # what a node does when it starts
    assert saved is not None and saved.round == 0
    assert torch.equal(saved.learner["state"]["model"]["w"], torch.arange(16.0))
    assert not partial.exists()  # and the leftover is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
