"""describe / format_description / draw_topology."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from p2pfl.topology import build_topology, describe, draw_topology, format_description

HOSPITALS = Path(__file__).resolve().parents[2] / "topologies" / "hospitals-10.graphml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_describe_ring() -> None:
    desc = describe(build_topology("ring", 16))
    assert desc["spec"] == "ring"
    assert desc["nodes"] == 16 and desc["edges"] == 16
    assert desc["degree"] == {"min": 2, "max": 2, "mean": 2.0}
    assert desc["diameter"] == 8
    assert desc["spectral_gap"] == pytest.approx(0.0507, abs=1e-3)
    assert desc["mixing"] == "metropolis"
    assert desc["node_names"][:3] == ["0", "1", "2"]
    assert desc["edge_list"][:2] == [[0, 1], [0, 15]]
    json.dumps(desc)  # JSON-friendly


def test_format_description_mentions_the_numbers() -> None:
    text = format_description(describe(build_topology(str(HOSPITALS))))
    assert "hospitals-10.graphml" in text
    assert "spectral gap" in text
    assert "st-marys" in text
    assert len(text.splitlines()) >= 6


@pytest.mark.parametrize(("spec", "nodes"), [("ring", 8), ("star", 12), (str(HOSPITALS), None), ("er", 60)])
def test_draw_topology_writes_png(tmp_path: Path, spec: str, nodes: int | None) -> None:
    out = tmp_path / "topo.png"
    draw_topology(build_topology(spec, nodes), out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        assert pyplot.get_fignums() == []  # nothing left open in pyplot
