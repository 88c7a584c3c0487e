"""Weighted averaging of a node's model with what its neighbours sent.

``Aggregator`` and ``mix`` live in :mod:`p2pfl.aggregation.base` (aggregation sits below
the node); they are re-exported here for code that imports them from this module.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from p2pfl.aggregation.base import Aggregator, mix
from p2pfl.wire import first_non_finite

__all__ = ["Aggregator", "all_finite", "mix"]


def all_finite(weights: Mapping[str, np.ndarray]) -> bool:
    """No NaN or Inf in any floating-point tensor of ``weights``."""
    return first_non_finite(weights) is None
