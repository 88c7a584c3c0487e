"""Reading and writing topology files: GraphML, JSON node-link and plain edge lists.

Whatever the format, :func:`read_topology_file` returns an undirected graph whose
nodes are ``0..n-1`` in file order, each with a string ``name`` attribute (the
original node id unless the file already gives a ``name``).

Edge lists (``.txt``, ``.edges``, ``.edgelist``, ``.el``) hold one edge per line,
``u v`` or ``u v weight``; ``#`` starts a comment. If the first line is a single
integer N (the common research format) the nodes are ``0..N-1``, or ``1..N`` when
the edges use N and never 0, and isolated nodes are kept.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from p2pfl.errors import TopologyError
from p2pfl.topology.edge_list import edge_list_text, read_edge_list

__all__ = [
    "EDGE_LIST_SUFFIXES",
    "TOPOLOGY_SUFFIXES",
    "looks_like_path",
    "normalise_graph",
    "read_topology_file",
    "write_topology_file",
]

logger = logging.getLogger(__name__)

EDGE_LIST_SUFFIXES: tuple[str, ...] = (".txt", ".edges", ".edgelist", ".el")
TOPOLOGY_SUFFIXES: tuple[str, ...] = (".graphml", ".json", *EDGE_LIST_SUFFIXES)

# networkx 3.4 added `edges=` (and deprecated `link=`), 3.6 made "edges" the default.
# Passing the key explicitly keeps every version quiet and unambiguous.
_NODE_LINK_HAS_EDGES_KW = "edges" in inspect.signature(nx.node_link_graph).parameters


def _node_link_kwargs(key: str) -> dict[str, str]:
    return {"edges": key} if _NODE_LINK_HAS_EDGES_KW else {"link": key}


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` is meant as a file path rather than a generator spec.

    True when it contains a path separator or ends in a word-like extension
    (``.json``, ``.csv``); ``er:0.5`` ends in a number and is not a path.
    """
    return "/" in spec or os.sep in spec or re.search(r"\.[A-Za-z]\w*$", spec) is not None


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in TOPOLOGY_SUFFIXES:
        raise TopologyError(
            f"{path}: unknown topology file extension {path.suffix or '(none)'!r}; "
            f"valid extensions: {', '.join(TOPOLOGY_SUFFIXES)}"
        )
    return suffix


# --- reading -------------------------------------------------------------------------


def read_topology_file(path: str | os.PathLike[str]) -> nx.Graph:
    """Read a topology file, choosing the format by extension.

    Args:
        path: a ``.graphml``, ``.json`` (node-link) or edge-list file.

    Returns:
        An undirected graph on ``0..n-1`` (file order) with a ``name`` on every node
        and any other node/edge attributes from the file (``weight``, ``address`` ...).

    Raises:
        TopologyError: if the file is missing, has an unknown extension, cannot be
            parsed, is empty, has self loops or parallel edges, or is directed and
            not symmetric.
    """
    file = Path(path)
    suffix = _suffix(file)
    if not file.is_file():
        raise TopologyError(f"topology file not found: {file}")
    if suffix == ".graphml":
        raw = _read_graphml(file)
    elif suffix == ".json":
        raw = _read_json(file)
    else:
        raw = read_edge_list(file)
    graph = normalise_graph(raw, source=str(file))
    logger.debug("read %s: %d nodes, %d edges", file, graph.number_of_nodes(), graph.number_of_edges())
    return graph


def _read_graphml(file: Path) -> nx.Graph:
    try:
        return nx.read_graphml(file)
    except (ET.ParseError, nx.NetworkXError, ValueError, KeyError, TypeError) as exc:
        raise TopologyError(f"{file}: cannot parse as GraphML: {exc}") from exc


