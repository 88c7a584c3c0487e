"""Topology files: round trips, the research edge-list format, ready-made files, bad input."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from p2pfl.errors import TopologyError
from p2pfl.topology import (
    build_topology,
    read_topology_file,
    spectral_gap,
    validate_mixing,
    write_topology_file,
)

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


def _named_graph() -> nx.Graph:
    graph = nx.Graph()
    for i, name in enumerate(["alpha", "beta", "gamma", "delta"]):
        graph.add_node(i, name=name, address=f"tcp://127.0.0.1:{7001 + i}")
    graph.add_edge(0, 1, weight=0.25)
    graph.add_edge(1, 2, weight=0.5)
    graph.add_edge(2, 3, weight=0.125)
    graph.add_edge(3, 0, weight=0.3)
    return graph


def _edges_by_name(graph: nx.Graph) -> dict[frozenset[str], dict[str, object]]:
    name = nx.get_node_attributes(graph, "name")
    return {frozenset((name[u], name[v])): dict(d) for u, v, d in graph.edges(data=True)}


@pytest.mark.parametrize("suffix", [".graphml", ".json"])
def test_rich_formats_round_trip_everything(tmp_path: Path, suffix: str) -> None:
    original = _named_graph()
    path = tmp_path / f"g{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. networkx's node-link FutureWarning
        write_topology_file(original, path)
        again = read_topology_file(path)
    assert list(again.nodes) == [0, 1, 2, 3]
    assert [again.nodes[i] for i in again] == [original.nodes[i] for i in original]
    assert _edges_by_name(again) == _edges_by_name(original)


@pytest.mark.parametrize("suffix", [".txt", ".edges", ".edgelist", ".el"])
def test_edge_lists_round_trip_names_and_weights(tmp_path: Path, suffix: str) -> None:
    original = _named_graph()
    path = tmp_path / f"g{suffix}"
    write_topology_file(original, path)
    again = read_topology_file(path)
    assert _edges_by_name(again) == _edges_by_name(original)
    # Non-numeric labels come back sorted as strings.
    assert [again.nodes[i]["name"] for i in again] == ["alpha", "beta", "delta", "gamma"]


@pytest.mark.parametrize("suffix", [".graphml", ".json", ".txt"])
def test_built_topology_round_trips_in_order(tmp_path: Path, suffix: str) -> None:
    topo = build_topology("random-regular:3", 12, seed=4)
    path = tmp_path / f"rr{suffix}"
    write_topology_file(topo.graph, path)
    again = build_topology(str(path))
    assert again.names == topo.names
    assert set(again.graph.edges) == set(topo.graph.edges)
    np.testing.assert_allclose(again.mixing, topo.mixing)


def test_json_accepts_old_links_key(tmp_path: Path) -> None:
    data = {
        "directed": False,
        "multigraph": False,
        "graph": {},
        "nodes": [{"id": "a"}, {"id": "b"}, {"id": "c"}],
        "links": [{"source": "a", "target": "b"}, {"source": "b", "target": "c"}],
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        topo = build_topology(str(path))
    assert topo.names == ["a", "b", "c"]
    assert topo.neighbours(1) == [0, 2]


def test_research_format_zero_based(tmp_path: Path) -> None:
    path = tmp_path / "ring.txt"
    path.write_text("# a ring\n4\n0 1\n1 2\n\n2 3  # last but one\n3 0\n")
    graph = read_topology_file(path)
    assert [graph.nodes[i]["name"] for i in graph] == ["0", "1", "2", "3"]
    assert graph.number_of_edges() == 4


def test_research_format_one_based(tmp_path: Path) -> None:
    path = tmp_path / "ring1.txt"
    path.write_text("3\n1 2\n2 3\n3 1\n")
    topo = build_topology(str(path))
    assert topo.names == ["1", "2", "3"]
    assert topo.graph.number_of_edges() == 3


def test_research_format_keeps_isolated_nodes(tmp_path: Path) -> None:
    path = tmp_path / "iso.txt"
    path.write_text("5\n0 1\n1 2\n2 3\n")
    assert read_topology_file(path).number_of_nodes() == 5
    with pytest.raises(TopologyError, match=r"not connected.*node 4 has no edges"):
        build_topology(str(path))
    # Writing keeps the isolated node through the header.
    out = tmp_path / "iso-again.txt"
    write_topology_file(read_topology_file(path), out)
    assert out.read_text().splitlines()[0] == "5"
    assert read_topology_file(out).number_of_nodes() == 5


def test_numeric_labels_sort_numerically(tmp_path: Path) -> None:
    path = tmp_path / "g.edges"
    path.write_text("10 9\n9 2\n2 10\n")
    assert [d["name"] for _, d in read_topology_file(path).nodes(data=True)] == ["2", "9", "10"]


@pytest.mark.parametrize(
    ("name", "mixing", "n"),
    [
        ("hospitals-10.graphml", "metropolis", 10),
        ("torus-16.json", "metropolis", 16),
        ("ring-16.txt", "metropolis", 16),
        ("random-regular-32-d4.edgelist", "metropolis", 32),
        ("weighted-5.txt", "file", 5),
    ],
)
def test_ready_made_files_load_and_validate(name: str, mixing: str, n: int) -> None:
    topo = build_topology(str(TOPOLOGIES / name), mixing=mixing)
    assert topo.n == n
    validate_mixing(topo.mixing, topo.graph)
    assert 0 < spectral_gap(topo.mixing) <= 1


def test_ready_made_files_match_their_generators() -> None:
    def edges(spec: str, nodes: int | None = None, seed: int = 0) -> set[tuple[int, int]]:
        return {(min(e), max(e)) for e in build_topology(spec, nodes, seed=seed).graph.edges}

    assert edges(str(TOPOLOGIES / "torus-16.json")) == edges("torus:4x4")
    assert edges(str(TOPOLOGIES / "ring-16.txt")) == edges("ring", 16)
    assert edges(str(TOPOLOGIES / "random-regular-32-d4.edgelist")) == edges("random-regular:4", 32)
    assert spectral_gap(build_topology(str(TOPOLOGIES / "ring-16.txt")).mixing) == pytest.approx(
        0.0507, abs=1e-3
    )


def test_hospitals_have_names_and_addresses() -> None:
    topo = build_topology(str(TOPOLOGIES / "hospitals-10.graphml"))
    assert topo.names[:2] == ["st-marys", "charite"]
    addresses = [topo.graph.nodes[i]["address"] for i in range(topo.n)]
    assert addresses == [f"tcp://127.0.0.1:{7001 + i}" for i in range(10)]
    assert {d for _, d in topo.graph.degree()} <= {2, 3, 4}


def test_weighted_file_uses_its_weights() -> None:
    topo = build_topology(str(TOPOLOGIES / "weighted-5.txt"), mixing="weights")
    assert topo.mixing_method == "file"
    assert topo.mixing[0, 2] == pytest.approx(0.2)
    assert topo.mixing[0, 0] == pytest.approx(0.2)
    assert topo.mixing[1, 1] == pytest.approx(0.4)


# --- bad input ------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="topology file not found: .*nope.graphml"):
        build_topology(str(tmp_path / "nope.graphml"))


def test_unknown_extension_lists_valid_ones(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    path.write_text("0,1\n")
    with pytest.raises(
        TopologyError, match=r"unknown topology file extension '.csv'; valid extensions: .graphml, .json"
    ):
        build_topology(str(path))
    with pytest.raises(TopologyError, match="unknown topology file extension"):
        write_topology_file(nx.path_graph(2), tmp_path / "g.yaml")


def test_garbage_line_reports_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("# header\n0 1\n1 2 3 4\n")
    with pytest.raises(TopologyError, match=r"bad.txt:3: expected 'u v' or 'u v weight', got '1 2 3 4'"):
        read_topology_file(path)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0 1 heavy\n", "bad.el:1: weight 'heavy' must be a finite number"),
        ("0 1\n2 2\n", "bad.el:2: self loop on node '2'"),
        ("3\n0 1\n1 5\n", "bad.el:3: node 5 is outside 0..2"),
        ("3\n0 a\n", "bad.el:2: node 'a' is not an integer"),
        (
            "0 1 0.5\n1 0 0.25\n",
            "bad.el:2: edge 1-0 repeats line 1 with a different weight (0.25 here, 0.5 there)",
        ),
        (
            "0 1 0.5\n1 2\n0 1\n",
            "bad.el:3: edge 0-1 repeats line 1 with a different weight (none here, 0.5 there)",
        ),
        ("0 1\n1 01\n", "bad.el:2: self loop on node '1'"),
        ("0 1\n7\n", "bad.el:2: expected 'u v' or 'u v weight'"),
        ("# only comments\n\n", "contains no nodes"),
    ],
)
def test_bad_edge_lists(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.el"
    path.write_text(text)
    with pytest.raises(TopologyError) as err:
        read_topology_file(path)
    assert fragment in str(err.value)


def test_unparsable_structured_files(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"nodes": [}')
    with pytest.raises(TopologyError, match=r"bad.json: invalid JSON at line 1, column 12"):
        read_topology_file(bad_json)
    not_node_link = tmp_path / "list.json"
    not_node_link.write_text("[1, 2]")
    with pytest.raises(TopologyError, match="expected a node-link object"):
        read_topology_file(not_node_link)
    bad_graphml = tmp_path / "bad.graphml"
    bad_graphml.write_text("<graphml><graph>")
    with pytest.raises(TopologyError, match="bad.graphml: cannot parse as GraphML"):
        read_topology_file(bad_graphml)


def test_disconnected_file(tmp_path: Path) -> None:
    path = tmp_path / "two.txt"
    path.write_text("a b\nc d\n")
    with pytest.raises(
        TopologyError, match=r"not connected: 2 components.*node 0 \('a'\) cannot reach node 2 \('c'\)"
    ):
        build_topology(str(path))


def test_weights_not_stochastic(tmp_path: Path) -> None:
    path = tmp_path / "heavy.txt"
    path.write_text("0 1 0.7\n1 2 0.7\n2 0 0.2\n")
    with pytest.raises(
        TopologyError, match=r"self weight W\[1,1\] = -0.4 .* neighbour weights sum to 1.4 > 1"
    ):
        build_topology(str(path), mixing="file")


def test_file_mixing_needs_weights_on_every_edge(tmp_path: Path) -> None:
    path = tmp_path / "partial.txt"
    path.write_text("0 1 0.3\n1 2\n2 0 0.3\n")
    with pytest.raises(
        TopologyError, match="needs a 'weight' on every edge, but edge node 1 - node 2 has none"
    ):
        build_topology(str(path), mixing="file")


def test_node_count_must_match_file() -> None:
    with pytest.raises(TopologyError, match="has 16 nodes but nodes=8"):
        build_topology(str(TOPOLOGIES / "ring-16.txt"), 8)
    assert build_topology(str(TOPOLOGIES / "ring-16.txt"), 16).n == 16


def test_directed_files(tmp_path: Path) -> None:
    symmetric = nx.DiGraph([(0, 1), (1, 0), (1, 2), (2, 1)])
    path = tmp_path / "sym.graphml"
    nx.write_graphml(symmetric, path)
    assert read_topology_file(path).number_of_edges() == 2
    one_way = nx.DiGraph([(0, 1), (1, 2), (2, 1)])
    nx.write_graphml(one_way, path)
    with pytest.raises(TopologyError, match="directed edge '0'->'1' has no reverse"):
        read_topology_file(path)


def test_self_loop_and_duplicate_names_in_graphml(tmp_path: Path) -> None:
    path = tmp_path / "loop.graphml"
    nx.write_graphml(nx.Graph([(0, 1), (1, 1)]), path)
    with pytest.raises(TopologyError, match="self loop on node '1'"):
        read_topology_file(path)
    dup = nx.Graph([(0, 1)])
    nx.set_node_attributes(dup, {0: "x", 1: "x"}, "name")
    nx.write_graphml(dup, path)
    with pytest.raises(TopologyError, match=r"names must be unique, duplicated: \['x'\]"):
        read_topology_file(path)


def test_edge_list_cannot_hold_names_with_spaces(tmp_path: Path) -> None:
    graph = nx.Graph([(0, 1)])
    nx.set_node_attributes(graph, {0: "st marys", 1: "b"}, "name")
    with pytest.raises(TopologyError, match="write .graphml or .json instead"):
        write_topology_file(graph, tmp_path / "g.txt")


def test_repeated_edges_are_merged_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "dup.txt"
    path.write_text("0 1\n1 2\n2 3\n1 0\n3 0\n2 1\n0 1\n2 3\n0 3\n")
    with caplog.at_level(logging.WARNING, logger="p2pfl.topology"):
        graph = read_topology_file(path)
    assert graph.number_of_edges() == 4
    [record] = caplog.records
    assert record.getMessage() == (
        f"{path}: 5 edge line(s) repeat an earlier edge and were merged into it (links are undirected, "
        "so u v and v u are the same edge): 1-0 (lines 1 and 4), 2-1 (lines 2 and 6), "
        "0-1 (lines 1 and 7) and 2 more"
    )


def test_every_edge_in_both_directions_is_a_known_format(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "both.txt"
    path.write_text("0 1\n1 0\n1 2\n2 1\n2 0\n0 2\n")
    with caplog.at_level(logging.INFO, logger="p2pfl.topology"):
        assert read_topology_file(path).number_of_edges() == 3
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "lists every edge in both directions; read as 3 undirected edges" in caplog.text


def test_repeated_json_edges(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    nodes = [{"id": "a"}, {"id": "b"}, {"id": "c"}]
    edges = [{"source": "a", "target": "b"}, {"source": "b", "target": "c"}, {"source": "b", "target": "a"}]
    path = tmp_path / "dup.json"
    path.write_text(json.dumps({"nodes": nodes, "edges": edges}))
    with caplog.at_level(logging.WARNING, logger="p2pfl.topology"):
        assert read_topology_file(path).number_of_edges() == 2
    assert (
        "1 edge(s) repeat an earlier edge and were merged into it (links are undirected): b-a (edges[0] and edges[2])"
        in caplog.text
    )
    edges[2]["weight"] = 0.5
    path.write_text(json.dumps({"nodes": nodes, "edges": edges}))
    with pytest.raises(
        TopologyError,
        match=r"edge 'b'-'a' is listed twice with different weights \(edges\[0\] and edges\[2\]\)",
    ):
        read_topology_file(path)


def test_repeated_graphml_edges_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.graphml"
    nx.write_graphml(nx.MultiGraph([("a", "b"), ("b", "c"), ("b", "a")]), path)
    with pytest.raises(TopologyError, match="parallel edges between 'a' and 'b'; list each edge once"):
        read_topology_file(path)
