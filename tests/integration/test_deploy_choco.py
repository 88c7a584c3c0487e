"""`p2pfl node` processes running CHOCO gossip: node.toml's gossip reaches the node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from processes import finish, metrics_rows, start, write_ring_configs

# multi-process runs: skipped by `make test-fast`
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_three_node_processes_run_choco_with_topk(tmp_path: Path, mode: str):
    configs = write_ring_configs(tmp_path, 3, rounds=5)
    for config in configs:
        extra = f'gossip = "choco"\ncompress = "topk:0.2"\nmode = "{mode}"\n'
        config.write_text(config.read_text().replace("[peers]", extra + "[peers]"))
    outputs = finish([start(c) for c in configs])
    for i, out in enumerate(outputs):
        rows = metrics_rows(tmp_path / f"state{i}")
        assert rows and rows[-1]["round"] == 4, out
        assert rows[-1]["test_accuracy"] > 0.5
        stats = json.loads((tmp_path / f"state{i}" / "stats.json").read_text())
        assert not stats.get("rejected"), stats
