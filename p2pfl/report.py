"""PNG plots of a run's ``metrics.jsonl``: accuracy per node, consensus distance, traffic,
the learners' own metrics (and accuracy against ε for a differentially private run).

Every figure's title says which run it is (topology, dataset, nodes, mode, rounds and the
codec from ``summary.json``; a rehearsal's consortium and members), and a run of a few nodes (any
rehearsal) names each node's line, so a deployed member finds its own.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pfl.errors import ConfigError
from p2pfl.node.records import user_metric_keys

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "accuracy_and_traffic", "draw_report", "make_folder", "read_metrics", "read_summary", "run_title", "write_report",
]

NAMED_LINES = 12  # up to this many nodes, each node's line carries its name in the legend
_PER_CLASS = re.compile(r"^(?P<metric>.+)_(?P<index>\d+)$")


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


def read_summary(directory: Path) -> dict[str, Any]:
    """``directory/summary.json``, or nothing if the run did not write one (interrupted)."""
    try:
        summary = json.loads((directory / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return summary if isinstance(summary, dict) else {}


def run_title(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Which run: ``ring, digits, 16 nodes, sync, 40 rounds``, or for a rehearsal
    ``consortium hospitals: charite, karolinska, ... (ring, digits, 6 rounds)``."""
    found = summary.get("config")
    config: dict[str, Any] = found if isinstance(found, dict) else {}
    nodes = summary.get("nodes") or len({row["node"] for row in rows})
    topology = summary.get("topology") or config.get("topology")
    if isinstance(topology, str) and "/" in topology:  # a topology file: its name is enough
        topology = Path(topology).name
    dataset = summary.get("dataset") or config.get("dataset")
    mode = summary.get("mode")
    rounds = summary.get("rounds") or config.get("rounds") or 1 + max(row["round"] for row in rows)
    details = [str(part) for part in (topology, dataset) if part]
    if summary.get("members"):
        members = [str(m) for m in summary["members"]]
        shown = ", ".join(members[:6]) + (f" and {len(members) - 6} more" if len(members) > 6 else "")
        details += [f"{rounds} rounds"]
        return f"consortium {summary.get('consortium', '')}: {shown} ({', '.join(details)})".replace("  ", " ")
    details += [f"{nodes} nodes", *([mode] if mode else []), f"{rounds} rounds"]
    extras = [
        f"{key} {config[key]}" for key in ("aggregator", "attack", "dp")
        if config.get(key) and config.get(key) != "mean"
    ]
    codec = summary.get("compress") or config.get("compress")
    if codec:  # runs compared by codec: the plot says which
        extras.append(f"compress {codec}")
    gossip = summary.get("gossip") or config.get("gossip")
    if gossip and gossip != "plain":  # plain is what runs without the key too
        extras.append(f"gossip {gossip}")
    return ", ".join(details + extras)


def draw_report(directory: Path) -> dict[str, Figure]:
    """The report's figures by file name: ``accuracy.png``, ``consensus.png``,
    ``bytes.png``, then ``metrics.png`` (rows with the learners' own metrics) and
    ``accuracy_vs_epsilon.png`` (rows with an ``epsilon``, a differentially private run)."""
    return _draw(read_metrics(directory), read_summary(directory))


def write_report(directory: Path, to: Path | None = None) -> list[Path]:
    """Draw the figures of :func:`draw_report` into ``to`` (default: ``directory``);
    returns their paths."""
    rows = read_metrics(directory)
    to = to or directory
    make_folder(to)
    written = []
    for name, fig in _draw(rows, read_summary(directory)).items():
        fig.savefig(to / name, dpi=110)
        written.append(to / name)
    return written


def make_folder(to: Path) -> None:
    """Make the folder the PNGs go to (field ``to``: the ``--to`` option)."""
    try:
        to.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission ...
        raise ConfigError("to", f"cannot make the folder {to} ({exc.strerror or exc}); give a folder you can write to") from None


def accuracy_and_traffic(rows: list[dict[str, Any]]) -> tuple[list[int], list[float], list[float]]:
    """The rounds, the mean test accuracy over the nodes in each, and the bytes each
    node sent up to it (mean over the nodes): the curves runs are compared by."""
    by_node, by_round = _group(rows)
    rounds = sorted(by_round)
    accuracy = [_mean(r["test_accuracy"] for r in by_round[k]) for k in rounds]
    return rounds, accuracy, _cumulative_mean(by_node, rounds, "bytes_sent")


