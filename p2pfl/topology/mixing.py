"""Mixing matrices: how much weight each node gives its neighbours when averaging.

All methods return a symmetric, doubly stochastic matrix that is positive only on
edges and the diagonal, which is what makes decentralised averaging converge to the
global mean on a connected graph.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import numpy as np

from p2pfl.errors import TopologyError
from p2pfl.topology.spec import normalise_name

__all__ = [
    "MIXING_METHODS",
    "check_connected",
    "check_spectral_gap",
    "max_degree_weights",
    "metropolis_hastings_weights",
    "mixing_matrix",
    "resolve_mixing_method",
    "validate_mixing",
    "weights_from_file",
]

NEGATIVE_TOL = 1e-12
"""Entries above ``-NEGATIVE_TOL`` count as nonnegative (round-off from ``1 - row sum``)."""
SUM_TOL = 1e-9
"""Absolute tolerance for symmetry and for row and column sums."""


def _who(graph: nx.Graph, i: int) -> str:
    """``node 3`` or ``node 3 ('charite')`` when the name says more than the index."""
    name = graph.nodes[i].get("name", str(i)) if i in graph else str(i)
    return f"node {i}" if name == str(i) else f"node {i} ({name!r})"


def _fill_diagonal(w: np.ndarray) -> np.ndarray:
    # The self weight absorbs whatever the neighbours do not take, so rows sum to 1.
    np.fill_diagonal(w, 0.0)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def metropolis_hastings_weights(graph: nx.Graph) -> np.ndarray:
    """Metropolis–Hastings weights: ``W_ij = 1 / (1 + max(d_i, d_j))`` on each edge.

    Needs only the two endpoint degrees, so every node can compute its own row locally.
    """
    n = graph.number_of_nodes()
    degree = dict(graph.degree())
    w = np.zeros((n, n), dtype=np.float64)
    for u, v in graph.edges():
        w[u, v] = w[v, u] = 1.0 / (1.0 + max(degree[u], degree[v]))
    return _fill_diagonal(w)


def max_degree_weights(graph: nx.Graph) -> np.ndarray:
    """Maximum-degree weights: ``W_ij = 1 / (1 + d_max)`` on every edge."""
    n = graph.number_of_nodes()
    d_max = max((d for _, d in graph.degree()), default=0)
    w = np.zeros((n, n), dtype=np.float64)
    for u, v in graph.edges():
        w[u, v] = w[v, u] = 1.0 / (1.0 + d_max)
    return _fill_diagonal(w)


def weights_from_file(graph: nx.Graph) -> np.ndarray:
    """Off-diagonal weights from each edge's ``weight`` attribute; diagonal = 1 − row sum.

    Raises:
        TopologyError: if an edge has no ``weight`` or a non-numeric one.
    """
    n = graph.number_of_nodes()
    w = np.zeros((n, n), dtype=np.float64)
    for u, v, data in graph.edges(data=True):
        if "weight" not in data:
            raise TopologyError(
                f"mixing='file' needs a 'weight' on every edge, but edge {_who(graph, u)} - {_who(graph, v)} "
                "has none; add weights to the file or use mixing='metropolis'"
            )
        try:
            value = float(data["weight"])
        except (TypeError, ValueError):
            raise TopologyError(
                f"edge {_who(graph, u)} - {_who(graph, v)} has weight {data['weight']!r}, expected a number"
            ) from None
        w[u, v] = w[v, u] = value
    return _fill_diagonal(w)


MIXING_METHODS: dict[str, Callable[[nx.Graph], np.ndarray]] = {
    "file": weights_from_file,
    "max-degree": max_degree_weights,
    "metropolis": metropolis_hastings_weights,
}

_ALIASES: dict[str, str] = {
    "metropolis-hastings": "metropolis",
    "mh": "metropolis",
    "uniform": "max-degree",
    "maxdegree": "max-degree",
    "weights": "file",
}


def resolve_mixing_method(method: str) -> str:
    """Canonical mixing method name for ``method`` or one of its aliases.

    Raises:
        TopologyError: listing the valid methods if ``method`` is unknown.
    """
    key = normalise_name(method)
    key = _ALIASES.get(key, key)
    if key not in MIXING_METHODS:
        raise TopologyError(
            f"unknown mixing method {method!r}; valid methods: metropolis (alias mh), "
            "max-degree (alias uniform), file (alias weights: edge 'weight' attributes)"
        )
    return key


def mixing_matrix(graph: nx.Graph, method: str = "metropolis") -> np.ndarray:
    """Build and validate the mixing matrix of ``graph``.

    Args:
        graph: undirected graph on ``0..n-1``.
        method: ``metropolis``, ``max-degree`` or ``file`` (or an alias).

    Returns:
        The ``(n, n)`` float64 matrix.

    Raises:
        TopologyError: for an unknown method or a matrix that fails :func:`validate_mixing`.
    """
    w = MIXING_METHODS[resolve_mixing_method(method)](graph)
    validate_mixing(w, graph)
    return w


def check_connected(graph: nx.Graph) -> None:
    """Raise unless ``graph`` is non-empty and connected.

    Raises:
        TopologyError: naming nodes that cannot reach each other.
    """
    if graph.number_of_nodes() == 0:
        raise TopologyError("the graph has no nodes; a topology needs at least one node")
    if nx.is_connected(graph):
        return
    parts = sorted((sorted(c) for c in nx.connected_components(graph)), key=lambda c: (-len(c), c[0]))
    isolated = [i for i in graph.nodes if graph.degree(i) == 0]
    detail = f"; {_who(graph, isolated[0])} has no edges" if isolated else ""
    raise TopologyError(
        f"the graph is not connected: {len(parts)} components of sizes {[len(p) for p in parts]}, "
        f"e.g. {_who(graph, parts[0][0])} cannot reach {_who(graph, parts[1][0])}{detail}; "
        "gossip averaging needs a connected graph, so add edges between the components"
    )


def validate_mixing(w: np.ndarray, graph: nx.Graph) -> None:
    """Check that ``w`` is a usable mixing matrix for ``graph``.

    Checks, in order: square, sized like the graph, finite, nonnegative, symmetric,
    rows and columns summing to 1, nonzero only on edges and the diagonal, the graph
    connected, and a positive spectral gap (see :func:`check_spectral_gap`).

    Raises:
        TopologyError: naming the first offending entry, row or column and its value.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise TopologyError(f"mixing matrix must be square, got shape {w.shape}")
    n = graph.number_of_nodes()
    if w.shape[0] != n:
        raise TopologyError(f"mixing matrix is {w.shape[0]}x{w.shape[0]} but the graph has {n} nodes")
    bad = np.argwhere(~np.isfinite(w))
    if bad.size:
        i, j = bad[0]
        raise TopologyError(f"mixing matrix entry W[{i},{j}] = {w[i, j]} is not finite")
    bad = np.argwhere(w < -NEGATIVE_TOL)
    if bad.size:
        i, j = bad[0]
        if i == j:
            off = float(w[i].sum() - w[i, i])
            raise TopologyError(
                f"mixing matrix self weight W[{i},{i}] = {w[i, i]:.6g} of {_who(graph, int(i))} is negative: "
                f"its neighbour weights sum to {off:.6g} > 1; they must sum to at most 1"
            )
        raise TopologyError(
            f"mixing matrix entry W[{i},{j}] = {w[i, j]:.6g} is negative; weights must be >= 0"
        )
    asym = np.abs(w - w.T)
    if asym.max(initial=0.0) > SUM_TOL:
        i, j = np.unravel_index(int(np.argmax(asym)), w.shape)
        raise TopologyError(
            f"mixing matrix is not symmetric: W[{i},{j}] = {w[i, j]:.6g} but W[{j},{i}] = {w[j, i]:.6g}"
        )
    for axis, kind in ((1, "row"), (0, "column")):
        sums = w.sum(axis=axis)
        wrong = np.flatnonzero(np.abs(sums - 1.0) > SUM_TOL)
        if wrong.size:
            k = int(wrong[0])
            raise TopologyError(
                f"mixing matrix {kind} {k} ({_who(graph, k)}) sums to {sums[k]:.12g}, must sum to 1 "
                "(the matrix must be doubly stochastic)"
            )
    support = np.abs(w) > NEGATIVE_TOL
    np.fill_diagonal(support, False)
    for i, j in np.argwhere(support):
        if not graph.has_edge(int(i), int(j)):
            raise TopologyError(
                f"mixing matrix entry W[{i},{j}] = {w[i, j]:.6g} is nonzero but {_who(graph, int(i))} and "
                f"{_who(graph, int(j))} are not linked; weights are allowed only on edges and the diagonal"
            )
    check_connected(graph)
    check_spectral_gap(w, graph)


