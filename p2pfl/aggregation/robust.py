"""Aggregators that treat the present models uniformly: median, trimmed mean, Krum.

Each looks at the node's own model plus every neighbour model that arrived this round
and ignores the mixing weights (a weight says how much a neighbour is trusted to be
representative, which is exactly what a Byzantine neighbour would abuse).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from p2pfl.aggregation._common import Weights, flatten, models, present_peers, stack
from p2pfl.errors import ConfigError

log = logging.getLogger(__name__)


class CoordinateMedian:
    """Per-coordinate median over the node's own model and the arrived ones.

    With ``n`` models it tolerates fewer than ``n / 2`` arbitrary ones per coordinate;
    with an even count it averages the two middle values.
    """

    def __call__(
        self,
        own_name: str,
        own: Mapping[str, np.ndarray],
        received: Mapping[str, Mapping[str, np.ndarray]],
        weights: Mapping[str, float],
    ) -> Weights:
        members = models(own, received, present_peers(received, weights))
        return {
            name: np.median(stack(members, name), axis=0).astype(tensor.dtype)
            for name, tensor in own.items()
        }

    def __repr__(self) -> str:
        return "CoordinateMedian()"


class TrimmedMean:
    """Per-coordinate mean after dropping the ``b`` largest and ``b`` smallest values.

    Args:
        trim: ``b`` itself (an ``int``) or a fraction of the present model count (a
            ``float`` in ``[0, 0.5)``, rounded down). ``b`` is clamped so that at least
            one value per coordinate stays: with ``n`` models, ``b <= (n - 1) // 2``
            (so one arrived model of two is never both trimmed away).

    Raises:
        ConfigError: ``trim`` is negative, or a fraction outside ``[0, 0.5)``.
    """

    def __init__(self, trim: int | float) -> None:
        if isinstance(trim, bool) or not isinstance(trim, int | float):
            raise ConfigError("aggregator", f"trimmed-mean: trim must be an int or a float, got {trim!r}")
        if isinstance(trim, int) and trim < 0:
            raise ConfigError("aggregator", f"trimmed-mean: trim count must be >= 0, got {trim}")
        if isinstance(trim, float) and not 0 <= trim < 0.5:
            raise ConfigError("aggregator", f"trimmed-mean: trim fraction must be in [0, 0.5), got {trim}")
        self.trim = trim

    def trimmed(self, count: int) -> int:
        """How many values are dropped at each end when ``count`` models are present."""
        b = self.trim if isinstance(self.trim, int) else int(self.trim * count)
        return min(b, (count - 1) // 2)

    def __call__(
        self,
        own_name: str,
        own: Mapping[str, np.ndarray],
        received: Mapping[str, Mapping[str, np.ndarray]],
        weights: Mapping[str, float],
    ) -> Weights:
        members = models(own, received, present_peers(received, weights))
        b = self.trimmed(len(members))
        out: Weights = {}
        for name, tensor in own.items():
            # sorting makes the kept set, and the order it is summed in, independent of
            # which peer sent which value
            ordered = np.sort(stack(members, name), axis=0)
            out[name] = ordered[b : len(members) - b].mean(axis=0).astype(tensor.dtype)
        return out

    def __repr__(self) -> str:
        return f"TrimmedMean({self.trim!r})"


class Krum:
    """Krum (Blanchard et al. 2017) and multi-Krum over the own and the arrived models.

    Each model is scored by the summed squared distance (over all tensors) to its
    ``n - f - 2`` nearest other models; the ``multi`` lowest-scoring models are averaged
    uniformly (``multi=1``: plain Krum, the winner is copied). Ties go to the node's own
    model, then to peers in name order.

    Krum's guarantee needs ``n >= 2f + 3`` models. With fewer present (a small degree, or
    neighbours missing this round) it falls back to the coordinate median, which
    still tolerates a minority of bad models, and logs that once.

    Args:
        f: Byzantine models to tolerate among the ``n`` present.
        multi: models to average; clamped to ``n - f`` (never average a suspected one
            just because it is needed to reach the count).

    Raises:
        ConfigError: ``f < 0`` or ``multi < 1``.
    """

    def __init__(self, f: int, multi: int = 1) -> None:
        if f < 0:
            raise ConfigError("aggregator", f"krum: f must be >= 0, got {f}")
        if multi < 1:
            raise ConfigError("aggregator", f"multi-krum: the number of models to average must be >= 1, got {multi}")
        self.f = f
        self.multi = multi
        self._fallback = CoordinateMedian()
        self._warned = False

    def select(self, vectors: list[np.ndarray]) -> list[int]:
        """Indices of the chosen models among ``vectors`` (flattened models), best first."""
        n = len(vectors)
        stacked = np.stack(vectors)
        # direct differences, not the Gram-matrix shortcut: that one cancels badly for
        # near-identical models and could reorder close scores
        distances = np.array([((stacked - v) ** 2).sum(axis=1) for v in stacked])
        nearest = n - self.f - 2
        scores = np.array([np.sort(np.delete(distances[i], i))[:nearest].sum() for i in range(n)])
        order = np.argsort(scores, kind="stable")
        return [int(i) for i in order[: min(self.multi, n - self.f)]]

    def __call__(
        self,
        own_name: str,
        own: Mapping[str, np.ndarray],
        received: Mapping[str, Mapping[str, np.ndarray]],
        weights: Mapping[str, float],
    ) -> Weights:
        members = models(own, received, present_peers(received, weights))
        if len(members) < 2 * self.f + 3:
            if not self._warned:
                self._warned = True
                log.warning(
                    "node %s: krum with f=%d needs at least %d models, %d present; using the "
                    "coordinate median instead (logged once)",
                    own_name, self.f, 2 * self.f + 3, len(members),
                )
            return self._fallback(own_name, own, received, weights)
        names = sorted(own)
        chosen = self.select([flatten(m, names) for m in members])
        return {
            name: stack([members[i] for i in chosen], name).mean(axis=0).astype(tensor.dtype)
            for name, tensor in own.items()
        }

    def __repr__(self) -> str:
        return f"Krum(f={self.f}, multi={self.multi})"
