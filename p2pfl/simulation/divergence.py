"""Saying so when a run's models drift apart instead of agreeing.

A CHOCO step γ too large for its codec and graph (or an attack that gets through) shows
as accuracy that climbs, then falls, while the consensus distance grows by orders of
magnitude. The run still exits 0, so the fall must be loud: one warning, and the round
in ``summary.json``.
"""

from __future__ import annotations

import logging
import math

logger = logging.getLogger(__name__)

#: a fall in mean accuracy from its best that no healthy run shows between rounds
ACCURACY_FALL = 0.1
#: how much the consensus distance must have grown since the best round
DISTANCE_GROWTH = 10.0


class DivergenceWatch:
    """Follows each closed round's mean accuracy and consensus distance.

    Args:
        hint: what to try, appended to the warning (e.g. a smaller CHOCO γ).
    """

    def __init__(self, hint: str = "") -> None:
        self._hint = hint
        self._best = -math.inf
        self._distance_at_best = math.inf
        #: the first round that looked diverged, or None
        self.diverged_at: int | None = None

    def round_closed(self, round_: int, mean_accuracy: float, consensus_distance: float) -> None:
        if self.diverged_at is not None or not math.isfinite(mean_accuracy):
            return
        if mean_accuracy > self._best:
            self._best, self._distance_at_best = mean_accuracy, consensus_distance
            return
        fell = self._best - mean_accuracy >= ACCURACY_FALL
        grew = not math.isfinite(consensus_distance) or consensus_distance > DISTANCE_GROWTH * self._distance_at_best
        if fell and grew:
            self.diverged_at = round_
            logger.warning(
                "round %d: mean accuracy fell from %.3f to %.3f while the consensus distance grew from %.3g "
                "to %.3g: the models are drifting apart%s",
                round_, self._best, mean_accuracy, self._distance_at_best, consensus_distance,
                f"; {self._hint}" if self._hint else "",
            )


def divergence_hint(gossip: str) -> str:
    """What to try when a run with ``gossip`` drifts apart."""
    if gossip.startswith("choco"):
        return ("with gossip = \"choco:GAMMA\" take a smaller GAMMA or a larger top-k fraction "
                "(docs/explanations/compression.md)")
    return ""
