"""Numbers that tell how well a topology mixes: spectral gap, degrees, diameter."""

from __future__ import annotations

from typing import Any

import networkx as nx
import numpy as np

from p2pfl.errors import TopologyError
from p2pfl.topology.drawing import draw_topology
from p2pfl.topology.mixing import SUM_TOL
from p2pfl.topology.model import Topology

__all__ = ["describe", "draw_topology", "format_description", "spectral_gap"]


def spectral_gap(w: np.ndarray) -> float:
    """Spectral gap ``1 - |lambda_2|`` of a symmetric mixing matrix.

    ``|lambda_2|`` is the second-largest eigenvalue modulus; consensus error shrinks
    roughly like ``|lambda_2|^t``, so a larger gap means faster mixing (1 for a
    complete graph, near 0 for a long ring).

    Args:
        w: symmetric ``(n, n)`` mixing matrix.

    Returns:
        The gap in ``[0, 1]`` for a valid doubly stochastic matrix (1.0 when ``n == 1``).

    Raises:
        TopologyError: if ``w`` is not square or not symmetric.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] == 0:
        raise TopologyError(f"spectral_gap needs a non-empty square matrix, got shape {w.shape}")
    if np.abs(w - w.T).max() > SUM_TOL:
        raise TopologyError("spectral_gap needs a symmetric matrix; eigvalsh would silently use one triangle")
    if w.shape[0] == 1:
        return 1.0
    moduli = np.sort(np.abs(np.linalg.eigvalsh(w)))[::-1]
    return float(1.0 - moduli[1])


def describe(topology: Topology) -> dict[str, Any]:
    """Summarise a topology as JSON-friendly data.

    Returns:
        A dict with ``spec``, ``nodes``, ``edges``, ``degree`` (``min``, ``max``,
        ``mean``), ``diameter``, ``spectral_gap``, ``mixing``, ``node_names`` and
        ``edge_list`` (``[u, v]`` index pairs, ``u < v``, sorted).
    """
    graph = topology.graph
    degrees = [d for _, d in graph.degree()]
    return {
        "spec": topology.spec,
        "nodes": topology.n,
        "edges": graph.number_of_edges(),
        "degree": {
            "min": min(degrees),
            "max": max(degrees),
            "mean": float(np.mean(degrees)),
        },
        "diameter": nx.diameter(graph) if topology.n > 1 else 0,
        "spectral_gap": spectral_gap(topology.mixing),
        "mixing": topology.mixing_method,
        "node_names": topology.names,
        "edge_list": sorted([min(u, v), max(u, v)] for u, v in graph.edges()),
    }


def format_description(desc: dict[str, Any]) -> str:
    """Render :func:`describe` output as human-readable lines."""
    degree = desc["degree"]
    names = desc["node_names"]
    shown = ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
    return "\n".join(
        [
            f"topology      {desc['spec']}",
            f"nodes         {desc['nodes']}",
            f"edges         {desc['edges']}",
            f"degree        min {degree['min']}, max {degree['max']}, mean {degree['mean']:.2f}",
            f"diameter      {desc['diameter']}",
            f"mixing        {desc['mixing']}",
            f"spectral gap  {desc['spectral_gap']:.4f}",
            f"names         {shown}",
        ]
    )
