"""Update-level differential privacy: clip and noise each round's model update.

Before a model leaves the node, the round's update Δ = w_after_training − w_round_start
(all shared tensors flattened into one vector) is clipped to L2 norm ≤ C, and Gaussian
noise N(0, (z·C)²) is added to every coordinate: the Gaussian mechanism with sensitivity C,
once per round. The rounds compose; ε comes from Opacus' RDP accountant with sampling
rate 1 (every round releases).

What the ε protects: the node's whole contribution to one release, in the DP-FedAvg
sense (McMahan et al., 2018): a neighbouring run is one where the node's update is
replaced by zero (add/remove; sensitivity C). Replacing the node's data by *other* data
moves a clipped update by up to 2C, so for that relation read the ε of ``z / 2``. The
bound holds whatever produced the update, so optimizer state that stays on the node
(momentum) does not weaken it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from p2pfl.learning.learner import EvalResult, Learner, TrainResult, Weights
from p2pfl.privacy.accounting import (
    DEFAULT_ACCOUNTANT,
    GaussianMechanism,
    PrivateTrainResult,
    epsilon_for,
    noise_for_epsilon,
)

log = logging.getLogger(__name__)


def update_norm(start: Mapping[str, np.ndarray], trained: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``trained − start`` over all tensors, in float64."""
    return math.sqrt(
        sum(float(np.sum((np.asarray(trained[k], np.float64) - np.asarray(start[k], np.float64)) ** 2))
            for k in start)
    )


def privatize_update(
    start: Mapping[str, np.ndarray],
    trained: Mapping[str, np.ndarray],
    mechanism: GaussianMechanism,
    rng: np.random.Generator,
) -> tuple[Weights, float]:
    """``start + clip(trained − start, C) + N(0, (z·C)²)``, and the update's norm before clipping.

    Noise is drawn tensor by tensor in ``start`` 's key order, so the same generator state
    and the same keys give the same noise. Arithmetic is float64; the result has the
    input dtypes.
    """
    norm = update_norm(start, trained)
    # min(1, C/‖Δ‖): updates already inside the ball pass unchanged
    scale = min(1.0, mechanism.clip / norm) if norm > 0 else 1.0
    std = mechanism.std
    private: Weights = {}
    for key, base in start.items():
        base64 = np.asarray(base, np.float64)
        delta = (np.asarray(trained[key], np.float64) - base64) * scale
        noise = rng.standard_normal(base64.shape) * std if std > 0 else 0.0
        private[key] = (base64 + delta + noise).astype(np.asarray(base).dtype)
    return private, norm


