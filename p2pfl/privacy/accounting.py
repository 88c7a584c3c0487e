"""Privacy accounting shared by both DP modes, and the ε a learner reports per round.

Opacus is imported inside the functions that need it, so this module (and the simulator,
which summarises ε through it) loads without the optional dependency.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2pfl.errors import ConfigError
from p2pfl.learning.learner import TrainResult

#: Accountant used for reporting and for picking the noise of a target ε. RDP is the
#: classic (slightly conservative) choice; "prv" gives tighter ε for the same noise.
DEFAULT_ACCOUNTANT = "rdp"


@dataclass(frozen=True)
class PrivateTrainResult(TrainResult):
    """A :class:`TrainResult` that also carries the privacy spent so far.

    The node copies ``epsilon`` into its round's :class:`~p2pfl.node.node.RoundMetrics`.
    """

    epsilon: float  # cumulative ε after this round's training, at the learner's δ


@dataclass(frozen=True)
class GaussianMechanism:
    """One release of the Gaussian mechanism: what update-level DP adds per round.

    Attributes:
        clip: L2 bound C on the released quantity (its sensitivity).
        noise_multiplier: z; the noise is N(0, (z·C)²) per coordinate.
    """

    clip: float
    noise_multiplier: float

    @property
    def std(self) -> float:
        """Standard deviation of the per-coordinate noise, z·C."""
        return self.noise_multiplier * self.clip


def require_opacus() -> Any:
    """Import opacus, or explain how to install it."""
    try:
        import opacus
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "differential privacy needs Opacus: pip install 'p2pfl-gossip[privacy]'"
        ) from exc
    return opacus


def epsilon_for(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = DEFAULT_ACCOUNTANT,
) -> float:
    """ε after ``steps`` subsampled Gaussian steps, by Opacus' accountant.

    Returns 0 before any step and ``inf`` without noise (nothing hides the data).
    """
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    return epsilon_of_history([(noise_multiplier, sample_rate, steps)], delta, accountant)


def epsilon_of_history(
    history: Sequence[tuple[float, float, int]], delta: float, accountant: str = DEFAULT_ACCOUNTANT
) -> float:
    """ε of an Opacus accountant history ``[(noise_multiplier, sample_rate, steps), ...]``.

    For ``"rdp"`` this is exactly Opacus' ``RDPAccountant.get_epsilon`` (same orders,
    same analysis functions), but reuses each ``(noise, rate)`` pair's one-step RDP:
    Opacus' ``compute_rdp`` is ``steps`` × the one-step value, and recomputing it for
    every round's report costs ~0.2 s per node on a loaded CPU (fractional orders).
    """
    if not history:
        return 0.0
    require_opacus()
    if accountant != "rdp":
        from opacus.accountants import create_accountant

        acct = create_accountant(mechanism=accountant)
        acct.history = list(history)
        return float(acct.get_epsilon(delta=delta))
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import get_privacy_spent

    rdp = sum(steps * _rdp_one_step(float(noise), float(rate)) for noise, rate, steps in history)
    epsilon, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(epsilon)


@functools.lru_cache(maxsize=256)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
    )
    rdp.flags.writeable = False  # shared by every caller through the cache
    return rdp


@functools.lru_cache(maxsize=64)  # nodes with equal data sizes share one search
def noise_for_epsilon(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = DEFAULT_ACCOUNTANT,
) -> float:
    """Smallest noise multiplier (to Opacus' 0.01-in-ε tolerance) keeping ε ≤ target.

    Raises:
        ConfigError: no noise reaches the target (Opacus gives up past σ = 2000).
    """
    if target_epsilon <= 0 or steps <= 0:
        raise ValueError(f"need target_epsilon > 0 and steps > 0, got {target_epsilon} and {steps}")
    require_opacus()
    from opacus.accountants.utils import get_noise_multiplier

    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                steps=steps, accountant=accountant,
            )
        )
    except ValueError as exc:  # "The privacy budget is too low."
        raise ConfigError(
            "target_epsilon",
            f"{target_epsilon} is out of reach for {steps} steps at sampling rate {sample_rate:.3g} "
            f"and delta {delta} ({exc}); raise it or train fewer steps",
        ) from None


def privacy_summary(
    final_rows: Iterable[Mapping[str, Any]], delta: float | None, learners: Iterable[Any] = ()
) -> dict[str, Any]:
    """The ``summary.json`` privacy keys: ε over the last round's rows, δ and the noise.

    All ``None`` for a run without DP, so every summary has the same keys. The noise is
    a range: in target-ε mode each node's noise depends on its own data size.
    """
    spent = [row["epsilon"] for row in final_rows if row.get("epsilon") is not None]
    noises = [noise for noise in map(_noise_multiplier, learners) if noise is not None]
    return {
        "epsilon_max": max(spent) if spent else None,
        "epsilon_mean": sum(spent) / len(spent) if spent else None,
        "delta": delta if spent else None,
        "noise_multiplier_min": min(noises) if noises else None,
        "noise_multiplier_max": max(noises) if noises else None,
    }


def _noise_multiplier(learner: Any) -> float | None:
    """The noise of the learner's privacy mechanism (``None`` without one)."""
    privacy = getattr(learner, "privacy", None)  # a TorchLearner's or UpdateDPLearner's mechanism
    return getattr(learner if privacy is None else privacy, "noise_multiplier", None)
