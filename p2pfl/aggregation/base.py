"""The aggregator seam and the default weighted mean every node uses unless told otherwise."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from p2pfl.aggregation._common import Weights


class Aggregator(Protocol):
    """How a node combines its model with its neighbours' (``mix`` is the default).

    Called in the worker thread once per round with this node's name, its own tensors,
    the tensors that arrived (by peer) and the round's mixing weights (own name and
    every expected peer; renormalise over the present ones). Must return new arrays and
    leave its inputs untouched: ``own`` may still be queued for sending.
    """

    def __call__(
        self,
        own_name: str,
        own: Mapping[str, np.ndarray],
        received: Mapping[str, Mapping[str, np.ndarray]],
        weights: Mapping[str, float],
    ) -> Weights: ...


def mix(
    own_name: str,
    own: Mapping[str, np.ndarray],
    received: Mapping[str, Mapping[str, np.ndarray]],
    weights: Mapping[str, float],
) -> Weights:
    """Average ``own`` with ``received`` using mixing ``weights``.

    Weights are renormalised over the node itself and the peers that actually arrived,
    so a missing neighbour shifts its share onto the others instead of pulling the model
    towards zero. Peers are summed in name order so the result does not depend on
    arrival order (same seed, same bits).

    Args:
        own_name: this node's key in ``weights``.
        own: this node's tensors after local training.
        received: peer name -> that peer's tensors.
        weights: mixing weight for ``own_name`` and for each expected peer.
    """
    present = [own_name, *sorted(p for p in received if p in weights)]
    total = sum(weights[p] for p in present)
    mixed: Weights = {}
    for name, tensor in own.items():
        acc = tensor * (weights[own_name] / total)  # a new array: ``own`` may be in flight
        # each term goes through one scratch array (the same bits as ``acc += r * w``):
        # a fresh temporary per peer and tensor cost a model-sized allocation each
        scratch = np.empty_like(acc) if len(present) > 1 else acc
        for peer in present[1:]:
            acc += np.multiply(received[peer][name], weights[peer] / total, out=scratch)
        mixed[name] = acc.astype(tensor.dtype, copy=False)
    return mixed