def check_spectral_gap(w: np.ndarray, graph: nx.Graph) -> None:
    """Raise if the valid mixing matrix ``w`` has spectral gap 0 (gossip never converges).

    Decided exactly from which weights are positive, without an O(n^3) floating-point
    eigendecomposition: for a symmetric stochastic ``w``, eigenvalue 1 repeats iff the
    positive weights leave the nodes disconnected, and -1 is an eigenvalue iff they form
    a bipartite graph with no positive self weight (the models then swap back and forth).

    Raises:
        TopologyError: saying which of the two it is and how to fix the weights.
    """
    support = nx.Graph()
    support.add_nodes_from(range(w.shape[0]))
    support.add_edges_from((int(i), int(j)) for i, j in np.argwhere(w > NEGATIVE_TOL) if i <= j)
    gap_zero = "mixing matrix has spectral gap 0 (second-largest |eigenvalue| = 1)"
    if not nx.is_connected(support):
        part = min(nx.connected_components(support), key=lambda c: (len(c), min(c)))
        first = _who(graph, min(part))
        who = f"{first} exchanges" if len(part) == 1 else f"{first} and {len(part) - 1} more exchange"
        raise TopologyError(
            f"{gap_zero}: {who} nothing with the other nodes, as the edges between them "
            "have weight 0, so gossip never averages across; give those edges positive weights, "
            "e.g. use mixing='metropolis'"
        )
    if nx.is_bipartite(support):  # a positive self weight is a self-loop: never bipartite
        raise TopologyError(
            f"{gap_zero}: the positive weights form a bipartite graph and every self weight is 0, so "
            "the two sides swap models each round and gossip oscillates instead of converging; give "
            "nodes positive self weights (neighbour weights summing to less than 1), "
            "e.g. use mixing='metropolis'"
        )
