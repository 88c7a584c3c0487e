"""The ``p2pfl`` command line, run as ``python -m p2pfl`` subprocesses."""

from __future__ import annotations

import json
import re
import signal
import struct
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 180

METRIC_KEYS = {
    "node", "round", "train_loss", "test_loss", "test_accuracy", "consensus_distance",
    "bytes_sent", "bytes_received", "round_seconds",
}
SUMMARY_KEYS = {
    "nodes", "rounds_completed", "mean_accuracy", "min_accuracy", "max_accuracy",
    "consensus_distance", "wall_seconds", "bytes_sent_total",
}


def p2pfl(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pfl", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT,
    )


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 50 and height > 50
    assert data.endswith(b"IEND\xaeB`\x82")


def read_rows(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("p2pfl: error: ")
    assert "Traceback" not in done.stderr
    return lines[0]


# --------------------------------------------------------------------------- simulations
# Each run pays ~5 s of torch/sklearn imports, so there are only three, started together
# (two at a time, one per core) when the first test needs one.
SMALL = ("--nodes", "4", "--rounds", "3", "--local-steps", "4", "--quiet")
RUNS = {
    "base": ("--seed", "0"),
    "ipc": ("--seed", "0", "--transport", "ipc"),
    "tcp": ("--seed", "1", "--transport", "tcp"),
}


class Simulations:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._pool = ThreadPoolExecutor(2)
        self._runs: dict[str, Future[subprocess.CompletedProcess[str]]] = {
            name: self._pool.submit(p2pfl, "simulate", *SMALL, *extra, "--out", root / name, cwd=root)
            for name, extra in RUNS.items()
        }

    def __call__(self, name: str) -> Path:
        done = self._runs[name].result()
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""  # --quiet: no bar, no warnings
        assert re.match(r"4 nodes, 3 rounds in [\d.]+s: accuracy mean ", done.stdout), done.stdout
        return self.root / name

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    runs = Simulations(tmp_path_factory.mktemp("sims"))
    yield runs
    runs.close()


@pytest.mark.slow  # waits for the simulation subprocesses
def test_simulate_writes_one_metrics_row_per_node_and_round(sims) -> None:
    rows = read_rows(sims("base"))
    assert len(rows) == 4 * 3
    for row in rows:
        assert METRIC_KEYS <= set(row), set(row) ^ METRIC_KEYS
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert row["train_loss"] > 0 and row["test_loss"] > 0
        assert row["consensus_distance"] >= 0
        assert row["bytes_sent"] > 0 and row["bytes_received"] > 0
        assert row["round_seconds"] > 0
    assert sorted((r["round"], r["node"]) for r in rows) == [
        (k, n) for k in range(3) for n in ("0", "1", "2", "3")
    ]


@pytest.mark.slow  # waits for the simulation subprocesses
def test_simulate_summary_agrees_with_metrics(sims) -> None:
    directory = sims("base")
    rows = read_rows(directory)
    summary = json.loads((directory / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["nodes"] == 4
    assert summary["rounds_completed"] == 3
    assert 0 <= summary["min_accuracy"] <= summary["mean_accuracy"] <= summary["max_accuracy"] <= 1
    last = [r for r in rows if r["round"] == 2]
    assert summary["min_accuracy"] == min(r["test_accuracy"] for r in last)
    assert summary["max_accuracy"] == max(r["test_accuracy"] for r in last)
    assert summary["mean_accuracy"] == pytest.approx(sum(r["test_accuracy"] for r in last) / 4)
    assert summary["consensus_distance"] == pytest.approx(sum(r["consensus_distance"] for r in last) / 4)
    assert summary["wall_seconds"] > 0
    assert summary["bytes_sent_total"] > 0
    assert summary["bytes_sent_total"] == sum(r["bytes_sent"] for r in rows)
    # loopback gossip: everything sent is received
    assert summary["bytes_received_total"] == summary["bytes_sent_total"]
    assert summary["config"]["rounds"] == 3 and summary["config"]["local_steps"] == 4
    assert summary["interrupted"] is False
    assert sorted(p.name for p in (directory / "models").iterdir()) == ["0.pt", "1.pt", "2.pt", "3.pt", "average.pt"]


@pytest.mark.slow  # waits for the simulation subprocesses
def test_same_seed_gives_identical_metrics_and_another_seed_differs(sims) -> None:
    def learning(name: str) -> list[tuple]:
        return [(r["node"], r["round"], r["train_loss"], r["test_accuracy"]) for r in read_rows(sims(name))]

    # The seed alone fixes the run ("same seed, same bits"): a second run with seed 0,
    # here over ipc instead of inproc (arrival order must not matter), is bit-identical.
    # (One run fewer: each costs ~5 s of imports.)
    base = learning("base")
    assert learning("ipc") == base
    assert learning("tcp") != base  # seed 1


@pytest.mark.slow  # waits for the simulation subprocesses
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_simulate_over_other_transports(sims, transport: str) -> None:
    directory = sims(transport)
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["config"]["transport"] == transport
    assert summary["rounds_completed"] == 3
    assert summary["messages_rejected"] == {}
    rows = read_rows(directory)
    assert len(rows) == 12
    # on a ring of 4 every node hears from both neighbours every round
    assert all(len(r["received_from"]) == 2 and r["missing"] == [] for r in rows)


@pytest.mark.slow  # waits for the simulation subprocesses
def test_report_draws_three_pngs(sims) -> None:
    directory = sims("base")
    done = p2pfl("report", directory)
    assert done.returncode == 0, done.stderr
    names = ["accuracy.png", "consensus.png", "bytes.png"]
    assert done.stdout.split() == [str(directory / n) for n in names]
    for name in names:
        assert_png(directory / name)


def test_report_on_an_empty_directory_is_a_clear_error(tmp_path) -> None:
    done = p2pfl("report", tmp_path)
    assert done.returncode == 2
    line = one_line_error(done)
    assert "metrics.jsonl does not exist" in line and str(tmp_path) in line
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- config
def test_print_config_merges_defaults_toml_flags_and_overrides(tmp_path) -> None:
    (tmp_path / "exp.toml").write_text(
        'rounds = 7\nlr = 0.2\nbatch_size = 8\ntopology = "star"\nlocal-steps = 2\n'
    )
    done = p2pfl(
        "simulate", "--config", "exp.toml", "--rounds", "5", "--lr", "0.25", "lr=0.3", "seed=11",
        "--print-config", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert config["rounds"] == 5  # flag beats TOML
    assert config["lr"] == 0.3  # override beats flag beats TOML
    assert config["seed"] == 11  # override beats default
    assert config["batch_size"] == 8 and config["topology"] == "star"  # TOML beats default
    assert config["local_steps"] == 2  # "-" in a TOML key is "_"
    assert config["momentum"] == 0.9 and config["transport"] == "inproc"  # defaults
    assert config["out"] is None
    assert list(tmp_path.iterdir()) == [tmp_path / "exp.toml"]  # printing runs nothing


def test_metrics_flag_takes_a_comma_separated_list_and_repeats(tmp_path) -> None:
    (tmp_path / "exp.toml").write_text('metrics = ["auc"]\n')
    done = p2pfl("simulate", "--config", "exp.toml", "--print-config", cwd=tmp_path)
    assert json.loads(done.stdout)["metrics"] == ["auc"]
    done = p2pfl("simulate", "--metrics", "auc,f1", "--metrics", "recall", "--print-config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics"] == ["auc", "f1", "recall"]


def test_unknown_config_key_exits_2_naming_the_key(tmp_path) -> None:
    (tmp_path / "exp.toml").write_text("roudns = 3\n")
    done = p2pfl("simulate", "--config", "exp.toml", cwd=tmp_path)
    assert done.returncode == 2
    line = one_line_error(done)
    assert "roudns" in line and "did you mean 'rounds'?" in line and "exp.toml" in line
    assert done.stdout == ""

    done = p2pfl("simulate", "roudns=3", cwd=tmp_path)
    assert done.returncode == 2
    assert "roudns" in one_line_error(done)


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("--config", "nosuch.toml"), 2, "nosuch.toml does not exist"),
        (("--config", "."), 2, "cannot read ."),
        (("rounds",), 2, "key=value"),
        (("rounds=0",), 2, "rounds: must be >= 1"),
        (("--transport", "udp"), 2, "transport"),
        (("--topology", "nosuch", "--nodes", "4", "--rounds", "1"), 3, "unknown topology generator 'nosuch'"),
        (("--dataset", "nosuch", "--nodes", "4", "--rounds", "1"), 4, "unknown dataset 'nosuch'"),
        (("--metrics", "auk,f1"), 2, "metrics: unknown metric 'auk' (did you mean 'auc'?); valid: auc (binary), "
         "f1 (binary), recall (per class)"),
        (("--metrics", "auc", "--nodes", "4", "--rounds", "1"), 2,
         "metrics: auc needs a binary task, but digits has 10 classes: use recall"),
    ],
)
def test_expected_errors_exit_with_their_code_and_one_line(tmp_path, args, code, needle) -> None:
    done = p2pfl("simulate", *args, cwd=tmp_path)  # no --quiet: no bar may precede the error
    assert done.returncode == code, done.stderr
    assert needle in one_line_error(done)
    assert done.stdout == ""


@pytest.mark.slow  # a simulation subprocess
def test_ctrl_c_keeps_the_rounds_done_a_summary_and_the_models(tmp_path) -> None:
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"
    # long enough never to finish on its own: 2000 rounds of at least 0.02 s each
    process = subprocess.Popen(
        [sys.executable, "-m", "p2pfl", "simulate", "--nodes", "4", "--rounds", "2000", "--local-steps", "1",
         "--step-seconds", "0.02", "--quiet", "--out", str(out)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # SIGINT as a terminal sends it: a shell's background job would otherwise ignore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 4):  # round 0 of all 4 nodes
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)  # ok-sleep: polling a file another process writes, bounded by the deadline
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert 1 <= summary["rounds_completed"] < 2000 and summary["rounds"] == 2000
    assert 0 <= summary["mean_accuracy"] <= 1  # of the last round every node completed
    assert sorted(p.name for p in (out / "models").iterdir()) == ["0.pt", "1.pt", "2.pt", "3.pt", "average.pt"]
    assert stdout == ""
    assert stderr == (
        f"p2pfl: interrupted after {summary['rounds_completed']} of 2000 rounds; kept {metrics}, "
        f'{out / "summary.json"} ("interrupted": true) and 4 node models with their average in {out / "models"}/\n'
    )
    rounds = {row["round"] for row in read_rows(out)}
    assert set(range(summary["rounds_completed"])) <= rounds


# --------------------------------------------------------------------------- topology
def test_topology_show_ring_json() -> None:
    done = p2pfl("topology", "show", "ring", "--nodes", "16", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["nodes"] == 16
    assert info["edges"] == 16 == len(info["edge_list"])
    assert info["diameter"] == 8
    assert info["spectral_gap"] == pytest.approx(0.0507, abs=0.001)
    assert info["degree"] == {"min": 2, "max": 2, "mean": 2.0}


def test_topology_show_text_and_png(tmp_path) -> None:
    png = tmp_path / "ring.png"
    done = p2pfl("topology", "show", "ring", "--nodes", "16", "--png", png)
    assert done.returncode == 0, done.stderr
    assert re.search(r"spectral gap\s+0\.0507\b", done.stdout), done.stdout
    assert re.search(r"diameter\s+8\b", done.stdout)
    assert f"drawn to {png}" in done.stdout
    assert_png(png)


def test_topology_show_ready_made_file() -> None:
    done = p2pfl("topology", "show", "topologies/torus-16.json", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert (info["nodes"], info["edges"], info["diameter"]) == (16, 32, 4)
    assert info["degree"] == {"min": 4, "max": 4, "mean": 4.0}
    assert info["spectral_gap"] == pytest.approx(0.4, abs=1e-9)  # 4x4 torus, Metropolis weights 1/5


def test_topology_save_then_show_gives_the_same_edges(tmp_path) -> None:
    def edges(spec: str | Path, *extra: str) -> set[frozenset[str]]:
        done = p2pfl("topology", "show", spec, *extra, "--json", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout)
        names = info["node_names"]
        return {frozenset((names[a], names[b])) for a, b in info["edge_list"]}

    done = p2pfl("topology", "save", "random-regular:4", "--nodes", "10", "out.graphml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wrote 10 nodes, 20 edges" in done.stdout
    generated = edges("random-regular:4", "--nodes", "10")
    assert len(generated) == 20
    assert edges("out.graphml") == generated


def test_topology_bad_spec_exits_3() -> None:
    done = p2pfl("topology", "show", "nosuch", "--nodes", "4")
    assert done.returncode == 3
    assert "nosuch" in one_line_error(done)


# --------------------------------------------------------------------------- data
def test_data_table_totals_equal_the_training_set() -> None:
    done = p2pfl("data", "--dataset", "digits", "--nodes", "4", "--partition", "shards:2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = re.match(r"digits: (\d+) training samples, (\d+) test samples, 10 classes", lines[0])
    assert header, lines[0]
    n_train, n_test = int(header[1]), int(header[2])
    assert n_train + n_test == 1797  # sklearn's digits
    assert n_test == 360  # test_fraction 0.2
    assert lines[1].split() == [*map(str, range(10)), "total"]
    node_rows = [line.split() for line in lines[2:6]]
    assert [row[:2] for row in node_rows] == [["node", str(i)] for i in range(4)]
    counts = [[int(v) for v in row[2:]] for row in node_rows]
    for row in counts:
        assert sum(row[:10]) == row[10]
        assert 0 < sum(1 for v in row[:10] if v) < 10  # shards: few labels per node
    total = lines[6].split()
    assert total[0] == "total"
    totals = [int(v) for v in total[1:]]
    assert totals[:10] == [sum(row[c] for row in counts) for c in range(10)]
    assert totals[10] == sum(row[10] for row in counts) == n_train


def test_closed_stdout_ends_quietly() -> None:
    # like `p2pfl topology show ... | head -1` when head exits before p2pfl writes
    with subprocess.Popen(
        [sys.executable, "-m", "p2pfl", "topology", "show", "ring", "--nodes", "16", "--json"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        proc.stdout.close()  # no reader left: the first write fails with EPIPE
        stderr = proc.stderr.read()
        assert proc.wait(timeout=TIMEOUT) == 141
    assert stderr == ""
