"""One figure comparing runs: mean accuracy against rounds and against cumulative bytes
sent per node, one line per run. This is the plot codecs and gossip algorithms are
judged by: which run reaches an accuracy with the fewest bytes on the wire.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pfl.errors import ConfigError
from p2pfl.report import accuracy_and_traffic, make_folder, read_metrics, read_summary, run_title

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["compare_label", "draw_comparison", "write_comparison"]

COMPARE_FILE = "compare.png"


def compare_label(directory: Path, summary: dict[str, Any]) -> str:
    """A run's legend entry: its folder, then how its models travelled."""
    found = summary.get("config")
    config: dict[str, Any] = found if isinstance(found, dict) else {}
    codec = summary.get("compress") or config.get("compress") or "float32"
    gossip = summary.get("gossip") or config.get("gossip") or "plain"
    topology = summary.get("topology") or config.get("topology") or ""
    if isinstance(topology, str) and "/" in topology:
        topology = Path(topology).name
    return f"{directory.name} ({', '.join(str(p) for p in (codec, gossip, topology) if p)})"


def draw_comparison(directories: list[Path]) -> Figure:
    """Accuracy against rounds (left) and against cumulative MB sent per node on a log
    axis (right: codecs differ by orders of magnitude), one line per run."""
    from matplotlib.figure import Figure

    runs = [(d, read_metrics(d), read_summary(d)) for d in directories]
    titles = {run_title(_without_codec(summary), rows) for _, rows, summary in runs}
    fig = Figure(figsize=(13.0, 5.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    fig.suptitle(titles.pop() if len(titles) == 1 else f"{len(runs)} runs", fontsize=10)
    for directory, rows, summary in runs:
        rounds, accuracy, sent = accuracy_and_traffic(rows)
        label = compare_label(directory, summary)
        line, = left.plot(rounds, accuracy, lw=1.5, label=label)
        right.plot([s / 1e6 for s in sent], accuracy, "-o", ms=3, lw=1.5, color=line.get_color(), label=label)
    left.set(xlabel="round", ylabel="test accuracy (mean over nodes)", title="Accuracy per round")
    right.set(xlabel="cumulative MB sent per node (log)", ylabel="test accuracy (mean over nodes)",
              title="Accuracy against traffic")
    right.set_xscale("log")
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="lower right", fontsize=8)
    return fig


def write_comparison(directories: list[Path], to: Path) -> Path:
    """Draw :func:`draw_comparison` into ``to/compare.png``; returns its path."""
    if len(directories) < 2:
        raise ConfigError("directory", "a comparison needs at least two run directories")
    make_folder(to)
    path = to / COMPARE_FILE
    draw_comparison(directories).savefig(path, dpi=110)
    return path


def _without_codec(summary: dict[str, Any]) -> dict[str, Any]:
    """The run's setting apart from how models travelled (what the legend says)."""
    found = summary.get("config")
    config = {k: v for k, v in found.items() if k not in _TRAVEL} if isinstance(found, dict) else {}
    return {**{k: v for k, v in summary.items() if k not in _TRAVEL}, "config": config}


_TRAVEL = ("compress", "gossip")