def _group(rows: list[dict[str, Any]]) -> tuple[dict[str, list[dict[str, Any]]], dict[int, list[dict[str, Any]]]]:
    """The rows by node (each in round order) and by round."""
    by_node: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_node[row["node"]].append(row)
        by_round[row["round"]].append(row)
    for node_rows in by_node.values():
        node_rows.sort(key=lambda r: r["round"])
    return by_node, by_round


def _draw(rows: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Figure]:
    title = run_title(summary, rows)
    by_node, by_round = _group(rows)
    members = bool(summary.get("members"))  # a rehearsal: the nodes are the deployed members
    named = members or len(by_node) <= NAMED_LINES
    figures = {
        "accuracy.png": _accuracy(by_node, by_round, named, title, "member" if members else "node"),
        "consensus.png": _consensus(by_round, summary, title),
        "bytes.png": _traffic(by_node, by_round, title),
    }
    metrics = user_metric_keys(rows)
    if metrics:
        figures["metrics.png"] = _metrics(metrics, by_node, by_round, named, title)
    if any(r.get("epsilon") is not None for r in rows):  # a differentially private run
        figures["accuracy_vs_epsilon.png"] = _accuracy_vs_epsilon(by_node, named, title)
    return figures


# --- the figures ------------------------------------------------------------------------


def _figure(title: str, ncols: int = 1, nrows: int = 1, width: float = 8.0) -> tuple[Figure, list[Axes]]:
    # a bare Figure, not pyplot: nothing global to close, and no display is ever needed
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 5 * nrows if nrows > 1 else 5), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    fig.suptitle(title, fontsize=10)
    return fig, axes


