"""Generator specs: shapes, parameters, seeds and errors."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from p2pfl.errors import TopologyError
from p2pfl.topology import build_topology, generator_names

ALL_SPECS = [
    ("ring", 16),
    ("line", 7),
    ("star", 9),
    ("complete", 6),
    ("torus", 16),
    ("torus:3x5", None),
    ("grid", 12),
    ("grid:2x3", None),
    ("hypercube", 16),
    ("random-regular", 20),
    ("rr:3", 12),
    ("erdos-renyi", 30),
    ("er:0.4", 15),
    ("small-world", 20),
    ("ws:6,0.3", 25),
    ("exponential", 12),
]


@pytest.mark.parametrize(("spec", "nodes"), ALL_SPECS)
def test_every_generator_gives_a_valid_metropolis_matrix(spec: str, nodes: int | None) -> None:
    topo = build_topology(spec, nodes)
    w = topo.mixing
    assert w.dtype == np.float64
    assert list(topo.graph.nodes) == list(range(topo.n))
    assert topo.names == [str(i) for i in range(topo.n)]
    assert nx.is_connected(topo.graph)
    np.testing.assert_allclose(w, w.T, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    assert (w >= 0).all()
    off_support = (w > 0) & ~np.eye(topo.n, dtype=bool)
    assert {(int(i), int(j)) for i, j in np.argwhere(off_support)} == {
        (u, v) for u, v in topo.graph.edges
    } | {(v, u) for u, v in topo.graph.edges}
    assert topo.mixing_method == "metropolis"


def test_shapes_of_deterministic_generators() -> None:
    assert build_topology("ring", 10).graph.number_of_edges() == 10
    assert build_topology("line", 10).graph.number_of_edges() == 9
    star = build_topology("star", 10)
    assert star.neighbours(0) == list(range(1, 10))
    assert build_topology("complete", 10).graph.number_of_edges() == 45
    exp = build_topology("exponential", 8)
    assert exp.neighbours(0) == [1, 2, 4, 6, 7]


def test_torus_dimensions() -> None:
    square = build_topology("torus", 16)
    assert all(d == 4 for _, d in square.graph.degree())
    assert nx.diameter(square.graph) == 4  # 2 + 2 on a 4x4 torus
    explicit = build_topology("torus:3x5")
    assert explicit.n == 15 and nx.diameter(explicit.graph) == 1 + 2
    assert build_topology("torus:3x5", 15).n == 15
    # 24 = 4x6 is the most square split with both sides >= 3.
    assert nx.diameter(build_topology("torus", 24).graph) == 2 + 3
    with pytest.raises(TopologyError, match="has 16 nodes but nodes=15"):
        build_topology("torus:4x4", 15)
    with pytest.raises(TopologyError, match="R, C >= 3; use 12 or 15 nodes"):
        build_topology("torus", 14)
    with pytest.raises(TopologyError, match="RxC"):
        build_topology("torus:4by4")


def test_grid_dimensions() -> None:
    grid = build_topology("grid", 12)  # 3x4
    assert grid.graph.number_of_edges() == 3 * 3 + 2 * 4
    assert build_topology("grid", 7).graph.number_of_edges() == 6  # prime: a 1x7 line
    assert build_topology("grid:2x3").n == 6


def test_hypercube_structure() -> None:
    cube = build_topology("hypercube", 32)
    assert all(d == 5 for _, d in cube.graph.degree())
    for u, v in cube.graph.edges:
        assert bin(u ^ v).count("1") == 1
    with pytest.raises(TopologyError, match="power of two, got 12; try 8 or 16"):
        build_topology("hypercube", 12)


@pytest.mark.parametrize(
    ("spec", "nodes"), [("rr", 20), ("er", 30), ("ws", 20), ("er:0.2", 25), ("rr:3", 16)]
)
def test_random_generators_are_seeded(spec: str, nodes: int) -> None:
    a = build_topology(spec, nodes, seed=7)
    b = build_topology(spec, nodes, seed=7)
    c = build_topology(spec, nodes, seed=8)
    assert list(a.graph.edges) == list(b.graph.edges)
    np.testing.assert_array_equal(a.mixing, b.mixing)
    assert set(a.graph.edges) != set(c.graph.edges)


def test_random_regular_degree() -> None:
    topo = build_topology("random-regular:3", 14, seed=1)
    assert {d for _, d in topo.graph.degree()} == {3}
    assert {d for _, d in build_topology("regular", 10).graph.degree()} == {4}


def test_erdos_renyi_is_always_connected() -> None:
    # Near the threshold many raw draws are disconnected; re-drawing must fix that.
    for seed in range(30):
        assert nx.is_connected(build_topology("er:0.12", 40, seed=seed).graph)


def test_erdos_renyi_gives_up_with_advice() -> None:
    with pytest.raises(TopologyError, match=r"no connected graph in 100 draws.*try p >="):
        build_topology("er:0.001", 50)


def test_names_are_case_insensitive_and_aliases_work() -> None:
    base = build_topology("small-world", 12, seed=3)
    for spec in ("Small_World", "WS", "watts-strogatz", "ws:4,0.1", "ws:k=4,p=0.1", "ws:4,p=0.1"):
        assert list(build_topology(spec, 12, seed=3).graph.edges) == list(base.graph.edges)
    assert build_topology("ER:P=1", 5).graph.number_of_edges() == 10


def test_unknown_generator_lists_valid_names() -> None:
    with pytest.raises(TopologyError) as err:
        build_topology("moebius", 8)
    message = str(err.value)
    assert "unknown topology generator 'moebius'" in message
    for name in generator_names():
        assert name in message


@pytest.mark.parametrize(
    ("spec", "nodes", "fragment"),
    [
        ("ring", None, "needs the node count"),
        ("ring", 2, "at least 3 nodes"),
        ("rr:3", 9, "nodes*d must be even"),
        ("rr:10", 8, "at least 11 nodes"),
        ("rr:x", 8, "d='x' must be an integer"),
        ("er:1.5", 8, "p='1.5' must be a probability in (0, 1]"),
        ("ws:3", 10, "k=3 must be even"),
        ("ws:4,-0.1", 10, "p='-0.1' must be a probability in [0, 1]"),
        ("ws:z=1", 10, "unknown parameter 'z'"),
        ("ring:3", 10, "too many parameters"),
        ("ws:k=4,6", 10, "positional parameter '6' follows"),
        ("ws:4,k=4", 10, "given both positionally and as k="),
        ("torus", 8, "at least 9 nodes"),
        ("torus", 10, "use 9 or 12 nodes"),
    ],
)
def test_bad_generator_parameters(spec: str, nodes: int | None, fragment: str) -> None:
    with pytest.raises(TopologyError) as err:
        build_topology(spec, nodes)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"nodes": 0}, "nodes must be a positive integer"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"mixing": "magic"}, "unknown mixing method 'magic'"),
    ],
)
def test_bad_build_arguments(kwargs: dict[str, object], fragment: str) -> None:
    args = {"nodes": 8, **kwargs}
    with pytest.raises(TopologyError, match=fragment):
        build_topology("ring", **args)  # type: ignore[arg-type]


def test_topology_accessors() -> None:
    topo = build_topology("ring", 6)
    assert topo.n == 6
    assert topo.neighbours(0) == [1, 5]
    assert topo.index_of("3") == 3
    with pytest.raises(TopologyError, match="unknown node name 'zz'"):
        topo.index_of("zz")
    with pytest.raises(TopologyError, match="out of range"):
        topo.neighbours(6)
    assert not topo.mixing.flags.writeable
    assert topo.spec == "ring"


def test_file_mixing_rejected_for_generators() -> None:
    with pytest.raises(TopologyError, match="reads edge weights from a topology file"):
        build_topology("ring", 5, mixing="file")
