"""Sample-level differential privacy: DP-SGD with Opacus inside a node's local training.

Each optimizer step samples a Poisson batch (Opacus' ``DPDataLoader``), clips every
per-sample gradient to ``max_grad_norm`` and adds Gaussian noise before the update; the
privacy engine's accountant composes the steps into the ε the node reports each round.
Everything a node shares is a function of these noisy steps (and of what neighbours
sent), so the guarantee covers the gossiped models too: post-processing.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from p2pfl.learning.learner import ArrayBatches, TorchLearner, TrainResult
from p2pfl.privacy.accounting import (
    DEFAULT_ACCOUNTANT,
    PrivateTrainResult,
    epsilon_of_history,
    noise_for_epsilon,
    require_opacus,
)

log = logging.getLogger(__name__)

# Mixed into the node's seed so the DP streams (sampling, noise) differ from the
# learner's own torch stream that is seeded with the same number.
_DP_STREAM = 0x0D9


class DPSGD:
    """DP-SGD for a :class:`TorchLearner`: ``TorchLearner(..., privacy=DPSGD(...))``.

    Attached to a learner, it runs Opacus' ``PrivacyEngine.make_private`` over the
    learner's model, optimizer and data: each step samples a Poisson batch, clips every
    per-sample gradient to ``clip`` and adds Gaussian noise. Each round's result carries
    the ε spent so far (:class:`PrivateTrainResult`).

    Give either ``noise_multiplier`` (fixed noise; ε grows every round) or
    ``target_epsilon`` with the planned ``rounds`` (the noise is chosen with Opacus'
    ``get_noise_multiplier`` so that ε after ``rounds`` rounds is at most the target, and
    within 0.01 of it). ε is accounted with Opacus' RDP accountant by default.

    The model Opacus trains (:attr:`private_model`, a ``GradSampleModule``) shares the
    parameters of the learner's ``model``, which stays what the learner reads and writes:
    the shared names are the plain ``state_dict`` names (no ``_module.`` prefix), and DP
    and non-DP nodes exchange models with the same schema.

    Reproducibility: Poisson sampling and noise come from ``torch.Generator`` s seeded
    from ``seed``, so on CPU a seed gives bit-identical weights, ε and losses. Not
    covered: CUDA kernels (per-sample gradient einsums may be non-deterministic) and a
    user ``DataLoader`` without its own generator (its sampling then draws from the
    learner's private torch stream, which is seeded too, so it stays reproducible as
    long as nothing else draws from it). ``secure_mode`` (a CSPRNG) is not used: it cannot
    be seeded, by design.

    One instance trains one learner. The learner's ``train_data`` must be an
    :class:`ArrayBatches` (turned into a ``DataLoader`` over its tensors with the same
    batch size) or a map-style ``DataLoader``; the sampling rate is
    ``1 / len(train_data)``, i.e. batch size / samples. Its ``loss_fn`` must average over
    the batch (the default cross-entropy does): Opacus rescales the noisy sum by the
    expected batch size.

    Args:
        clip: per-sample gradient clipping bound C (Opacus' ``max_grad_norm``).
        noise_multiplier: noise std / C; 0 means "choose it from ``target_epsilon``".
        target_epsilon: ε to reach after ``rounds`` rounds; 0 means fixed noise.
        rounds: the rounds the node will train (needed for ``target_epsilon``).
        delta: δ of the reported (ε, δ).
        accountant: Opacus accountant, ``"rdp"`` (default) or ``"prv"``.
        seed: seeds the sampling and noise streams; ``None`` takes the learner's seed.

    Raises:
        ValueError: neither or both of ``noise_multiplier`` and ``target_epsilon`` given,
            ``rounds`` missing for a target, or a bound out of range.
        ImportError: Opacus is not installed.
    """

    def __init__(
        self,
        *,
        clip: float = 1.0,
        noise_multiplier: float = 0.0,
        target_epsilon: float = 0.0,
        rounds: int = 0,
        delta: float = 1e-5,
        accountant: str = DEFAULT_ACCOUNTANT,
        seed: int | None = None,
    ) -> None:
        if (noise_multiplier > 0) == (target_epsilon > 0):
            raise ValueError(
                f"give exactly one of noise_multiplier > 0 or target_epsilon > 0, "
                f"got {noise_multiplier} and {target_epsilon}"
            )
        if target_epsilon > 0 and rounds < 1:
            raise ValueError("target_epsilon needs the planned rounds (rounds >= 1)")
        if not clip > 0:
            raise ValueError(f"clip (the per-sample max_grad_norm) must be > 0, got {clip}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        require_opacus()
        self.clip = clip
        self.noise_multiplier = noise_multiplier  # the chosen one once attached, in target mode
        self.target_epsilon = target_epsilon
        self.rounds = rounds
        self.delta = delta
        self.accountant = accountant
        self.seed = seed
        self.sample_rate = math.nan  # known once attached: 1 / batches per epoch
        self.steps_per_round = 0
        self.engine: Any = None  # Opacus' PrivacyEngine, once attached
        self.private_model: nn.Module | None = None
        self._noise_generator: torch.Generator | None = None
        self._sample_generator: torch.Generator | None = None
        self._warned_over_target = False

    @property
    def epsilon(self) -> float:
        """ε spent so far at :attr:`delta` (Opacus' accountant over every step taken)."""
        if self.engine is None:
            return 0.0
        # the engine's accountant records every step; ε from its history, computed as
        # Opacus' RDP accountant does (with per-step caching, see epsilon_of_history)
        return epsilon_of_history(self.engine.accountant.history, self.delta, self.accountant)

    def attach(self, learner: TorchLearner) -> None:
        """Make the learner's training private (Opacus' ``make_private``)."""
        if self.engine is not None:
            raise ValueError("a DPSGD instance trains one learner; give each learner its own")
        from opacus import PrivacyEngine

        seed = learner.seed if self.seed is None else self.seed
        sample_seed, noise_seed = (
            int(s) for s in np.random.SeedSequence([seed, _DP_STREAM]).generate_state(2)
        )
        loader = _data_loader(learner.train_data, sample_seed)
        self.sample_rate = 1 / len(loader)
        # batches per epoch as Opacus' sampler counts them: int(1/q), which is one short
        # of len(loader) for some sizes (1/(1/93) < 93 in floating point)
        self.steps_per_round = learner.local_steps or learner.local_epochs * int(1 / self.sample_rate)
        if self.target_epsilon > 0:
            self.noise_multiplier = noise_for_epsilon(
                self.target_epsilon, self.delta, self.sample_rate, self.rounds * self.steps_per_round,
                self.accountant,
            )
        self._noise_generator = torch.Generator(device=learner.device).manual_seed(noise_seed)
        with warnings.catch_warnings():
            # seeded generators on purpose (reproducible runs); the docstring says so
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant=self.accountant)
        # learner.model stays the unwrapped module: its state_dict names are the wire names
        learner.train_module, learner.optimizer, learner.train_data = engine.make_private(
            module=learner.model, optimizer=learner.optimizer, data_loader=loader,
            noise_multiplier=self.noise_multiplier, max_grad_norm=self.clip,
            noise_generator=self._noise_generator,
        )
        self.engine = engine
        self.private_model = learner.train_module
        self._sample_generator = _sampler_generator(learner.train_data)
        log.debug(
            "DP-SGD learner: sample rate %.4g, noise multiplier %.4g, clip %g, %d steps/round",
            self.sample_rate, self.noise_multiplier, self.clip, self.steps_per_round,
        )

    def before_round(self, learner: TorchLearner) -> None:
        pass  # the noise is in every step (the engine's optimizer)

    def after_round(self, learner: TorchLearner, result: TrainResult) -> PrivateTrainResult:
        epsilon = self.epsilon
        if self.target_epsilon and epsilon > self.target_epsilon + 0.01 and not self._warned_over_target:
            self._warned_over_target = True
            log.warning("DP-SGD: epsilon %.3f now exceeds the target %.3f (more rounds than planned)",
                        epsilon, self.target_epsilon)
        return PrivateTrainResult(loss=result.loss, steps=result.steps, samples=result.samples, epsilon=epsilon)

    def state(self) -> dict[str, Any]:
        """The accountant's history and the DP RNG streams, under ``"dp"``."""
        if self.engine is None or self._noise_generator is None:
            raise RuntimeError("DPSGD.state() before it was attached to a learner")
        return {"dp": {
            "history": list(self.engine.accountant.history),
            "noise_rng": self._noise_generator.get_state(),
            "sample_rng": self._sample_generator.get_state() if self._sample_generator is not None else None,
        }}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` added to the learner's state, privacy spent included."""
        dp = state.get("dp")
        if dp is None:
            return
        if self.engine is None or self._noise_generator is None:
            raise RuntimeError("DPSGD.load_state() before it was attached to a learner")
        self.engine.accountant.history = list(dp["history"])
        self._noise_generator.set_state(dp["noise_rng"])
        if self._sample_generator is not None and dp["sample_rng"] is not None:
            self._sample_generator.set_state(dp["sample_rng"])


class DPSGDLearner(TorchLearner):
    """A :class:`TorchLearner` trained with DP-SGD: ``TorchLearner(..., privacy=DPSGD(...))``.

    Kept for code written before :class:`DPSGD` existed. Takes :class:`TorchLearner`'s
    arguments (``model, optimizer, train_data, test_data``, ``loss_fn=``, ``seed=``, ...)
    plus the DP settings below, and exposes the mechanism's figures (``epsilon``,
    ``noise_multiplier``, ``sample_rate``, ``engine``, ``private_model``, ...).

    Args:
        max_grad_norm: per-sample gradient clipping bound C (:class:`DPSGD`'s ``clip``).
        noise_multiplier, target_epsilon, rounds, delta, accountant: as for :class:`DPSGD`;
            the DP streams derive from the learner's ``seed``.
    """

    privacy: DPSGD

    def __init__(
        self,
        *args: Any,
        max_grad_norm: float = 1.0,
        noise_multiplier: float = 0.0,
        target_epsilon: float = 0.0,
        rounds: int = 0,
        delta: float = 1e-5,
        accountant: str = DEFAULT_ACCOUNTANT,
        **learner_options: Any,
    ) -> None:
        privacy = DPSGD(
            clip=max_grad_norm, noise_multiplier=noise_multiplier, target_epsilon=target_epsilon,
            rounds=rounds, delta=delta, accountant=accountant,
        )
        super().__init__(*args, privacy=privacy, **learner_options)

    @property
    def epsilon(self) -> float:
        """ε spent so far at :attr:`delta`."""
        return self.privacy.epsilon

    @property
    def noise_multiplier(self) -> float:
        return self.privacy.noise_multiplier

    @property
    def max_grad_norm(self) -> float:
        return self.privacy.clip

    @property
    def target_epsilon(self) -> float:
        return self.privacy.target_epsilon

    @property
    def delta(self) -> float:
        return self.privacy.delta

    @property
    def accountant(self) -> str:
        return self.privacy.accountant

    @property
    def sample_rate(self) -> float:
        return self.privacy.sample_rate

    @property
    def steps_per_round(self) -> int:
        return self.privacy.steps_per_round

    @property
    def engine(self) -> Any:
        """Opacus' ``PrivacyEngine`` (its ``accountant`` holds the steps taken)."""
        return self.privacy.engine

    @property
    def private_model(self) -> nn.Module:
        """The Opacus-wrapped model (``GradSampleModule``) that training runs through."""
        return self.train_module


def _data_loader(train_data: Iterable[Any], seed: int) -> DataLoader:
    """A map-style ``DataLoader`` over ``train_data`` for Opacus to Poisson-sample."""
    if isinstance(train_data, ArrayBatches):
        return DataLoader(
            TensorDataset(train_data.x, train_data.y), batch_size=train_data.batch_size,
            generator=torch.Generator().manual_seed(seed),
        )
    if isinstance(train_data, DataLoader):
        return train_data
    raise TypeError(
        f"DP-SGD needs ArrayBatches or a map-style DataLoader to sample from, got {type(train_data).__name__}"
    )


def _sampler_generator(loader: Any) -> torch.Generator | None:
    return getattr(getattr(loader, "batch_sampler", None), "generator", None)
