"""`p2pfl node` as real OS processes: finish, stop cleanly, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from p2pfl.consortium.rehearsal import free_loopback_ports
from p2pfl.learning.models import MLP

TIMEOUT = 120


def write_ring_configs(tmp_path: Path, n: int, rounds: int, round_timeout: float = 20.0) -> list[Path]:
    ports = free_loopback_ports(n)
    paths = []
    for i in range(n):
        peers = {str(j): f"tcp://127.0.0.1:{ports[j]}" for j in ((i - 1) % n, (i + 1) % n)}
        peer_lines = "\n".join(f'"{name}" = "{endpoint}"' for name, endpoint in peers.items())
        path = tmp_path / f"node{i}.toml"
        path.write_text(
            f'name = "{i}"\nbind = "tcp://127.0.0.1:{ports[i]}"\n'
            'learner = "p2pfl.examples.bundled:build_learner"\n'
            f'learner_args = {{ index = {i}, nodes = {n}, partition = "iid" }}\n'
            f"rounds = {rounds}\nround_timeout = {round_timeout}\nhello_interval = 0.2\n"
            "torch_threads = 1\n"
            f'state_dir = "state{i}"\n[peers]\n{peer_lines}\n'
        )
        paths.append(path)
    return paths


def start(config: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "p2pfl", "node", "--config", str(config), "--insecure", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def metrics_rows(state: Path) -> list[dict]:
    path = state / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll a file-system condition written by another process, with a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # ok-sleep: polling another process's files, bounded by the deadline


def finish(processes: list[subprocess.Popen[str]]) -> list[str]:
    outputs = []
    try:
        for process in processes:
            out, _ = process.communicate(timeout=TIMEOUT)
            outputs.append(out)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return outputs


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
