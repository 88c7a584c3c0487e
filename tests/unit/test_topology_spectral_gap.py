"""Mixing matrices with spectral gap 0 are refused: gossip on them never converges."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from p2pfl.cli.main import EXIT_CODES, main
from p2pfl.errors import TopologyError
from p2pfl.topology import build_topology, spectral_gap, validate_mixing

GENERATOR_SIZES = [
    ("ring", (3, 4, 5, 8, 16)),
    ("line", (2, 3, 4, 7)),
    ("star", (2, 3, 9)),
    ("complete", (2, 3, 6)),
    ("torus", (9, 12, 16)),
    ("grid", (2, 4, 6, 12)),
    ("hypercube", (2, 4, 8, 16)),
    ("random-regular", (6, 10, 20)),
    ("erdos-renyi", (5, 12, 30)),
    ("small-world", (6, 10, 20)),
    ("exponential", (2, 3, 8, 12)),
]


@pytest.mark.parametrize("mixing", ["metropolis", "max-degree"])
@pytest.mark.parametrize(("spec", "sizes"), GENERATOR_SIZES)
def test_every_generator_has_a_positive_gap(spec: str, sizes: tuple[int, ...], mixing: str) -> None:
    for nodes in sizes:  # even rings, bipartite grids and hypercubes included
        topology = build_topology(spec, nodes, mixing=mixing)
        assert spectral_gap(topology.mixing) > 1e-6, (spec, nodes)


def test_every_ready_made_file_validates() -> None:
    for path in sorted(Path(__file__).resolve().parents[2].joinpath("topologies").iterdir()):
        if path.suffix != ".md":
            build_topology(str(path))
            if path.name.startswith("weighted"):
                build_topology(str(path), mixing="file")


def _file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "w.txt"
    path.write_text(text)
    return str(path)


def test_zero_weights_giving_the_identity_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"spectral gap 0 \(second-largest \|eigenvalue\| = 1\).*weight 0"):
        build_topology(_file(tmp_path, "0 1 0\n1 2 0\n2 0 0\n"), mixing="file")


def test_a_zero_weight_edge_that_cuts_the_graph_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"spectral gap 0.*node 3 exchanges nothing"):
        build_topology(_file(tmp_path, "0 1 0.3\n1 2 0.3\n2 0 0.3\n2 3 0\n"), mixing="file")


def test_a_periodic_ring_without_self_weights_is_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, "0 1 0.5\n1 2 0.5\n2 3 0.5\n3 0 0.5\n")
    with pytest.raises(TopologyError, match=r"spectral gap 0.*bipartite.*positive self weights.*metropolis"):
        build_topology(path, mixing="file")
    # the same ring with a little self weight converges
    assert spectral_gap(build_topology(_file(tmp_path, "0 1 0.4\n1 2 0.5\n2 3 0.4\n3 0 0.5\n"), mixing="file").mixing) > 0


def test_an_odd_ring_without_self_weights_is_accepted() -> None:
    # aperiodic: the odd cycle damps the oscillation, so the gap is positive
    w = 0.5 * nx.to_numpy_array(nx.cycle_graph(5))
    validate_mixing(w, nx.cycle_graph(5))
    assert spectral_gap(w) > 0


def test_zero_gap_agrees_with_the_eigenvalues() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        graph = nx.cycle_graph(int(rng.integers(3, 8)))
        n = graph.number_of_nodes()
        w = np.zeros((n, n))
        for u, v in graph.edges:
            w[u, v] = w[v, u] = rng.choice([0.0, 0.5])
        np.fill_diagonal(w, 1 - w.sum(axis=1))
        try:
            validate_mixing(w, graph)
        except TopologyError as exc:
            assert "spectral gap 0" in str(exc)
            assert spectral_gap(w) == pytest.approx(0, abs=1e-9)
        else:
            assert spectral_gap(w) > 1e-9


def test_topology_show_exits_with_the_topology_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _file(tmp_path, "0 1 0.5\n1 2 0.5\n2 3 0.5\n3 0 0.5\n")
    assert main(["topology", "show", path, "--mixing", "file"]) == EXIT_CODES[TopologyError]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "spectral gap 0" in err
