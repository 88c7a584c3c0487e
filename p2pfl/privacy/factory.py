"""Turn a plain :class:`TorchLearner` into a differentially private one by mode name."""

from __future__ import annotations

from typing import Any

from p2pfl.errors import ConfigError
from p2pfl.learning.learner import Learner, TorchLearner
from p2pfl.privacy.accounting import require_opacus
from p2pfl.simulation.config import DP_MODES


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
) -> Learner:
    """The DP version of ``learner`` for ``mode`` (``learner`` itself for ``""``).

    Args:
        learner: a freshly built learner; ``"sample"`` takes over its model, optimizer
            and data (do not train it directly afterwards).
        mode: ``"sample"`` (:class:`~p2pfl.privacy.dp_sgd.DPSGDLearner`, ``clip`` is the
            per-sample gradient bound) or ``"update"``
            (:class:`~p2pfl.privacy.update_dp.UpdateDPLearner`, ``clip`` bounds the
            round's update).
        seed: the node's stream seed (DP sampling and noise derive from it).
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
    budget: dict[str, Any] = {"target_epsilon": target_epsilon, "rounds": rounds, "delta": delta}
    if mode == "sample":
        from p2pfl.privacy.dp_sgd import DPSGDLearner

        return DPSGDLearner(
            learner.model, learner.optimizer, learner.train_data, learner.test_data,
            loss_fn=learner.loss_fn, local_epochs=learner.local_epochs,
            local_steps=learner.local_steps, device=learner.device, seed=seed,
            max_grad_norm=clip, noise_multiplier=0.0 if target_epsilon > 0 else noise, **budget,
        )
    if mode == "update":
        from p2pfl.privacy.update_dp import UpdateDPLearner

        return UpdateDPLearner(
            learner, clip=clip, noise_multiplier=0.0 if target_epsilon > 0 else noise, seed=seed, **budget
        )
    raise AssertionError(mode)  # unreachable: checked against DP_MODES above
