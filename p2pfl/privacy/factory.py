"""Make a plain :class:`TorchLearner` differentially private by mode name."""

from __future__ import annotations

from p2pfl.errors import ConfigError
from p2pfl.learning.learner import TorchLearner, TrainingPrivacy
from p2pfl.privacy.accounting import require_opacus
from p2pfl.privacy.modes import DP_MODES

__all__ = ["DP_MODES", "privatize"]


def privatize(
    learner: TorchLearner,
    mode: str,
    *,
    seed: int,
    rounds: int,
    clip: float = 1.0,
    noise: float = 0.0,
    target_epsilon: float = 0.0,
    delta: float = 1e-5,
) -> TorchLearner:
    """``learner`` trained under the DP mechanism of ``mode`` (unchanged for ``""``).

    Args:
        learner: a freshly built learner, not trained yet; it is returned, now training
            under :class:`~p2pfl.privacy.dp_sgd.DPSGD` for ``"sample"`` (``clip`` is the
            per-sample gradient bound; Opacus takes over its optimizer and data) or
            :class:`~p2pfl.privacy.update_dp.UpdateDP` for ``"update"`` (``clip``
            bounds the round's update).
        mode: ``"sample"``, ``"update"`` or ``""`` (off).
        seed: the node's stream seed (DP sampling and noise derive from it; callers pass
            the learner's own seed).
        rounds: planned rounds (for ``target_epsilon``).
        clip, noise, target_epsilon, delta: the DP settings; give ``noise`` or
            ``target_epsilon``.

    Raises:
        ConfigError: unknown mode, Opacus missing, or an unreachable ``target_epsilon``.
        ValueError: inconsistent settings (``ExperimentConfig`` rules them out).
    """
    if mode == "":
        return learner
    if mode not in DP_MODES:
        raise ConfigError("dp", f"unknown mode {mode!r}; one of sample, update or \"\" (off)")
    try:
        require_opacus()
    except ImportError as exc:
        raise ConfigError("dp", str(exc)) from None
    # a target picks the noise itself
    noise_multiplier = 0.0 if target_epsilon > 0 else noise
    privacy: TrainingPrivacy
    if mode == "sample":
        from p2pfl.privacy.dp_sgd import DPSGD  # imports torch's Opacus machinery

        privacy = DPSGD(
            clip=clip, noise_multiplier=noise_multiplier, target_epsilon=target_epsilon, rounds=rounds,
            delta=delta, seed=seed,
        )
    else:
        from p2pfl.privacy.update_dp import UpdateDP

        privacy = UpdateDP(
            clip=clip, noise_multiplier=noise_multiplier, target_epsilon=target_epsilon, rounds=rounds,
            delta=delta, seed=seed,
        )
    learner.set_privacy(privacy)
    return learner
