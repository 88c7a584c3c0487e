"""`build_topology`: one entry point for generator specs and topology files."""

from __future__ import annotations

import logging
from pathlib import Path

from p2pfl.errors import TopologyError
from p2pfl.topology.files import looks_like_path, read_topology_file
from p2pfl.topology.generators import generate
from p2pfl.topology.mixing import check_connected, mixing_matrix, resolve_mixing_method
from p2pfl.topology.model import Topology

__all__ = ["build_topology"]

logger = logging.getLogger(__name__)


def build_topology(
    spec: str, nodes: int | None = None, *, seed: int = 0, mixing: str = "metropolis"
) -> Topology:
    """Build a topology from a generator spec or a topology file.

    Args:
        spec: a file path (``.graphml``, ``.json``, ``.txt``, ``.edges``, ``.edgelist``,
            ``.el``) or a generator spec ``name[:params]`` such as ``ring``,
            ``torus:4x4``, ``random-regular:3``, ``erdos-renyi:p=0.3``, ``small-world:6,0.2``.
            Anything with a path separator or a word-like extension is taken as a path.
        nodes: number of nodes. Required for generators unless the spec fixes it
            (``torus:RxC``, ``grid:RxC``); for files it is optional and must match.
        seed: seed for random generators (non-negative); same seed, same graph.
        mixing: ``metropolis`` (default), ``max-degree`` / ``uniform``, or
            ``file`` / ``weights`` to take edge ``weight`` attributes from a file.

    Returns:
        The topology, with a validated mixing matrix.

    Raises:
        TopologyError: for any invalid spec, parameter, file, node count, or a
            graph/matrix that cannot be used for gossip averaging.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise TopologyError(
            f"topology spec must be a non-empty string (generator or file path), got {spec!r}"
        )
    spec = spec.strip()
    if nodes is not None and (isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1):
        raise TopologyError(f"nodes must be a positive integer or None, got {nodes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TopologyError(f"seed must be a non-negative integer, got {seed!r}")
    method = resolve_mixing_method(mixing)

    # Decide by the spec's shape, not by what happens to exist in the working
    # directory, so a stray file called "ring" cannot shadow the generator.
    if looks_like_path(spec):
        graph = read_topology_file(Path(spec))
        if nodes is not None and nodes != graph.number_of_nodes():
            raise TopologyError(
                f"{spec} has {graph.number_of_nodes()} nodes but nodes={nodes} was asked for; "
                "omit nodes or make it match the file"
            )
    else:
        if method == "file":
            raise TopologyError(
                f"mixing={mixing!r} reads edge weights from a topology file, but {spec!r} is a generator; "
                "use mixing='metropolis' or 'max-degree', or give a weighted file"
            )
        graph = generate(spec, nodes, seed)
        for i in graph.nodes:
            graph.nodes[i]["name"] = str(i)

    # Connectivity first: with a disconnected graph every other complaint is moot.
    check_connected(graph)
    topology = Topology(graph=graph, mixing=mixing_matrix(graph, method), spec=spec, mixing_method=method)
    logger.debug(
        "built topology %s: %d nodes, %d edges, mixing=%s", spec, topology.n, graph.number_of_edges(), method
    )
    return topology
