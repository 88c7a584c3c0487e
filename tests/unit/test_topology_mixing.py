"""Mixing matrices, their validation and spectral gaps."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest

from p2pfl.errors import TopologyError
from p2pfl.topology import build_topology, mixing_matrix, spectral_gap, validate_mixing


def test_ring_16_metropolis_spectral_gap() -> None:
    # Eigenvalues of the MH ring are (1 + 2 cos(2 pi k / 16)) / 3.
    gap = spectral_gap(build_topology("ring", 16).mixing)
    assert gap == pytest.approx(0.0507, abs=1e-3)
    assert gap == pytest.approx(1 - (1 + 2 * math.cos(2 * math.pi / 16)) / 3, abs=1e-12)


def test_complete_graph_mixes_in_one_step() -> None:
    topo = build_topology("complete", 9)
    np.testing.assert_allclose(topo.mixing, np.full((9, 9), 1 / 9))
    assert spectral_gap(topo.mixing) == pytest.approx(1.0)


@pytest.mark.parametrize("dim", [2, 3, 4, 6])
def test_hypercube_gap_matches_closed_form(dim: int) -> None:
    # W = (I + A) / (d + 1) and A has eigenvalues d - 2k, so |lambda_2| = (d - 1) / (d + 1).
    gap = spectral_gap(build_topology("hypercube", 2**dim).mixing)
    assert gap == pytest.approx(2 / (dim + 1), abs=1e-12)


def test_metropolis_weights_on_a_star() -> None:
    w = build_topology("star", 5).mixing
    assert w[0, 1] == pytest.approx(1 / 5)  # max(d_hub=4, d_leaf=1) + 1
    assert w[1, 1] == pytest.approx(4 / 5)
    assert w[0, 0] == pytest.approx(1 / 5)


def test_max_degree_mixing() -> None:
    topo = build_topology("star", 5, mixing="uniform")
    assert topo.mixing_method == "max-degree"
    assert topo.mixing[1, 0] == pytest.approx(1 / 5)
    assert topo.mixing[1, 1] == pytest.approx(4 / 5)
    validate_mixing(topo.mixing, topo.graph)
    line = build_topology("line", 4, mixing="max_degree").mixing
    assert line[0, 1] == pytest.approx(1 / 3) and line[0, 0] == pytest.approx(2 / 3)


def _ring(n: int) -> nx.Graph:
    graph = nx.cycle_graph(n)
    for i in graph:
        graph.nodes[i]["name"] = f"h{i}"
    return graph


def test_validate_rejects_asymmetric() -> None:
    w = mixing_matrix(_ring(4))
    w[0, 1] += 0.1
    w[0, 0] -= 0.1
    with pytest.raises(TopologyError, match=r"not symmetric: W\[0,1\]"):
        validate_mixing(w, _ring(4))


def test_validate_rejects_bad_row_sum() -> None:
    w = np.eye(4) * 0.5
    with pytest.raises(TopologyError, match=r"row 0 \(node 0 \('h0'\)\) sums to 0.5"):
        validate_mixing(w, _ring(4))


def test_validate_rejects_negative_and_nonfinite() -> None:
    w = mixing_matrix(_ring(4))
    bad = w.copy()
    bad[0, 1] = bad[1, 0] = -0.1
    with pytest.raises(TopologyError, match=r"W\[0,1\] = -0.1 is negative"):
        validate_mixing(bad, _ring(4))
    bad = w.copy()
    bad[2, 2] = np.nan
    with pytest.raises(TopologyError, match=r"W\[2,2\] = nan is not finite"):
        validate_mixing(bad, _ring(4))


def test_validate_rejects_weight_off_the_graph() -> None:
    graph = _ring(4)
    w = np.full((4, 4), 0.25)
    with pytest.raises(
        TopologyError, match=r"W\[0,2\] = 0.25 is nonzero but node 0 \('h0'\) and node 2 \('h2'\) are not"
    ):
        validate_mixing(w, graph)


def test_validate_rejects_shape_and_disconnection() -> None:
    with pytest.raises(TopologyError, match="must be square"):
        validate_mixing(np.ones((2, 3)), _ring(3))
    with pytest.raises(TopologyError, match="is 3x3 but the graph has 4 nodes"):
        validate_mixing(np.eye(3), _ring(4))
    two = nx.Graph([(0, 1), (2, 3)])
    with pytest.raises(TopologyError, match=r"not connected: 2 components.*node 0 cannot reach node 2"):
        validate_mixing(np.eye(4), two)  # a valid matrix: only connectivity fails


def test_spectral_gap_rejects_non_symmetric() -> None:
    with pytest.raises(TopologyError, match="symmetric"):
        spectral_gap(np.array([[0.5, 0.5], [0.0, 1.0]]))
    assert spectral_gap(np.ones((1, 1))) == 1.0
