"""Communication topologies for serverless federated learning.

A :class:`Topology` is a graph of nodes plus the mixing matrix they average with.
Build one from a generator spec (``ring``, ``torus:4x4``, ``random-regular:3`` ...) or a
file (GraphML, JSON node-link, edge list) with :func:`build_topology`; inspect it with
:func:`describe`; turn it into per-round instructions with a gossip schedule.
"""

from __future__ import annotations

from p2pfl.topology.analysis import describe, format_description, spectral_gap
from p2pfl.topology.build import build_topology
from p2pfl.topology.drawing import draw_topology
from p2pfl.topology.files import TOPOLOGY_SUFFIXES, read_topology_file, write_topology_file
from p2pfl.topology.generators import generator_names
from p2pfl.topology.mixing import MIXING_METHODS, check_connected, mixing_matrix, validate_mixing
from p2pfl.topology.model import Topology
from p2pfl.topology.schedule import (
    GossipSchedule,
    RandomPeerSchedule,
    RoundPlan,
    StaticSchedule,
    mixing_matrix_for_round,
)

__all__ = [
    "GossipSchedule",
    "MIXING_METHODS",
    "RandomPeerSchedule",
    "RoundPlan",
    "StaticSchedule",
    "TOPOLOGY_SUFFIXES",
    "Topology",
    "build_topology",
    "check_connected",
    "describe",
    "draw_topology",
    "format_description",
    "generator_names",
    "mixing_matrix",
    "mixing_matrix_for_round",
    "read_topology_file",
    "spectral_gap",
    "validate_mixing",
    "write_topology_file",
]
