"""`p2pfl node` as real OS processes: finish, stop cleanly, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from processes import TIMEOUT, finish, metrics_rows, start, wait_for, write_ring_configs

from p2pfl.learning.models import MLP

# multi-process runs: skipped by `make test-fast`
pytestmark = pytest.mark.slow


def test_three_node_processes_train_and_save_a_plain_torch_model(tmp_path):
    configs = write_ring_configs(tmp_path, 3, rounds=3)
    outputs = finish([start(c) for c in configs])
    for i, out in enumerate(outputs):
        state = tmp_path / f"state{i}"
        rows = metrics_rows(state)
        assert [r["round"] for r in rows] == [0, 1, 2], out
        assert rows[-1]["test_accuracy"] > 0.85
        assert "plain text" in out and "NOT encrypted" in out  # --insecure warns loudly
        model = MLP(64, 10)
        model.load_state_dict(torch.load(state / "final_model.pt"))  # plain torch, our own file
        stats = json.loads((state / "stats.json").read_text())  # the operator's view of the traffic
        assert stats["messages_accepted"] >= 3 * 2 and stats["rejected"] == {}, stats
        assert "messages: " in out


def test_sigterm_stops_cleanly_and_a_restart_resumes_from_the_checkpoint(tmp_path):
    configs = write_ring_configs(tmp_path, 3, rounds=40, round_timeout=2.0)
    processes = [start(c) for c in configs]
    try:
        wait_for(lambda: len(metrics_rows(tmp_path / "state0")) >= 2, TIMEOUT, "two rounds of node 0")
        processes[0].send_signal(signal.SIGTERM)
        out, _ = processes[0].communicate(timeout=TIMEOUT)
        assert processes[0].returncode == 0, out
        assert "resume" in out
        done = len(metrics_rows(tmp_path / "state0"))
        assert (tmp_path / "state0" / "checkpoint.pt").exists()
        assert not (tmp_path / "state0" / "final_model.pt").exists()
    finally:
        for process in processes:
            process.kill()
            process.wait()
    # restart alone (its neighbours are gone: start at once) for one more round
    restarted = start(configs[0], "--rounds", str(done + 1), "--start", "none")
    out = finish([restarted])[0]
    rows = metrics_rows(tmp_path / "state0")
    assert [r["round"] for r in rows] == list(range(done + 1)), out
    assert f"resuming from checkpoint after round {done - 1}" in out


def test_sigkill_then_restart_resumes_and_finishes(tmp_path):
    rounds = 6
    configs = write_ring_configs(tmp_path, 3, rounds=rounds, round_timeout=1.5)
    processes = [start(c) for c in configs]
    try:
        wait_for(lambda: len(metrics_rows(tmp_path / "state1")) >= 2, TIMEOUT, "two rounds of node 1")
        os.kill(processes[1].pid, signal.SIGKILL)
        processes[1].wait()
        # its neighbours may finish before it is back: it must not wait for their hello
        processes[1] = start(configs[1], "--start", "none")
        outputs = finish(processes)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for i in range(3):
        rows = metrics_rows(tmp_path / f"state{i}")
        assert rows[-1]["round"] == rounds - 1, outputs[i]
        assert (tmp_path / f"state{i}" / "final_model.pt").exists()
    assert "resuming from checkpoint" in outputs[1]


def test_a_bad_config_names_the_field_and_exits_2(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('name = "a"\nbind = "tcp://127.0.0.1:1"\nlearner = "no_colon"\n[peers]\nb = "tcp://x:1"\n')
    result = subprocess.run(
        [sys.executable, "-m", "p2pfl", "node", "--config", str(config), "--insecure"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "learner" in result.stderr and "module:function" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("secret_missing", [True])
def test_curve_is_required_unless_insecure(tmp_path, secret_missing):
    config = write_ring_configs(tmp_path, 3, rounds=1)[0]
    result = subprocess.run(
        [sys.executable, "-m", "p2pfl", "node", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "secret_key" in result.stderr and "--insecure" in result.stderr


def test_with_mqtt_discovery_a_killed_neighbour_is_not_waited_for(tmp_path, mqtt_broker):
    rounds, deadline = 6, 120.0
    configs = write_ring_configs(tmp_path, 3, rounds=rounds, round_timeout=deadline)
    for config in configs:
        config.write_text(config.read_text().replace(
            "[peers]", f'discovery = "{mqtt_broker}"\n[peers]'
        ))
    processes = [start(c) for c in configs]
    try:
        wait_for(lambda: len(metrics_rows(tmp_path / "state2")) >= 2, TIMEOUT, "two rounds of node 2")
        killed_at = time.monotonic()
        os.kill(processes[2].pid, signal.SIGKILL)
        processes[2].wait()
        outputs = finish(processes[:2])
        elapsed = time.monotonic() - killed_at
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    # without the broker's Last Will they would wait out 120 s in each remaining round
    assert elapsed < deadline, outputs
    for i in (0, 1):
        rows = metrics_rows(tmp_path / f"state{i}")
        assert rows[-1]["round"] == rounds - 1, outputs[i]
        assert rows[-1]["missing"] == ["2"]


def test_the_readme_learner_in_a_bundle_runs_from_any_directory_and_its_errors_exit_2(tmp_path):
    from p2pfl.consortium import init_consortium

    (tmp_path / "desc.toml").write_text(
        'name = "c"\ntopology = "complete"\n[training]\nlearner = "hospital_fl.model:build_learner"\n'
        'learner_args = { data_dir = "/nonexistent/fl" }\n'
        + "".join(f'[[members]]\nname = "{n}"\nhost = "127.0.0.1"\nport = {7300 + i}\n' for i, n in enumerate("ab"))
    )
    bundle = init_consortium(tmp_path / "desc.toml", tmp_path / "bundles")[0]
    package = bundle / "hospital_fl"  # the organisation's own code, next to node.toml as documented
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text(  # the README's signature: no index
        "def build_learner(data_dir: str):\n    return open(data_dir + '/train.csv')\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "p2pfl", "node", "--config", str(bundle / "node.toml")],
        capture_output=True, text=True, timeout=60, cwd=elsewhere,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "TypeError" not in result.stderr
    assert (
        "p2pfl: error: learner: hospital_fl.model:build_learner(...) failed: FileNotFoundError: "
        in result.stderr
    ), result.stderr
    assert "/nonexistent/fl/train.csv" in result.stderr
