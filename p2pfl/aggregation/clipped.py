"""ClippedGossip: gossip averaging with every neighbour's pull clipped to a radius."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from p2pfl.aggregation._common import Weights, flatten, present_peers
from p2pfl.errors import ConfigError


class ClippedGossip:
    """``x_i + sum_j w_ij * clip(x_j - x_i, tau)`` (He, Karimireddy & Jaggi, 2022).

    ``clip(v, tau) = v * min(1, tau / ||v||)`` with ``||.||`` the L2 norm over all
    tensors of the model, so a neighbour can move this node by at most ``w_ij * tau``
    however far away its model is. The mixing weights ``w_ij`` are renormalised over the
    node itself and the peers that arrived (as :func:`~p2pfl.aggregation.base.mix` does);
    with ``tau = inf`` the result is exactly ``mix``'s up to rounding.

    Adaptive radius (``tau=None``): each round, ``tau`` is the ``(1 - beta)``-quantile
    (inverted-CDF, i.e. an actual observed value) of the present neighbours' distances
    ``||x_j - x_i||``, unweighted. The default ``beta = 0.5`` clips to the median
    distance: as long as fewer than half of a node's arrived neighbours are Byzantine,
    ``tau`` is set by an honest distance, so the Byzantine pull is bounded by honest
    disagreement while the closer half of the honest neighbours pass unclipped. This is
    a simplification of the paper's rule (which picks ``tau`` from the weight of the
    farthest neighbours) that needs no bound on the Byzantine weight per node.

    Args:
        tau: fixed clipping radius (``>= 0``; 0 never moves), or ``None`` for adaptive.
        beta: for the adaptive radius, the share of neighbours allowed to be clipped
            beyond the quantile, in ``[0, 1)``.

    Raises:
        ConfigError: ``tau < 0`` or ``beta`` outside ``[0, 1)``.
    """

    def __init__(self, tau: float | None = None, *, beta: float = 0.5) -> None:
        if tau is not None and not tau >= 0:
            raise ConfigError("aggregator", f"clipped-gossip: tau must be >= 0, got {tau}")
        if not 0 <= beta < 1:
            raise ConfigError("aggregator", f"clipped-gossip: beta must be in [0, 1), got {beta}")
        self.tau = tau
        self.beta = beta

    def radius(self, distances: np.ndarray) -> float:
        """The clipping radius for this round given the neighbours' distances."""
        if self.tau is not None:
            return self.tau
        return float(np.quantile(distances, 1 - self.beta, method="inverted_cdf"))

    def __call__(
        self,
        own_name: str,
        own: Mapping[str, np.ndarray],
        received: Mapping[str, Mapping[str, np.ndarray]],
        weights: Mapping[str, float],
    ) -> Weights:
        peers = present_peers(received, weights)
        if not peers:
            return {name: np.array(tensor, copy=True) for name, tensor in own.items()}
        names = sorted(own)
        base = flatten(own, names)
        deltas = [flatten(received[p], names) - base for p in peers]
        distances = np.array([np.linalg.norm(d) for d in deltas])
        tau = self.radius(distances)
        total = weights[own_name] + sum(weights[p] for p in peers)
        step = np.zeros_like(base)
        for peer, delta, distance in zip(peers, deltas, distances, strict=True):
            scale = 1.0 if distance <= tau else tau / distance
            step += delta * (weights[peer] / total * scale)
        out: Weights = {}
        offset = 0
        for name in names:
            tensor = own[name]
            size = tensor.size
            moved = np.asarray(tensor, dtype=np.float64) + step[offset : offset + size].reshape(tensor.shape)
            out[name] = moved.astype(tensor.dtype)
            offset += size
        return {name: out[name] for name in own}  # the caller's key order

    def __repr__(self) -> str:
        return f"ClippedGossip(tau={self.tau!r}, beta={self.beta!r})"
