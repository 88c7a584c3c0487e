"""Named graph generators (``ring``, ``torus:4x4``, ``erdos-renyi:0.3`` ...).

Every generator returns an undirected graph on the ints ``0..n-1`` (no attributes);
naming nodes and building the mixing matrix happen in :mod:`p2pfl.topology.build`.
Random generators are deterministic in ``seed`` and re-draw with derived seeds until
the graph is connected, because a disconnected graph can never reach consensus.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import networkx as nx
import numpy as np

from p2pfl.errors import TopologyError
from p2pfl.topology.spec import GeneratorSpec, normalise_name, parse_spec

__all__ = ["GENERATORS", "check_generator_spec", "generate", "generator_names", "resolve_generator"]

logger = logging.getLogger(__name__)

MAX_TRIES = 100
"""How many seeds a random generator tries before giving up on connectivity."""

Builder = Callable[[int | None, int, dict[str, str]], nx.Graph]


@dataclass(frozen=True)
class Generator:
    """A registered generator.

    Attributes:
        name: canonical name.
        aliases: other accepted names (already normalised).
        params: parameter names, in positional order.
        build: ``build(nodes, seed, params) -> nx.Graph``.
        usage: one-line usage shown in error messages.
    """

    name: str
    aliases: tuple[str, ...]
    params: tuple[str, ...]
    build: Builder
    usage: str


# --- parameter helpers -----------------------------------------------------------


def _need_nodes(gen: str, nodes: int | None, minimum: int = 2, hint: str = "") -> int:
    if nodes is None:
        raise TopologyError(f"generator {gen!r} needs the node count: pass nodes=N{hint}")
    if nodes < minimum:
        raise TopologyError(f"generator {gen!r} needs at least {minimum} nodes, got nodes={nodes}")
    return nodes


def _int_param(gen: str, key: str, value: str, minimum: int) -> int:
    try:
        result = int(value)
    except ValueError:
        raise TopologyError(f"{gen}: parameter {key}={value!r} must be an integer >= {minimum}") from None
    if result < minimum:
        raise TopologyError(f"{gen}: parameter {key}={result} must be an integer >= {minimum}")
    return result


def _prob_param(gen: str, key: str, value: str, allow_zero: bool) -> float:
    interval = "[0, 1]" if allow_zero else "(0, 1]"
    try:
        result = float(value)
    except ValueError:
        raise TopologyError(f"{gen}: parameter {key}={value!r} must be a probability in {interval}") from None
    low_ok = result >= 0 if allow_zero else result > 0
    if not (math.isfinite(result) and low_ok and result <= 1):
        raise TopologyError(f"{gen}: parameter {key}={value!r} must be a probability in {interval}")
    return result


def _derived_seed(seed: int, attempt: int) -> int:
    """Seed for re-draw ``attempt``; attempt 0 uses ``seed`` itself."""
    if attempt == 0:
        return seed
    return int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])


def _ordered(n: int, edges: Iterable[tuple[int, int]]) -> nx.Graph:
    """Fresh graph with nodes ``0..n-1`` in order and edges sorted (deterministic iteration)."""
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(sorted({(min(u, v), max(u, v)) for u, v in edges}))
    return graph


def _first_connected(gen: str, seed: int, draw: Callable[[int], nx.Graph], advice: str) -> nx.Graph:
    for attempt in range(MAX_TRIES):
        graph = draw(_derived_seed(seed, attempt))
        if nx.is_connected(graph):
            if attempt:
                logger.debug("%s: connected graph after %d re-draws (seed=%d)", gen, attempt, seed)
            return _ordered(graph.number_of_nodes(), graph.edges())
    raise TopologyError(f"{gen}: no connected graph in {MAX_TRIES} draws from seed {seed}; {advice}")


# --- deterministic generators ----------------------------------------------------


def _ring(nodes: int | None, seed: int, params: dict[str, str]) -> nx.Graph:
    n = _need_nodes("ring", nodes, minimum=3)
    return _ordered(n, ((i, (i + 1) % n) for i in range(n)))


def _line(nodes: int | None, seed: int, params: dict[str, str]) -> nx.Graph:
    n = _need_nodes("line", nodes)
    return _ordered(n, ((i, i + 1) for i in range(n - 1)))


def _star(nodes: int | None, seed: int, params: dict[str, str]) -> nx.Graph:
    n = _need_nodes("star", nodes)
    return _ordered(n, ((0, i) for i in range(1, n)))


def _complete(nodes: int | None, seed: int, params: dict[str, str]) -> nx.Graph:
    n = _need_nodes("complete", nodes)
    return _ordered(n, ((i, j) for i in range(n) for j in range(i + 1, n)))


def _dims(gen: str, nodes: int | None, params: dict[str, str], minimum: int) -> tuple[int, int]:
    """Rows and columns for a torus or grid, from ``RxC`` or the most square factorisation."""
    if "dims" in params:
        text = params["dims"]
        parts = text.lower().split("x")
        if len(parts) != 2:
            raise TopologyError(f"{gen}: dimensions {text!r} must look like RxC, e.g. {gen}:4x4")
        rows = _int_param(gen, "rows", parts[0], minimum)
        cols = _int_param(gen, "cols", parts[1], minimum)
        if nodes is not None and nodes != rows * cols:
            raise TopologyError(
                f"{gen}:{text} has {rows * cols} nodes but nodes={nodes}; drop nodes or make them agree"
            )
        return rows, cols
    n = _need_nodes(gen, nodes, minimum=minimum * minimum, hint=f" or give dimensions as {gen}:RxC")
    split = _most_square(n, minimum)
    if split is None:
        lower = next(m for m in range(n - 1, 0, -1) if _most_square(m, minimum))
        upper = next(m for m in range(n + 1, 2 * n + minimum * minimum) if _most_square(m, minimum))
        raise TopologyError(
            f"{gen}: {n} nodes cannot be split into R x C with R, C >= {minimum}; "
            f"use {lower} or {upper} nodes, or give {gen}:RxC"
        )
    return split


def _most_square(n: int, minimum: int) -> tuple[int, int] | None:
    for rows in range(math.isqrt(n), minimum - 1, -1):
        if n % rows == 0 and n // rows >= minimum:
            return rows, n // rows
    return None


def _lattice(rows: int, cols: int, periodic: bool) -> nx.Graph:
    # Row-major numbering: node r*cols + c, so index order reads the lattice row by row.
    edges: list[tuple[int, int]] = []
    for r in range(rows):
        for c in range(cols):
            here = r * cols + c
            if periodic or c + 1 < cols:
                edges.append((here, r * cols + (c + 1) % cols))
            if periodic or r + 1 < rows:
                edges.append((here, ((r + 1) % rows) * cols + c))
    return _ordered(rows * cols, (e for e in edges if e[0] != e[1]))


def _torus(nodes: int | None, seed: int, params: dict[str, str]) -> nx.Graph:
    # Dimensions below 3 would fold the wrap-around link onto an existing edge.
    rows, cols = _dims("torus", nodes, params, minimum=3)
    return _lattice(rows, cols, periodic=True)


def _grid(nodes: int | None, seed: int, params: dict[str, str]) -> nx.Graph:
    rows, cols = _dims("grid", nodes, params, minimum=1)
    if rows * cols < 2:
        raise TopologyError("grid: needs at least 2 nodes")
    return _lattice(rows, cols, periodic=False)


def _hypercube(nodes: int | None, seed: int, params: dict[str, str]) -> nx.Graph:
    n = _need_nodes("hypercube", nodes)
    if n & (n - 1):
        lower = 1 << (n.bit_length() - 1)
        raise TopologyError(f"hypercube: nodes must be a power of two, got {n}; try {lower} or {lower * 2}")
    dim = n.bit_length() - 1
    # Nodes i and j are adjacent iff their binary labels differ in exactly one bit.
    return _ordered(n, ((i, i ^ (1 << b)) for i in range(n) for b in range(dim)))


def _exponential(nodes: int | None, seed: int, params: dict[str, str]) -> nx.Graph:
    n = _need_nodes("exponential", nodes)
    hops = [1 << k for k in range(n.bit_length()) if (1 << k) < n]
    return _ordered(n, ((i, (i + h) % n) for i in range(n) for h in hops if (i + h) % n != i))


# --- random generators -----------------------------------------------------------


def _random_regular(nodes: int | None, seed: int, params: dict[str, str]) -> nx.Graph:
    d = _int_param("random-regular", "d", params.get("d", "4"), minimum=1)
    n = _need_nodes("random-regular", nodes, minimum=d + 1)
    if (n * d) % 2:
        raise TopologyError(f"random-regular: nodes*d must be even, got nodes={n}, d={d}; change one of them")
    if d == 1 and n > 2:
        raise TopologyError(
            f"random-regular: d=1 pairs nodes off and is disconnected for nodes={n}; use d >= 2"
        )
    return _first_connected(
        "random-regular",
        seed,
        lambda s: nx.random_regular_graph(d, n, seed=s),
        "use a larger degree d (d >= 3 is almost always connected)",
    )


def _erdos_renyi(nodes: int | None, seed: int, params: dict[str, str]) -> nx.Graph:
    n = _need_nodes("erdos-renyi", nodes)
    if "p" in params:
        p = _prob_param("erdos-renyi", "p", params["p"], allow_zero=False)
    else:
        # Just above the connectivity threshold ln(N)/N, so re-draws are rare.
        p = min(1.0, 2 * math.log(n) / n)
    return _first_connected(
        "erdos-renyi",
        seed,
        lambda s: nx.gnp_random_graph(n, p, seed=s),
        f"p={p:g} is too small for {n} nodes; try p >= {min(1.0, 2 * math.log(n) / n):.3g}",
    )


def _small_world(nodes: int | None, seed: int, params: dict[str, str]) -> nx.Graph:
    k = _int_param("small-world", "k", params.get("k", "4"), minimum=2)
    if k % 2:
        raise TopologyError(f"small-world: k={k} must be even (each node links k/2 ring neighbours per side)")
    p = _prob_param("small-world", "p", params.get("p", "0.1"), allow_zero=True)
    n = _need_nodes("small-world", nodes, minimum=k + 1)
    try:
        graph = nx.connected_watts_strogatz_graph(n, k, p, tries=MAX_TRIES, seed=seed)
    except nx.NetworkXException as exc:
        raise TopologyError(f"small-world: {exc}; try a smaller p or a larger k") from exc
    return _ordered(n, graph.edges())


GENERATORS: tuple[Generator, ...] = (
    Generator("ring", ("cycle",), (), _ring, "ring (nodes >= 3)"),
    Generator("line", ("path", "chain"), (), _line, "line"),
    Generator("star", (), (), _star, "star (node 0 is the hub)"),
    Generator("complete", ("full", "all"), (), _complete, "complete"),
    Generator("torus", (), ("dims",), _torus, "torus[:RxC] (R, C >= 3)"),
    Generator("grid", ("lattice",), ("dims",), _grid, "grid[:RxC]"),
    Generator("hypercube", (), (), _hypercube, "hypercube (nodes a power of two)"),
    Generator(
        "random-regular", ("regular", "rr"), ("d",), _random_regular, "random-regular[:d] (default d=4)"
    ),
    Generator("erdos-renyi", ("er", "gnp"), ("p",), _erdos_renyi, "erdos-renyi[:p] (default p=2 ln N / N)"),
    Generator(
        "small-world", ("watts-strogatz", "ws"), ("k", "p"), _small_world, "small-world[:k,p] (default 4,0.1)"
    ),
    Generator("exponential", ("exp",), (), _exponential, "exponential (links i to i +- 2^k)"),
)

_BY_NAME: dict[str, Generator] = {alias: g for g in GENERATORS for alias in (g.name, *g.aliases)}


def generator_names() -> list[str]:
    """Canonical generator names, sorted."""
    return sorted(g.name for g in GENERATORS)


def resolve_generator(name: str) -> Generator:
    """Look up a generator by name or alias.

    Raises:
        TopologyError: listing the valid generators if ``name`` is unknown.
    """
    try:
        return _BY_NAME[normalise_name(name)]
    except KeyError:
        listing = "; ".join(g.usage for g in sorted(GENERATORS, key=lambda g: g.name))
        raise TopologyError(
            f"unknown topology generator {name!r}; valid generators: {listing}; "
            "or give the path of a topology file (.graphml, .json, .txt, .edges, .edgelist, .el)"
        ) from None


def _bind(gen: Generator, parsed: GeneratorSpec, spec: str) -> dict[str, str]:
    if len(parsed.positional) > len(gen.params):
        expected = ",".join(gen.params) or "no parameters"
        raise TopologyError(
            f"{gen.name}: too many parameters in {spec!r}; expected {expected} (usage: {gen.usage})"
        )
    bound = dict(zip(gen.params, parsed.positional, strict=False))
    for key, value in parsed.keyword.items():
        if key not in gen.params:
            valid = ", ".join(gen.params) or "none"
            raise TopologyError(
                f"{gen.name}: unknown parameter {key!r} in {spec!r}; valid parameters: {valid}"
            )
        if key in bound:
            raise TopologyError(
                f"{gen.name}: parameter {key!r} given both positionally and as {key}= in {spec!r}"
            )
        bound[key] = value
    return bound


def check_generator_spec(spec: str) -> None:
    """Refuse an unknown generator or parameter name without building a graph.

    Parameter values and node counts are checked when the graph is built (they depend
    on the node count).

    Raises:
        TopologyError: for an unknown generator (listing the valid ones) or parameter.
    """
    parsed = parse_spec(spec)
    _bind(resolve_generator(parsed.name), parsed, spec)


def generate(spec: str, nodes: int | None = None, seed: int = 0) -> nx.Graph:
    """Build the bare graph for a generator spec.

    Args:
        spec: ``name[:params]``, e.g. ``"ring"``, ``"torus:4x4"``, ``"ws:k=6,p=0.2"``.
        nodes: node count; optional only where the spec fixes it (``torus:RxC``).
        seed: seed for random generators; the same seed gives the same graph.

    Returns:
        An undirected graph on ``0..n-1`` with edges in sorted order.

    Raises:
        TopologyError: for an unknown generator or a missing or invalid parameter.
    """
    parsed = parse_spec(spec)
    gen = resolve_generator(parsed.name)
    return gen.build(nodes, seed, _bind(gen, parsed, spec))