def _read_json(file: Path) -> nx.Graph:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise TopologyError(f"{file}: not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise TopologyError(
            f"{file}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    expected = "a node-link object with a 'nodes' list and an 'edges' (or 'links') list"
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise TopologyError(f"{file}: expected {expected}")
    # Older networkx wrote "links", newer writes "edges"; accept whichever is there.
    key = "edges" if "edges" in data else "links" if "links" in data else None
    if key is None or not isinstance(data[key], list):
        raise TopologyError(f"{file}: expected {expected}")
    if not data.get("directed") and not data.get("multigraph"):
        # A simple undirected graph would merge repeats silently; the other kinds are checked later.
        _check_json_repeats(file, key, data[key])
    try:
        return nx.node_link_graph(data, directed=False, multigraph=False, **_node_link_kwargs(key))
    except (KeyError, TypeError, ValueError, nx.NetworkXError) as exc:
        raise TopologyError(
            f"{file}: malformed node-link JSON ({type(exc).__name__}: {exc}); expected {expected}, "
            "each node with an 'id' and each edge with 'source' and 'target'"
        ) from exc


def _check_json_repeats(file: Path, key: str, edges: list[Any]) -> None:
    """Refuse repeated edges with different weights, warn about the rest (networkx merges them)."""
    first_seen: dict[frozenset[str], tuple[int, Any]] = {}
    repeats: list[str] = []
    for i, edge in enumerate(edges):
        if not isinstance(edge, dict) or "source" not in edge or "target" not in edge:
            continue  # node_link_graph reports malformed entries
        ends = frozenset((str(edge["source"]), str(edge["target"])))
        weight = edge.get("weight")
        earlier = first_seen.get(ends)
        if earlier is None:
            first_seen[ends] = (i, weight)
            continue
        where = f"{key}[{earlier[0]}] and {key}[{i}]"
        if earlier[1] != weight:
            raise TopologyError(
                f"{file}: edge {edge['source']!r}-{edge['target']!r} is listed twice with different "
                f"weights ({where}); keep one of them"
            )
        repeats.append(f"{edge['source']}-{edge['target']} ({where})")
    if repeats:
        more = f" and {len(repeats) - 3} more" if len(repeats) > 3 else ""
        logger.warning(
            "%s: %d edge(s) repeat an earlier edge and were merged into it (links are undirected): %s%s",
            file,
            len(repeats),
            ", ".join(repeats[:3]),
            more,
        )


def normalise_graph(raw: nx.Graph, source: str = "graph") -> nx.Graph:
    """Turn a graph as read from a file into the canonical form.

    Args:
        raw: any networkx graph.
        source: where it came from, for error messages.

    Returns:
        An undirected simple graph on ``0..n-1`` in ``raw``'s node order; every node
        has a string ``name`` (its original id unless it had a ``name`` attribute).

    Raises:
        TopologyError: if ``raw`` is empty, has self loops or parallel edges, has
            duplicate names, or is directed with an edge lacking its reverse.
    """
    if raw.number_of_nodes() == 0:
        raise TopologyError(f"{source}: contains no nodes; a topology needs at least 2 connected nodes")
    if raw.is_multigraph():
        for u, v in set(raw.edges()):
            if raw.number_of_edges(u, v) > 1:
                raise TopologyError(f"{source}: parallel edges between {u!r} and {v!r}; list each edge once")
        raw = nx.DiGraph(raw) if raw.is_directed() else nx.Graph(raw)
    loops = list(nx.selfloop_edges(raw))
    if loops:
        raise TopologyError(
            f"{source}: self loop on node {loops[0][0]!r}; self weights come from the diagonal, "
            "list only edges between different nodes"
        )
    if raw.is_directed():
        for u, v, data in raw.edges(data=True):
            if not raw.has_edge(v, u):
                raise TopologyError(
                    f"{source}: directed edge {u!r}->{v!r} has no reverse {v!r}->{u!r}; "
                    "gossip needs undirected links (give an undirected graph or add the reverse edges)"
                )
            if data.get("weight") != raw.edges[v, u].get("weight"):
                raise TopologyError(f"{source}: edges {u!r}->{v!r} and {v!r}->{u!r} have different weights")
        logger.debug("%s: directed but symmetric, converted to undirected", source)
    order = list(raw.nodes)
    index = {node: i for i, node in enumerate(order)}
    graph = nx.Graph()
    graph.graph.update(raw.graph)
    names: list[str] = []
    for i, node in enumerate(order):
        attrs = dict(raw.nodes[node])
        attrs["name"] = str(attrs.get("name", node))
        names.append(attrs["name"])
        graph.add_node(i, **attrs)
    if len(set(names)) != len(names):
        dupes = sorted({x for x in names if names.count(x) > 1})
        raise TopologyError(f"{source}: node names must be unique, duplicated: {dupes}")
    for u, v, data in raw.edges(data=True):
        graph.add_edge(index[u], index[v], **data)
    return graph


# --- writing -------------------------------------------------------------------------


def write_topology_file(graph: nx.Graph, path: str | os.PathLike[str]) -> None:
    """Write ``graph`` in the format given by the extension of ``path``, creating its folder.

    GraphML and JSON keep every attribute. Edge lists keep node names and edge
    weights only; they write names as node labels (so names must not contain
    whitespace or ``#``), and when the graph has isolated nodes they use the
    node-count header, which needs the default names ``"0".."n-1"``.

    Args:
        graph: the graph to write (typically ``Topology.graph``).
        path: destination; its extension picks the format.

    Raises:
        TopologyError: for an unknown extension or a graph the format cannot hold.
    """
    file = Path(path)
    suffix = _suffix(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".graphml":
        nx.write_graphml(graph, file)
    elif suffix == ".json":
        data = nx.node_link_data(graph, **_node_link_kwargs("edges"))
        file.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")
    else:
        file.write_text(edge_list_text(graph, file), encoding="utf-8")
    logger.debug("wrote %s", file)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"attribute value {value!r} of type {type(value).__name__} is not JSON serialisable")
