"""Helpers for testing code built on p2pfl, shipped with the package like ``trio.testing``.

Users test their own learners, schedules and intruder scenarios the way p2pfl's own
tests do:

- nodes: :func:`tiny_learner`, :func:`tiny_node`, :func:`connected_nodes` (N started
  nodes over a topology, always stopped) and :func:`run_all`;
- raw messages: :func:`model_frames`, :func:`with_header`;
- results: :func:`assert_same_weights` (models against a closed-form reference);
- hostile traffic: :class:`Hostile` (every way a peer may lie on the wire),
  :func:`outcome_of` (what the decoder makes of a message) and :func:`attack` /
  :func:`check` (a live node under that traffic; ``scripts/fuzz_node.py`` is its CLI);
- network faults: :class:`FaultProxy` and :class:`ProxyLink` (TCP links that can be cut,
  healed and slowed down; also importable as ``p2pfl.netfault``).

Submodules load on first use of one of their names (PEP 562): importing this package
starts nothing and imports neither torch nor pyzmq.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pfl._lazy import lazy_exports

# public name -> submodule that defines it
_LAZY = {
    "DECODER_REASONS": "p2pfl.testing.outcomes",
    "FaultProxy": "p2pfl.testing.faults",
    "Hostile": "p2pfl.testing.hostile",
    "LinkStats": "p2pfl.testing.faults",
    "NODE_REASONS": "p2pfl.testing.outcomes",
    "ProxyLink": "p2pfl.testing.faults",
    "Report": "p2pfl.testing.fuzzing",
    "assert_same_weights": "p2pfl.testing.compare",
    "attack": "p2pfl.testing.fuzzing",
    "check": "p2pfl.testing.fuzzing",
    "connected_nodes": "p2pfl.testing.nodes",
    "model_frames": "p2pfl.testing.messages",
    "outcome_of": "p2pfl.testing.outcomes",
    "run_all": "p2pfl.testing.nodes",
    "tiny_learner": "p2pfl.testing.learners",
    "tiny_node": "p2pfl.testing.nodes",
    "with_header": "p2pfl.testing.messages",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports('p2pfl.testing', globals(), _LAZY, __all__)


if TYPE_CHECKING:  # let type checkers and IDEs see the lazy names
    from p2pfl.testing.compare import assert_same_weights
    from p2pfl.testing.faults import FaultProxy, LinkStats, ProxyLink
    from p2pfl.testing.fuzzing import Report, attack, check
    from p2pfl.testing.hostile import Hostile
    from p2pfl.testing.learners import tiny_learner
    from p2pfl.testing.messages import model_frames, with_header
    from p2pfl.testing.nodes import connected_nodes, run_all, tiny_node
    from p2pfl.testing.outcomes import DECODER_REASONS, NODE_REASONS, outcome_of
