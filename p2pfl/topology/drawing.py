"""Render a topology to an image file (PNG, SVG, PDF ...: the suffix decides)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import networkx as nx

from p2pfl.topology.model import Topology

__all__ = ["draw_topology"]

LABEL_LIMIT = 40
"""Label nodes with their names only up to this many nodes; beyond, labels overlap."""


def draw_topology(topology: Topology, path: str | os.PathLike[str]) -> None:
    """Draw ``topology`` to an image file, creating its folder if need be.

    Regular and ring-like graphs (all degrees equal, or at most 2) use a circular
    layout; others a spring layout with a fixed seed, so the picture is reproducible.

    Args:
        topology: the topology to draw.
        path: destination file; its suffix picks the format (``.png``, ``.svg``, ``.pdf``
            ...; PNG when it has none).
    """
    # Imported lazily: matplotlib is slow to import and only this function needs it.
    import matplotlib

    # Pick the headless backend before anything imports pyplot (nodes run without a
    # display). If the caller already imported pyplot, leave their backend alone:
    # switching would close their figures. We never use pyplot's figure manager.
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    graph = topology.graph
    degrees = {d for _, d in graph.degree()}
    if len(degrees) == 1 or max(degrees) <= 2:
        pos = nx.circular_layout(graph)
    else:
        pos = nx.spring_layout(graph, seed=0)
    n = topology.n
    size = min(12.0, 4.0 + 0.15 * n)
    # A bare Figure (not plt.figure) is never registered with pyplot, so nothing leaks.
    fig = Figure(figsize=(size, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(f"{topology.spec} ({n} nodes, {graph.number_of_edges()} edges)")
    node_size = 300 if n <= LABEL_LIMIT else max(20, 6000 // n)
    nx.draw_networkx_edges(graph, pos, ax=ax, alpha=0.5)
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_size=node_size, node_color="#4c8bf5")
    if n <= LABEL_LIMIT:
        labels = dict(enumerate(topology.names))
        # clip_on=False: long names at the rim would otherwise be cut at the axes edge.
        nx.draw_networkx_labels(graph, pos, labels=labels, ax=ax, font_size=8, clip_on=False)
    ax.margins(0.08)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=path.suffix[1:].lower() or "png", dpi=100, bbox_inches="tight")
    fig.clear()
