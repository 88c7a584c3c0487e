"""Differential privacy for p2pfl learners (optional: needs ``pip install 'p2pfl-gossip[privacy]'``).

Two mechanisms a :class:`~p2pfl.learning.learner.TorchLearner` trains under
(``TorchLearner(..., privacy=DPSGD(...))``); a node runs the learner unchanged:

* sample-level DP-SGD (:class:`DPSGD`): Opacus clips per-sample gradients and
  noises every step; ε protects each training example.
* update-level DP (:class:`UpdateDP`): each round's model update is clipped and
  noised before it leaves the node; ε protects the node's whole contribution.

:class:`DPSGDLearner` and :class:`UpdateDPLearner` (a wrapper for any ``Learner``) are the
same mechanisms under the names of earlier versions. Each reports its cumulative ε after every round (:class:`PrivateTrainResult`), which the
node records as ``RoundMetrics.epsilon``. Names load lazily: importing this package
does not import Opacus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pfl._lazy import lazy_exports

_LAZY = {
    "DPSGD": "p2pfl.privacy.dp_sgd",
    "DPSGDLearner": "p2pfl.privacy.dp_sgd",
    "DP_MODES": "p2pfl.privacy.modes",
    "GaussianMechanism": "p2pfl.privacy.accounting",
    "PrivateTrainResult": "p2pfl.privacy.accounting",
    "UpdateDP": "p2pfl.privacy.update_dp",
    "UpdateDPLearner": "p2pfl.privacy.update_dp",
    "epsilon_for": "p2pfl.privacy.accounting",
    "noise_for_epsilon": "p2pfl.privacy.accounting",
    "privacy_summary": "p2pfl.privacy.accounting",
    "privatize": "p2pfl.privacy.factory",
    "privatize_update": "p2pfl.privacy.update_dp",
}

# spelled out (not sorted(_LAZY)) so linters see the TYPE_CHECKING re-exports as used
__all__ = [
    "DPSGD",
    "DPSGDLearner",
    "DP_MODES",
    "GaussianMechanism",
    "PrivateTrainResult",
    "UpdateDP",
    "UpdateDPLearner",
    "epsilon_for",
    "noise_for_epsilon",
    "privacy_summary",
    "privatize",
    "privatize_update",
]


__getattr__, __dir__ = lazy_exports('p2pfl.privacy', globals(), _LAZY, __all__)


if TYPE_CHECKING:
    from p2pfl.privacy.accounting import (
        GaussianMechanism,
        PrivateTrainResult,
        epsilon_for,
        noise_for_epsilon,
        privacy_summary,
    )
    from p2pfl.privacy.dp_sgd import DPSGD, DPSGDLearner
    from p2pfl.privacy.factory import privatize
    from p2pfl.privacy.modes import DP_MODES
    from p2pfl.privacy.update_dp import UpdateDP, UpdateDPLearner, privatize_update