def _accuracy(by_node: dict[str, list[dict[str, Any]]], by_round: dict[int, list[dict[str, Any]]],
              named: bool, title: str, kind: str) -> Figure:
    fig, (ax,) = _figure(title)
    for node, node_rows in by_node.items():
        ax.plot([r["round"] for r in node_rows], [_number(r["test_accuracy"]) for r in node_rows],
                lw=0.8, alpha=0.6, label=_label(node) if named else None)
    rounds = sorted(by_round)
    ax.plot(rounds, [_mean(r["test_accuracy"] for r in by_round[k]) for k in rounds],
            color="black", lw=2, label="mean over nodes")
    ax.set(xlabel="round", ylabel="test accuracy", title=f"Test accuracy per {kind} ({len(by_node)} {kind}s)")
    _whole_rounds(ax)
    _legend(ax, named, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def _consensus(by_round: dict[int, list[dict[str, Any]]], summary: dict[str, Any], title: str) -> Figure:
    fig, (ax,) = _figure(title)
    rounds = sorted(by_round)
    consensus = [_mean(r.get("consensus_distance") for r in by_round[k]) for k in rounds]
    ax.set(xlabel="round", ylabel="mean squared distance to average model", title="Consensus distance")
    if any(math.isfinite(c) for c in consensus):
        ax.semilogy(rounds, [max(c, 1e-30) if math.isfinite(c) else math.nan for c in consensus])
        ax.grid(alpha=0.3, which="both")
    else:  # a rehearsal: per-round models stay with their owners
        final = summary.get("consensus_distance")
        ax.text(0.5, 0.5, "not measured per round: each member's models stay with it"
                + (f"\nfinal models' distance: {final:.3g}" if isinstance(final, (int, float)) else ""),
                ha="center", va="center", transform=ax.transAxes)
        ax.set(xticks=[], yticks=[])
        return fig
    _whole_rounds(ax)
    return fig


def _traffic(by_node: dict[str, list[dict[str, Any]]], by_round: dict[int, list[dict[str, Any]]],
             title: str) -> Figure:
    """Cumulative model traffic per node against rounds, and accuracy against it: the two
    views that compare one codec or topology with another. Both axes start at 0."""
    fig, (left, right) = _figure(title, ncols=2, width=12.0)
    rounds = sorted(by_round)
    sent, received = _cumulative_mean(by_node, rounds, "bytes_sent"), _cumulative_mean(by_node, rounds, "bytes_received")
    scale, unit = _byte_unit(max(sent + received, default=0.0))
    marks = max(1, len(rounds) // 12)
    # received is drawn dashed over sent with other markers: where they coincide both show
    left.plot(rounds, [s / scale for s in sent], "-o", color="tab:blue", lw=2, ms=5, markevery=marks,
              label="sent (mean per node)")
    left.plot(rounds, [r / scale for r in received], "--x", color="tab:orange", lw=1.5, ms=7, markevery=marks,
              label="received (mean per node)")
    left.set(xlabel="round", ylabel=f"cumulative {unit} per node", title="Model traffic so far")
    left.set_ylim(bottom=0)
    _whole_rounds(left)
    left.legend(loc="upper left")
    left.grid(alpha=0.3)
    accuracy = [_mean(r["test_accuracy"] for r in by_round[k]) for k in rounds]
    right.plot([s / scale for s in sent], accuracy, "-o", color="black", lw=1.5, ms=4, markevery=marks)
    right.set(xlabel=f"cumulative {unit} sent per node", ylabel="test accuracy (mean over nodes)",
              title="Accuracy against traffic")
    right.set_xlim(left=0)
    right.grid(alpha=0.3)
    return fig


def _metrics(keys: list[str], by_node: dict[str, list[dict[str, Any]]], by_round: dict[int, list[dict[str, Any]]],
             named: bool, title: str) -> Figure:
    """One panel per metric: each node's line and the mean; per-class values (``recall_0``,
    ``recall_1``, ...) share a panel, one mean line per class."""
    panels: dict[str, list[str]] = {}
    for key in keys:
        match = _PER_CLASS.match(key)
        group = match.group("metric") if match else key
        panels.setdefault(group, []).append(key)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(title, ncols=ncols, nrows=nrows, width=4.5 * ncols + 1)
    rounds = sorted(by_round)
    for ax, (group, members) in zip(axes, panels.items(), strict=False):
        if len(members) == 1 and members[0] == group:  # one number per node and round
            for node, node_rows in by_node.items():
                ax.plot([r["round"] for r in node_rows], [_number(r.get(group)) for r in node_rows],
                        lw=0.8, alpha=0.6, label=_label(node) if named else None)
            ax.plot(rounds, [_mean(r.get(group) for r in by_round[k]) for k in rounds],
                    color="black", lw=2, label="mean over nodes")
            ax.set(title=group)
            _legend(ax, named, loc="lower right", fontsize=7)
        else:  # per class: the mean over nodes of each class
            for key in members:
                ax.plot(rounds, [_mean(r.get(key) for r in by_round[k]) for k in rounds], lw=1.2,
                        label=f"class {key[len(group) + 1:]}")
            ax.set(title=f"{group} per class (mean over nodes)")
            ax.legend(loc="lower right", fontsize=7, ncols=2 if len(members) > 5 else 1)
        ax.set(xlabel="round")
        _whole_rounds(ax)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return fig


def _accuracy_vs_epsilon(by_node: dict[str, list[dict[str, Any]]], named: bool, title: str) -> Figure:
    """Test accuracy against the privacy spent so far: one line per node, its end marked."""
    fig, (ax,) = _figure(title)
    for node, node_rows in by_node.items():
        spent = [r for r in node_rows if r.get("epsilon") is not None]
        if not spent:  # a node without DP in a mixed run has nothing to plot
            continue
        line, = ax.plot([r["epsilon"] for r in spent], [_number(r["test_accuracy"]) for r in spent],
                        lw=0.8, alpha=0.5, label=_label(node) if named else None)
        ax.plot(spent[-1]["epsilon"], _number(spent[-1]["test_accuracy"]), "o", color=line.get_color())
    ax.set(xlabel="epsilon spent (cumulative)", ylabel="test accuracy",
           title=f"Accuracy vs privacy spent ({len(by_node)} nodes; dots: last round)")
    _legend(ax, named, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


# --- helpers ----------------------------------------------------------------------------


def _cumulative_mean(by_node: dict[str, list[dict[str, Any]]], rounds: list[int], key: str) -> list[float]:
    """Bytes each node moved up to each round, averaged over the nodes (a node that
    skipped a round, async or crashed, keeps its total)."""
    totals = []
    for node_rows in by_node.values():
        per_round = {r["round"]: r.get(key) or 0 for r in node_rows}
        running, total = 0.0, []
        for k in rounds:
            running += per_round.get(k, 0)
            total.append(running)
        totals.append(total)
    return [sum(t[i] for t in totals) / len(totals) for i in range(len(rounds))] if totals else []


def _label(node: str) -> str:
    """A simulation's nodes are numbered: ``node 3`` reads better than ``3`` in a legend."""
    return f"node {node}" if node.isdigit() else node


def _byte_unit(largest: float) -> tuple[float, str]:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if largest >= scale:
            return scale, unit
    return 1.0, "bytes"


def _legend(ax: Axes, named: bool, **options: Any) -> None:
    if not ax.get_legend_handles_labels()[1]:
        return
    if named:  # each node's name, and the mean
        ax.legend(ncols=2 if len(ax.get_lines()) > 7 else 1, **{"fontsize": 8, **options})
    else:
        ax.legend(**options)


def _whole_rounds(ax: Axes) -> None:
    """Round ticks at whole numbers: a short run would otherwise show rounds 0.25, 0.5, ..."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _mean(values: Any) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")
