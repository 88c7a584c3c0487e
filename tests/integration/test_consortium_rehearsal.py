"""A 5-organisation consortium as 5 OS processes with CurveZMQ, against the simulator."""

from __future__ import annotations

import json

import pytest

from p2pfl import ExperimentConfig, simulate
from p2pfl.consortium.rehearsal import rehearse
from p2pfl.report import draw_report

# multi-process runs: skipped by `make test-fast`
pytestmark = pytest.mark.slow

MEMBERS = ["charite", "karolinska", "st-marys", "hopkins", "sickkids"]
ROUNDS = 6


def write_description(path):
    members = "\n".join(
        f'[[members]]\nname = "{name}"\nhost = "placeholder"\nport = {7000 + i}\n'
        for i, name in enumerate(MEMBERS)
    )
    path.write_text(
        'name = "rehearsal"\ntopology = "ring"\nseed = 0\n[training]\n'
        f"rounds = {ROUNDS}\nround_timeout = 60.0\n"
        'learner = "p2pfl.examples.bundled:build_learner"\nmetrics = ["recall"]\n'
        'learner_args = { dataset = "digits", partition = "dirichlet:0.5", nodes = 5 }\n' + members
    )


async def test_five_curve_processes_reach_the_simulators_accuracy(tmp_path):
    description = tmp_path / "consortium.toml"
    write_description(description)
    result = rehearse(description, tmp_path / "run", timeout=300)
    assert result.returncodes == dict.fromkeys(MEMBERS, 0)
    for name in MEMBERS:
        log = (tmp_path / "run" / "logs" / f"{name}.log").read_text()
        assert "(CurveZMQ)" in log and "insecure" not in log
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds_completed"] == ROUNDS

    simulated = await simulate(
        ExperimentConfig(nodes=5, topology="ring", partition="dirichlet:0.5", rounds=ROUNDS)
    )
    expected = {
        MEMBERS[int(row["node"])]: row["test_accuracy"]
        for row in simulated.rows if row["round"] == ROUNDS - 1
    }
    for name in MEMBERS:
        assert abs(summary["accuracy_by_member"][name] - expected[name]) <= 0.01, name
    assert summary["mean_accuracy"] > 0.85
    # the merged metrics are what `p2pfl report` reads
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5 * ROUNDS
    # [training] metrics reach every member's rows and the summary
    assert all(f"recall_{k}" in json.loads(line) for line in lines for k in range(10))
    assert set(summary["metrics"]) == {f"recall_{k}" for k in range(10)}
    # the plots name the deployed members and the run
    assert summary["members"] == MEMBERS and summary["consortium"] == "rehearsal"
    figures = draw_report(tmp_path / "run")
    title = figures["accuracy.png"].get_suptitle()
    assert title.startswith("consortium rehearsal: " + ", ".join(MEMBERS)) and "ring" in title
    legend = figures["accuracy.png"].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [*MEMBERS, "mean over nodes"]
    assert "metrics.png" in figures


async def test_secure_aggregation_across_processes_matches_the_simulator(tmp_path):
    description = tmp_path / "consortium.toml"
    members = MEMBERS[:4]
    description.write_text(
        'name = "secure"\ntopology = "complete"\nseed = 0\n[training]\nrounds = 3\n'
        "round_timeout = 60.0\nsecure_aggregation = true\n"
        'learner = "p2pfl.examples.bundled:build_learner"\n'
        'learner_args = { dataset = "digits", partition = "iid", nodes = 4 }\n'
        + "\n".join(f'[[members]]\nname = "{n}"\nhost = "x"\nport = {7000 + i}\n' for i, n in enumerate(members))
    )
    result = rehearse(description, tmp_path / "run", timeout=300)
    assert result.returncodes == dict.fromkeys(members, 0)
    simulated = await simulate(
        ExperimentConfig(nodes=4, topology="complete", partition="iid", rounds=3)
    )
    expected = {members[int(r["node"])]: r["test_accuracy"] for r in simulated.rows if r["round"] == 2}
    for name in members:
        # masked sums in fixed point: the same models up to 2^-32 per weight
        assert abs(result.summary["accuracy_by_member"][name] - expected[name]) <= 0.01, name
    for name in members:
        rows = [json.loads(line) for line in
                (tmp_path / "run" / "bundles" / name / "state" / "metrics.jsonl").read_text().splitlines()]
        assert all(len(row["received_from"]) == 3 for row in rows)
        # masked models travel as 64-bit integers: twice the float32 model per neighbour
        model_bytes = 4 * (64 * 128 + 128 + 128 * 10 + 10)
        assert all(row["bytes_sent"] >= 3 * 2 * model_bytes for row in rows)
