"""`p2pfl node` processes in asynchronous mode: no barrier, yet all reach the last tick."""

from __future__ import annotations

from pathlib import Path

import pytest
from processes import finish, metrics_rows, start, write_ring_configs

# multi-process runs: skipped by `make test-fast`
pytestmark = pytest.mark.slow


def test_three_async_node_processes_all_reach_the_last_clock_tick(tmp_path: Path):
    configs = write_ring_configs(tmp_path, 3, rounds=6, round_timeout=600.0)
    for config in configs:  # a 600 s deadline: only async mode finishes in time
        config.write_text(config.read_text().replace("[peers]", 'mode = "async"\n[peers]'))
    outputs = finish([start(c) for c in configs])
    for i, out in enumerate(outputs):
        rows = metrics_rows(tmp_path / f"state{i}")
        clocks = [row["round"] for row in rows]
        assert clocks and clocks == sorted(set(clocks)) and clocks[-1] == 5, out
        assert (tmp_path / f"state{i}" / "final_model.pt").exists()
        assert rows[-1]["test_accuracy"] > 0.5