class UpdateDP:
    """Update-level DP for a learner: ``TorchLearner(..., privacy=UpdateDP(clip=...))``.

    After each round's training the learner's weights are replaced by
    :func:`privatize_update` of them, so what the node shares and the local model agree.
    Keeping the noisy model locally too is deliberate: the node's evaluation then
    measures the model it actually shares, and no un-noised weights outlive the round
    (the next round starts from the mix anyway). Optimizer state (momentum) stays local
    and is not privatised; it is never shared.

    Give either ``noise_multiplier`` or ``target_epsilon`` with the planned ``rounds``
    (then z is the smallest noise whose ε after ``rounds`` releases is ≤ the target).
    One instance privatises one learner.

    Args:
        clip: L2 bound C on each round's update.
        noise_multiplier: z, noise std / C.
        target_epsilon: ε to reach after ``rounds`` rounds (instead of a fixed z).
        rounds: planned rounds, for ``target_epsilon``.
        delta: δ of the reported (ε, δ).
        accountant: Opacus accountant name (``"rdp"`` by default).
        seed: seeds the noise (numpy PCG64); ``None`` takes the learner's ``seed``.

    Raises:
        ValueError: a bound out of range, both or a target without ``rounds``.
    """

    def __init__(
        self,
        *,
        clip: float,
        noise_multiplier: float = 0.0,
        target_epsilon: float = 0.0,
        rounds: int = 0,
        delta: float = 1e-5,
        accountant: str = DEFAULT_ACCOUNTANT,
        seed: int | None = None,
    ) -> None:
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        if noise_multiplier < 0 or target_epsilon < 0:
            raise ValueError("noise_multiplier and target_epsilon must be >= 0")
        if noise_multiplier > 0 and target_epsilon > 0:
            raise ValueError("give noise_multiplier or target_epsilon, not both")
        if target_epsilon > 0 and rounds < 1:
            raise ValueError("target_epsilon needs the planned rounds (rounds >= 1)")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if target_epsilon > 0:
            noise_multiplier = noise_for_epsilon(target_epsilon, delta, 1.0, rounds, accountant)
        self.mechanism = GaussianMechanism(clip=clip, noise_multiplier=noise_multiplier)
        self.delta = delta
        self.accountant = accountant
        self.seed = seed
        self.releases = 0  # rounds whose update left the node privatised
        self.last_update_norm = math.nan  # before clipping; stays on the node (diagnostics)
        self._rng: np.random.Generator | None = None  # the noise stream, once attached
        self._start: Weights | None = None  # the round's starting weights
        if noise_multiplier == 0:
            log.warning("update-level DP with zero noise: updates are clipped but epsilon is infinite")

    @property
    def noise_multiplier(self) -> float:
        return self.mechanism.noise_multiplier

    @property
    def epsilon(self) -> float:
        """ε after :attr:`releases` Gaussian releases, at :attr:`delta`."""
        return epsilon_for(self.mechanism.noise_multiplier, 1.0, self.releases, self.delta, self.accountant)

    def attach(self, learner: Learner) -> None:
        """Start the noise stream (any :class:`Learner` will do: only its weights are used)."""
        if self._rng is not None:
            raise ValueError("an UpdateDP instance privatises one learner; give each learner its own")
        seed = self.seed if self.seed is not None else getattr(learner, "seed", None)
        if seed is None:
            raise ValueError(f"UpdateDP needs a seed: {type(learner).__name__} has none")
        self._rng = np.random.default_rng(seed)

    def before_round(self, learner: Learner) -> None:
        self._start = learner.get_weights()

    def after_round(self, learner: Learner, result: TrainResult) -> PrivateTrainResult:
        if self._rng is None or self._start is None:
            raise RuntimeError("UpdateDP.after_round without attach() and before_round()")
        private, self.last_update_norm = privatize_update(
            self._start, learner.get_weights(), self.mechanism, self._rng
        )
        self._start = None
        learner.set_weights(private)
        self.releases += 1
        return PrivateTrainResult(
            loss=result.loss, steps=result.steps, samples=result.samples, epsilon=self.epsilon
        )

    def state(self) -> dict[str, Any]:
        """The noise stream and the releases so far, under ``"update_dp"``."""
        if self._rng is None:
            raise RuntimeError("UpdateDP.state() before it was attached to a learner")
        return {"update_dp": {"rng": self._rng.bit_generator.state, "releases": self.releases}}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` added to the learner's state."""
        dp = state.get("update_dp")
        if dp is None:
            return
        if self._rng is None:
            raise RuntimeError("UpdateDP.load_state() before it was attached to a learner")
        self._rng.bit_generator.state = dp["rng"]
        self.releases = int(dp["releases"])


class UpdateDPLearner:
    """Wraps any :class:`~p2pfl.learning.learner.Learner` so what it shares is privatised.

    The same mechanism as :class:`UpdateDP` (which a :class:`TorchLearner` takes directly
    as ``privacy=``), for learners of your own that only implement the protocol. Other
    attributes (``model``, ``num_samples``, ...) are forwarded to the wrapped learner.

    Args:
        learner: the learner to wrap.
        clip, noise_multiplier, target_epsilon, rounds, delta, accountant: as for
            :class:`UpdateDP`.
        seed: seeds the noise (numpy PCG64); one independent stream per node.
    """

    def __init__(
        self,
        learner: Learner,
        *,
        clip: float,
        noise_multiplier: float = 0.0,
        target_epsilon: float = 0.0,
        rounds: int = 0,
        delta: float = 1e-5,
        seed: int = 0,
        accountant: str = DEFAULT_ACCOUNTANT,
    ) -> None:
        self.privacy = UpdateDP(
            clip=clip, noise_multiplier=noise_multiplier, target_epsilon=target_epsilon, rounds=rounds,
            delta=delta, accountant=accountant, seed=seed,
        )
        self.privacy.attach(learner)
        self.learner = learner

    def __getattr__(self, name: str) -> Any:
        # only called for names this wrapper lacks: forward to the wrapped learner
        if name in ("learner", "privacy"):  # not set yet (during unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.learner, name)

    @property
    def mechanism(self) -> GaussianMechanism:
        return self.privacy.mechanism

    @property
    def noise_multiplier(self) -> float:
        return self.privacy.noise_multiplier

    @property
    def epsilon(self) -> float:
        """ε after :attr:`releases` Gaussian releases, at :attr:`delta`."""
        return self.privacy.epsilon

    @property
    def releases(self) -> int:
        return self.privacy.releases

    @property
    def last_update_norm(self) -> float:
        return self.privacy.last_update_norm

    @property
    def delta(self) -> float:
        return self.privacy.delta

    @property
    def accountant(self) -> str:
        return self.privacy.accountant

    def train(self, round: int) -> PrivateTrainResult:
        self.privacy.before_round(self.learner)
        return self.privacy.after_round(self.learner, self.learner.train(round))

    def evaluate(self) -> EvalResult:
        return self.learner.evaluate()

    def get_weights(self) -> Weights:
        return self.learner.get_weights()

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        self.learner.set_weights(weights)

    def state(self) -> dict[str, Any]:
        """The wrapped learner's state plus the noise stream and the releases so far."""
        state = dict(self.learner.state())  # type: ignore[attr-defined]
        state.update(self.privacy.state())
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned."""
        self.learner.load_state(state)  # type: ignore[attr-defined]
        self.privacy.load_state(state)
