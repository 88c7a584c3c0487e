"""``p2pfl report``'s figures, inspected as matplotlib objects: traffic from 0 with both
lines visible, titles that say which run, member names, the learners' own metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from p2pfl.report import draw_report, write_report

NODES = 4
ROUNDS = 5
SENT = 1_240_000  # constant per round: the old plot zoomed into 1.18-1.30 MB around it


def write_run(directory: Path, summary: dict, names: list[str] | None = None, metrics: bool = False) -> None:
    names = names or [str(i) for i in range(NODES)]
    rows = []
    for r in range(ROUNDS):
        for i, name in enumerate(names):
            row = {"node": name, "round": r, "test_accuracy": 0.5 + 0.05 * r + 0.01 * i, "test_loss": 1.0,
                   "train_loss": 1.0, "consensus_distance": 0.1 / (r + 1), "bytes_sent": SENT,
                   "bytes_received": SENT, "epsilon": None}
            if metrics:
                row.update({"auc": 0.8 + 0.02 * r, "recall_0": 0.7, "recall_1": 0.9})
            rows.append(row)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (directory / "summary.json").write_text(json.dumps(summary))


SIMULATION = {
    "nodes": NODES, "rounds": ROUNDS, "mode": "sync", "topology": "torus:2x2",
    "config": {"dataset": "breast_cancer", "topology": "torus:2x2", "rounds": ROUNDS, "aggregator": "mean"},
}


def test_traffic_starts_at_zero_and_shows_sent_and_received_apart(tmp_path: Path) -> None:
    write_run(tmp_path, SIMULATION)
    fig = draw_report(tmp_path)["bytes.png"]
    traffic, versus = fig.axes
    fig.canvas.draw()
    assert traffic.get_ylim()[0] == 0
    assert versus.get_xlim()[0] == 0
    sent, received = traffic.get_lines()
    # equal numbers, yet both visible: other style, other marker, other colour
    assert list(sent.get_ydata()) == list(received.get_ydata())
    assert sent.get_linestyle() != received.get_linestyle()
    assert sent.get_marker() != received.get_marker()
    assert sent.get_color() != received.get_color()
    assert [t.get_text() for t in traffic.get_legend().get_texts()] == [
        "sent (mean per node)", "received (mean per node)"]
    # cumulative per node: a constant 1.24 MB per round adds up to 5 x 1.24 MB
    assert "MB" in traffic.get_ylabel()
    assert sent.get_ydata()[-1] == pytest.approx(ROUNDS * SENT / 1e6)


def test_every_title_says_which_run(tmp_path: Path) -> None:
    write_run(tmp_path, SIMULATION, metrics=True)
    figures = draw_report(tmp_path)
    assert set(figures) == {"accuracy.png", "consensus.png", "bytes.png", "metrics.png"}
    for name, fig in figures.items():
        title = fig.get_suptitle()
        assert title == f"torus:2x2, breast_cancer, {NODES} nodes, sync, {ROUNDS} rounds", name


def test_a_rehearsals_plots_name_its_members(tmp_path: Path) -> None:
    members = ["charite", "karolinska", "hopkins", "sickkids"]
    summary = {"consortium": "hospitals", "members": members, "topology": "ring", "rounds": ROUNDS,
               "dataset": "digits", "nodes": 4, "consensus_distance": 0.01}
    write_run(tmp_path, summary, names=members)
    figures = draw_report(tmp_path)
    title = figures["accuracy.png"].get_suptitle()
    assert title.startswith("consortium hospitals: charite, karolinska, hopkins, sickkids")
    assert "ring" in title and "digits" in title
    ax = figures["accuracy.png"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [*members, "mean over nodes"]
    assert "member" in ax.get_title()


def test_user_metrics_get_a_panel_each_and_classes_share_one(tmp_path: Path) -> None:
    write_run(tmp_path, SIMULATION, metrics=True)
    fig = draw_report(tmp_path)["metrics.png"]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["auc", "recall per class (mean over nodes)"]
    assert [t.get_text() for t in panels[1].get_legend().get_texts()] == ["class 0", "class 1"]


def test_a_run_without_a_summary_still_has_a_title_and_writes_the_pngs(tmp_path: Path) -> None:
    write_run(tmp_path, {})
    (tmp_path / "summary.json").unlink()
    assert draw_report(tmp_path)["accuracy.png"].get_suptitle() == f"{NODES} nodes, {ROUNDS} rounds"
    written = write_report(tmp_path, tmp_path / "plots")
    assert [p.name for p in written] == ["accuracy.png", "consensus.png", "bytes.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_overwrite_clears_every_plot_the_report_can_draw() -> None:
    """--overwrite removes the old run's plots by name: the list must cover what report draws."""
    import inspect

    from p2pfl import report
    from p2pfl.simulation.outputs import PLOTS

    drawn = set(re.findall(r'"(\w+\.png)"', inspect.getsource(report)))
    assert drawn and drawn <= set(PLOTS)


def test_comparison_puts_each_run_on_accuracy_against_cumulative_bytes(tmp_path: Path) -> None:
    from p2pfl.report_compare import draw_comparison

    write_run(tmp_path / "plain", SIMULATION)
    write_run(tmp_path / "int8", {**SIMULATION, "compress": "int8"})
    rows = [json.loads(line) for line in (tmp_path / "int8" / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # a quarter of the bytes
        row["bytes_sent"] = SENT // 4
    (tmp_path / "int8" / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    fig = draw_comparison([tmp_path / "plain", tmp_path / "int8"])
    per_round, versus = fig.axes
    assert versus.get_xscale() == "log"
    labels = [line.get_label() for line in versus.get_lines()]
    assert labels == ["plain (float32, plain, torus:2x2)", "int8 (int8, plain, torus:2x2)"]
    plain, int8 = versus.get_lines()
    assert list(plain.get_xdata()) == pytest.approx([SENT * (r + 1) / 1e6 for r in range(ROUNDS)])
    assert list(int8.get_xdata()) == pytest.approx([SENT // 4 * (r + 1) / 1e6 for r in range(ROUNDS)])
    assert list(int8.get_ydata()) == pytest.approx([0.5 + 0.05 * r + 0.015 for r in range(ROUNDS)])
    assert fig.get_suptitle() == "torus:2x2, breast_cancer, 4 nodes, sync, 5 rounds"  # both runs' setting


def test_report_of_several_runs_needs_a_folder_for_the_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from p2pfl.cli.main import main

    write_run(tmp_path / "a", SIMULATION)
    write_run(tmp_path / "b", SIMULATION)
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b")]) != 0
    assert "give --to FOLDER for compare.png" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--to", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000
