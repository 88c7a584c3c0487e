"""PNG plots of a run's ``metrics.jsonl``: accuracy per node, consensus distance, bytes
(and accuracy against ε for a differentially private run)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from p2pfl.errors import ConfigError


def read_metrics(directory: Path) -> list[dict[str, Any]]:
    """The rows of ``directory/metrics.jsonl``."""
    path = directory / "metrics.jsonl"
    if not path.exists():
        raise ConfigError("directory", f"{path} does not exist: give a simulation's --out directory")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError("directory", f"{path}:{number} is not JSON ({exc.msg})") from None
    if not rows:
        raise ConfigError("directory", f"{path} holds no rows: did the run finish a round?")
    return rows


def write_report(directory: Path, to: Path | None = None) -> list[Path]:
    """Draw ``accuracy.png``, ``consensus.png`` and ``bytes.png``; returns their paths.

    Rows that carry an ``epsilon`` (a differentially private run) add
    ``accuracy_vs_epsilon.png``.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    rows = read_metrics(directory)
    to = to or directory
    try:
        to.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission ...
        raise ConfigError("to", f"cannot make the folder {to} ({exc.strerror or exc}); give a folder you can write to") from None
    by_node: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_node[row["node"]].append(row)
        by_round[row["round"]].append(row)
    rounds = sorted(by_round)
    written = []

    fig, ax = plt.subplots(figsize=(8, 5))
    for node_rows in by_node.values():
        node_rows.sort(key=lambda r: r["round"])
        ax.plot([r["round"] for r in node_rows], [r["test_accuracy"] for r in node_rows],
                lw=0.8, alpha=0.5)
    mean = [_mean(r["test_accuracy"] for r in by_round[k]) for k in rounds]
    ax.plot(rounds, mean, color="black", lw=2, label="mean over nodes")
    ax.set(xlabel="round", ylabel="test accuracy", title=f"Accuracy per node ({len(by_node)} nodes)")
    _whole_rounds(ax)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    written.append(_save(fig, to / "accuracy.png", plt))

    fig, ax = plt.subplots(figsize=(8, 5))
    consensus = [_mean(r["consensus_distance"] for r in by_round[k]) for k in rounds]
    ax.semilogy(rounds, [max(c, 1e-30) for c in consensus])
    ax.set(xlabel="round", ylabel="mean squared distance to average model", title="Consensus distance")
    _whole_rounds(ax)
    ax.grid(alpha=0.3, which="both")
    written.append(_save(fig, to / "consensus.png", plt))

    fig, ax = plt.subplots(figsize=(8, 5))
    sent = [sum(r["bytes_sent"] for r in by_round[k]) / 1e6 for k in rounds]
    received = [sum(r["bytes_received"] for r in by_round[k]) / 1e6 for k in rounds]
    ax.plot(rounds, sent, label="sent (all nodes)")
    ax.plot(rounds, received, "--", label="received (all nodes)")
    ax.set(xlabel="round", ylabel="MB per round", title="Traffic")
    _whole_rounds(ax)
    ax.legend()
    ax.grid(alpha=0.3)
    written.append(_save(fig, to / "bytes.png", plt))

    if any(r.get("epsilon") is not None for r in rows):  # a differentially private run
        written.append(_accuracy_vs_epsilon(by_node, to / "accuracy_vs_epsilon.png", plt))
    return written


def _whole_rounds(ax: Any) -> None:
    """Round ticks at whole numbers: a short run would otherwise show rounds 0.25, 0.5, ..."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _accuracy_vs_epsilon(by_node: dict[str, list[dict[str, Any]]], path: Path, plt: Any) -> Path:
    """Test accuracy against the privacy spent so far: one line per node, its end marked."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for node_rows in by_node.values():
        spent = [r for r in sorted(node_rows, key=lambda r: r["round"]) if r.get("epsilon") is not None]
        if not spent:  # a node without DP in a mixed run has nothing to plot
            continue
        line, = ax.plot([r["epsilon"] for r in spent], [r["test_accuracy"] for r in spent], lw=0.8, alpha=0.5)
        ax.plot(spent[-1]["epsilon"], spent[-1]["test_accuracy"], "o", color=line.get_color())
    ax.set(xlabel="epsilon spent (cumulative)", ylabel="test accuracy",
           title=f"Accuracy vs privacy spent ({len(by_node)} nodes; dots: last round)")
    ax.grid(alpha=0.3)
    return _save(fig, path, plt)


def _mean(values: Any) -> float:
    finite = [v for v in values if v is not None]
    return sum(finite) / len(finite) if finite else float("nan")


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
