"""Helpers for tests that run ``p2pfl node`` as real OS processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from p2pfl.consortium.rehearsal import free_loopback_ports

TIMEOUT = 120


def write_ring_configs(
    tmp_path: Path,
    n: int,
    rounds: int,
    round_timeout: float = 20.0,
    *,
    ports: list[int] | None = None,
    via: Mapping[tuple[int, int], str] | None = None,
) -> list[Path]:
    """``node{i}.toml`` for a ring of ``n`` bundled-digits nodes on loopback ports.

    Args:
        ports: the nodes' bind ports (fresh free ones by default).
        via: ``(i, j) -> endpoint``: node ``i`` reaches neighbour ``j`` there (e.g. a
            fault-injecting proxy) instead of at ``j``'s bind address.
    """
    ports = ports if ports is not None else free_loopback_ports(n)
    via = via or {}
    paths = []
    for i in range(n):
        peers = {
            str(j): via.get((i, j), f"tcp://127.0.0.1:{ports[j]}") for j in ((i - 1) % n, (i + 1) % n)
        }
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


def start(config: Path, *extra: str, log: Path | None = None) -> subprocess.Popen[str]:
    """Start ``p2pfl node`` on ``config``.

    Its output is piped (read it with :func:`finish`), or appended to ``log``: a long
    run must not fill a pipe nobody reads, which would block the node.
    """
    command = [sys.executable, "-m", "p2pfl", "node", "--config", str(config), "--insecure", *extra]
    if log is None:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with log.open("a") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, text=True)


# Imports what a node needs and pays torch's first-use costs (a throwaway bundled
# learner), says so, then runs `p2pfl node` once told "go" on stdin.
_STANDBY = """
import sys
import torch, sklearn.datasets, p2pfl.cli.main, p2pfl.deploy.runner, p2pfl.examples.bundled
p2pfl.examples.bundled.build_learner(index=0, nodes=2)
print(STANDBY_READY, flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(0)
sys.exit(p2pfl.cli.main.main(sys.argv[1:]))
"""
STANDBY_READY = "standby: imports done"


def start_standby(config: Path, *extra: str, log: Path) -> subprocess.Popen[str]:
    """A fresh ``p2pfl node`` process on ``config`` that waits, imports done, for :func:`go`.

    Importing torch and building the first model take seconds of CPU; a replacement
    started ahead of time restarts a killed node at once instead of racing the running
    nodes' remaining rounds. Its output is appended to ``log``.
    """
    command = [
        sys.executable, "-c", _STANDBY.replace("STANDBY_READY", repr(STANDBY_READY)),
        "node", "--config", str(config), "--insecure", *extra,
    ]
    with log.open("a") as handle:
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=handle, stderr=subprocess.STDOUT, text=True)


def go(standby: subprocess.Popen[str]) -> None:
    """Let a :func:`start_standby` process start its node."""
    assert standby.stdin is not None
    standby.stdin.write("go\n")
    standby.stdin.flush()


def metrics_rows(state: Path) -> list[dict]:
    path = state / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rounds_done(state: Path) -> list[int]:
    """The rounds a node has written a metrics row for, in order."""
    return [row["round"] for row in metrics_rows(state)]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a file-system condition written by another process, with a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # ok-sleep: polling another process's files, bounded by the deadline


def finish(processes: list[subprocess.Popen[str]], timeout: float = TIMEOUT) -> list[str]:
    """Wait for every process to exit and return their outputs (all killed on failure).

    The deadline is shared: all of them must be done within ``timeout`` seconds.
    """
    outputs = []
    deadline = time.monotonic() + timeout
    try:
        for process in processes:
            left = max(0.1, deadline - time.monotonic())
            if process.stdout is None:  # its output goes to a file
                process.wait(timeout=left)
                outputs.append("")
            else:
                outputs.append(process.communicate(timeout=left)[0])
    finally:
        kill_all(processes)
    return outputs


def kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL one process (no clean shutdown) and reap it."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


def kill_all(processes: list[subprocess.Popen[str]]) -> None:
    """Kill whatever is still running and reap everything (for ``finally`` blocks)."""
    for process in processes:
        if process.poll() is None:
            process.kill()
    for process in processes:
        if process.stdout is not None and not process.stdout.closed:
            process.communicate(timeout=TIMEOUT)  # reaps it and closes its pipes
        else:
            process.wait(timeout=TIMEOUT)
        if process.stdin is not None and not process.stdin.closed:
            process.stdin.close()
