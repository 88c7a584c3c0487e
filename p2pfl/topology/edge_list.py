"""Plain edge lists: one ``u v`` or ``u v weight`` per line, ``#`` comments, optional node count.

The format is described in :mod:`p2pfl.topology.files`, which picks this reader by
file extension.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from p2pfl.errors import TopologyError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _EdgeLine:
    u: str
    v: str
    weight: float | None
    line: int


def _is_int(token: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", token) is not None


def read_edge_list(file: Path) -> nx.Graph:
    """Read an edge list into a graph on its node labels (ints when every label is one)."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TopologyError(f"{file}: not a UTF-8 text edge list: {exc}") from exc
    header: int | None = None
    header_line = 0
    seen_content = False
    rows: list[_EdgeLine] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        content = raw.split("#", 1)[0].strip()
        if not content:
            continue
        tokens = content.split()
        if not seen_content and len(tokens) == 1 and _is_int(tokens[0]):
            header, header_line = int(tokens[0]), lineno
            if header < 1:
                raise TopologyError(f"{file}:{lineno}: node count {header} must be a positive integer")
            seen_content = True
            continue
        seen_content = True
        if len(tokens) not in (2, 3):
            raise TopologyError(
                f"{file}:{lineno}: expected 'u v' or 'u v weight', got {raw.strip()!r} "
                "(a lone node count N is allowed only as the first line)"
            )
        weight: float | None = None
        if len(tokens) == 3:
            try:
                weight = float(tokens[2])
            except ValueError:
                weight = math.nan
            if not math.isfinite(weight):
                raise TopologyError(f"{file}:{lineno}: weight {tokens[2]!r} must be a finite number")
        rows.append(_EdgeLine(tokens[0], tokens[1], weight, lineno))
    order, label = _edge_list_labels(file, rows, header, header_line)
    graph = nx.Graph()
    graph.add_nodes_from(order)
    first_seen: dict[frozenset[Any], _EdgeLine] = {}
    repeats: list[tuple[_EdgeLine, _EdgeLine]] = []
    for row in rows:
        u, v = label[row.u], label[row.v]
        if u == v:  # also "1 01" in a numbered file, which names node 1 twice
            raise TopologyError(
                f"{file}:{row.line}: self loop on node {row.u!r}; self weights come from the "
                "diagonal, list only edges between different nodes"
            )
        key = frozenset((u, v))
        earlier = first_seen.get(key)
        if earlier is not None:
            if earlier.weight != row.weight:
                raise TopologyError(
                    f"{file}:{row.line}: edge {row.u}-{row.v} repeats line {earlier.line} with a different "
                    f"weight ({_weight_text(row.weight)} here, {_weight_text(earlier.weight)} there); keep one of the lines"
                )
            repeats.append((earlier, row))
            continue
        first_seen[key] = row
        if row.weight is None:
            graph.add_edge(u, v)
        else:
            graph.add_edge(u, v, weight=row.weight)
    _report_repeats(file, repeats, len(first_seen))
    return graph


def _weight_text(weight: float | None) -> str:
    return "none" if weight is None else f"{weight:g}"


def _report_repeats(file: Path, repeats: list[tuple[_EdgeLine, _EdgeLine]], edges: int) -> None:
    """Say that repeated edges were merged; listing every edge as u v and v u is a known format."""
    if not repeats:
        return
    reversed_only = all(first.u == again.v and first.v == again.u for first, again in repeats)
    if reversed_only and len(repeats) == edges:
        logger.info("%s lists every edge in both directions; read as %d undirected edges", file, edges)
        return
    shown = ", ".join(
        f"{again.u}-{again.v} (lines {first.line} and {again.line})" for first, again in repeats[:3]
    )
    more = f" and {len(repeats) - 3} more" if len(repeats) > 3 else ""
    logger.warning(
        "%s: %d edge line(s) repeat an earlier edge and were merged into it (links are undirected, "
        "so u v and v u are the same edge): %s%s",
        file,
        len(repeats),
        shown,
        more,
    )


def _edge_list_labels(
    file: Path, rows: list[_EdgeLine], header: int | None, header_line: int
) -> tuple[list[Any], dict[str, Any]]:
    """Fix the node order and map each token to its node id."""
    tokens = {t for row in rows for t in (row.u, row.v)}
    if header is not None:
        for row in rows:
            for tok in (row.u, row.v):
                if not _is_int(tok):
                    raise TopologyError(
                        f"{file}:{row.line}: node {tok!r} is not an integer, but line {header_line} declares "
                        f"{header} nodes, so nodes must be integers 0..{header - 1} (or 1..{header})"
                    )
        ints = {int(t) for t in tokens}
        # 1-based files are common in the literature: N appears, 0 never does.
        base = 1 if header in ints and 0 not in ints else 0
        for row in rows:
            for tok in (row.u, row.v):
                if not base <= int(tok) < base + header:
                    raise TopologyError(
                        f"{file}:{row.line}: node {tok} is outside {base}..{base + header - 1}; "
                        f"line {header_line} declares {header} nodes"
                    )
        return list(range(base, base + header)), {t: int(t) for t in tokens}
    if tokens and all(_is_int(t) for t in tokens):
        # Numeric labels sort numerically, so "10" comes after "9".
        numeric: dict[str, Any] = {t: int(t) for t in tokens}
        return sorted(set(numeric.values())), numeric
    return sorted(tokens), {t: t for t in tokens}


def edge_list_text(graph: nx.Graph, file: Path) -> str:
    """The edge-list text of ``graph``: names as labels, weights kept, a node-count header if needed."""
    nodes = list(graph.nodes)
    names = {node: str(graph.nodes[node].get("name", node)) for node in nodes}
    for name in names.values():
        if not name or re.search(r"\s|#", name):
            raise TopologyError(
                f"{file}: node name {name!r} cannot be an edge-list label (empty, whitespace or '#'); "
                "write .graphml or .json instead"
            )
    lines: list[str] = []
    if any(graph.degree(node) == 0 for node in nodes):
        if [names[node] for node in nodes] != [str(i) for i in range(len(nodes))]:
            raise TopologyError(
                f"{file}: the graph has isolated nodes, which an edge list can only keep with the "
                "node-count header and names 0..n-1; write .graphml or .json instead"
            )
        lines.append(str(len(nodes)))
    for u, v, data in graph.edges(data=True):
        line = f"{names[u]} {names[v]}"
        if "weight" in data:
            line += f" {float(data['weight'])!r}"
        lines.append(line)
    return "\n".join(lines) + "\n"
