"""Byzantine-robust aggregators: drop-in replacements for the default ``mix``.

Every class here implements :class:`~p2pfl.aggregation.base.Aggregator`: called once per
round in the node's worker thread with its own tensors, the neighbours' tensors that
arrived (read-only views of the received frames) and the round's mixing weights; it
returns new float arrays of the input dtype and never touches its inputs. Peers are
visited in name order, so results do not depend on arrival order.

================  ===============================  =====================================
spec              aggregator                       mixing weights
================  ===============================  =====================================
mean              :func:`~p2pfl.aggregation.mix`   used (renormalised over the present)
median            :class:`CoordinateMedian`        ignored: present models count equally
trimmed-mean:B    :class:`TrimmedMean`             ignored: present models count equally
krum:F            :class:`Krum`                    ignored: present models count equally
multi-krum:F,M    :class:`Krum` (``multi=M``)      ignored: present models count equally
clipped-gossip    :class:`ClippedGossip`           used (renormalised over the present)
================  ===============================  =====================================

Where each is meaningful:

* ``median`` / ``trimmed-mean`` / ``krum`` filter among the node's own model and its
  arrived neighbours, so they only help where each node sees several models per round:
  degree >= 2 for the median (>= 2b for trimmed-mean to trim anything, 2f+2 for Krum,
  which otherwise falls back to the median). Because they ignore the mixing weights
  they no longer compute the doubly-stochastic average ``W x``; on honest data they
  still reach consensus on regular graphs, but slower, and on non-IID data the median
  of a few models is a biased estimate of their mean.
* ``clipped-gossip`` keeps the gossip weights, so without attackers (and a radius
  above the honest distances) it *is* ``mix``, and it works on any topology, sparse
  ones included; it is the one designed for decentralized training.
* ``mean`` has no defence: one neighbour sending ``100 * w`` takes the model with it.

What never reaches an aggregator: messages with NaN or Inf weights are rejected when
decoded (reason ``non_finite`` in ``messages_rejected``), so such a neighbour simply
counts as missing for that round (and costs its neighbours the round timeout).
"""

from __future__ import annotations

from p2pfl.aggregation.base import Aggregator, mix
from p2pfl.aggregation.clipped import ClippedGossip
from p2pfl.aggregation.robust import CoordinateMedian, Krum, TrimmedMean
from p2pfl.errors import ConfigError

__all__ = [
    "AGGREGATOR_FORMS", "Aggregator", "ClippedGossip", "CoordinateMedian", "Krum", "TrimmedMean", "build_aggregator",
    "mix",
]

AGGREGATOR_FORMS = (
    "mean", "median", "trimmed-mean:B (B an int count or a fraction like 0.2)", "krum:F",
    "multi-krum:F,M", "clipped-gossip", "clipped-gossip:TAU",
)


def build_aggregator(spec: str) -> Aggregator:
    """The aggregator a spec names (see the module docstring for the forms).

    ``mean`` returns :func:`~p2pfl.aggregation.base.mix` itself, so the default path stays
    bit-identical to a node built without an aggregator.

    Raises:
        ConfigError: (field ``aggregator``) an unknown name or a malformed parameter.
    """
    name, sep, arg = spec.strip().partition(":")
    name, arg = name.strip().lower(), arg.strip()
    if name in ("mean", "median") and not sep:
        return CoordinateMedian() if name == "median" else mix
    if name == "trimmed-mean" and arg:
        return TrimmedMean(_number(spec, arg))
    if name == "krum" and arg:
        return Krum(_int(spec, arg))
    if name == "multi-krum" and arg.count(",") == 1:
        f, m = arg.split(",")
        return Krum(_int(spec, f), multi=_int(spec, m))
    if name == "clipped-gossip":
        return ClippedGossip(_float(spec, arg) if sep else None)
    raise ConfigError("aggregator", f"unknown aggregator {spec!r}; valid forms: {', '.join(AGGREGATOR_FORMS)}")


def _int(spec: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError("aggregator", f"{spec!r}: {text.strip()!r} is not an integer") from None


def _float(spec: str, text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ConfigError("aggregator", f"{spec!r}: {text.strip()!r} is not a number") from None


def _number(spec: str, text: str) -> int | float:
    # an integer literal is a count (trimmed-mean:1), anything else a fraction (0.2)
    try:
        return int(text)
    except ValueError:
        return _float(spec, text)
