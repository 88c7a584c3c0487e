"""Real ``p2pfl node`` processes: one stopped mid-run and restarted after its neighbours
finished exits with code 7 and one line saying so, instead of waiting forever (issue 16)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from processes import (
    STANDBY_READY,
    TIMEOUT,
    finish,
    go,
    kill_all,
    rounds_done,
    start,
    start_standby,
    wait_for,
    write_ring_configs,
)

# multi-process runs: skipped by `make test-fast`
pytestmark = pytest.mark.slow

ROUNDS = 12
ROUND_TIMEOUT = 6.0  # also how long a finished node lingers for a neighbour that stopped mid-run


def test_a_node_restarted_after_its_neighbours_finished_exits_7_saying_they_finished(tmp_path):
    configs = write_ring_configs(tmp_path, 3, rounds=ROUNDS, round_timeout=ROUND_TIMEOUT)
    logs = [tmp_path / f"node{i}.log" for i in range(3)]
    restart_log = tmp_path / "node2.restart.log"
    processes = [start(config, log=log) for config, log in zip(configs, logs, strict=True)]
    standby = start_standby(configs[2], log=restart_log)
    everything = [*processes, standby]
    try:
        wait_for(lambda: STANDBY_READY in restart_log.read_text(), TIMEOUT, "the replacement process to be ready")
        wait_for(lambda: len(rounds_done(tmp_path / "state2")) >= 2, TIMEOUT, "two rounds of node 2")
        os.kill(processes[2].pid, signal.SIGINT)  # stopped mid-run, as the README says one may
        finish([processes[2]])
        stopped_after = rounds_done(tmp_path / "state2")[-1]
        assert stopped_after < ROUNDS - 2
        wait_for(lambda: all(rounds_done(tmp_path / f"state{i}")[-1:] == [ROUNDS - 1] for i in (0, 1)),
                 TIMEOUT, "the neighbours to finish")
        # their last row is written before the run returns: restart once they say they finished
        wait_for(lambda: all("finished its rounds" in logs[i].read_text() for i in (0, 1)),
                 TIMEOUT, "the neighbours to linger")
        go(standby)  # restarted while they linger after their last round
        started = time.monotonic()
        finish([standby], timeout=ROUND_TIMEOUT + 30)
        finish(processes[:2])
    finally:
        kill_all(everything)

    out = restart_log.read_text()
    assert standby.returncode == 7, out[-3000:]
    assert f"resuming from checkpoint after round {stopped_after}" in out
    assert (f"p2pfl: error: node 2 resumed at round {stopped_after + 1}, but its neighbours 0, 1 finished the run "
            f"(last round {ROUNDS - 1}): nobody is left to train with") in out, out[-3000:]
    assert "waiting to start" not in out
    assert time.monotonic() - started < ROUND_TIMEOUT + 30
    for i in (0, 1):
        assert processes[i].returncode == 0
        assert (tmp_path / f"state{i}" / "final_model.pt").exists()
