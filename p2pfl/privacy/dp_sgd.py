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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from p2pfl.learning.learner import ArrayBatches, TorchLearner, _private_rng
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


class DPSGDLearner(TorchLearner):
    """A :class:`TorchLearner` that trains with DP-SGD (Opacus' ``PrivacyEngine``).

    Give either ``noise_multiplier`` (fixed noise; ε grows every round) or
    ``target_epsilon`` with the planned ``rounds`` (the noise is chosen with Opacus'
    ``get_noise_multiplier`` so that ε after ``rounds`` rounds is at most the target, and
    within 0.01 of it). ε is accounted with Opacus' RDP accountant by default.

    The model Opacus trains is a ``GradSampleModule`` around ``model``; it shares the
    parameters, so the learner keeps reading and writing weights through the unwrapped
    ``model``: the shared names are the plain ``state_dict`` names (no ``_module.``
    prefix), and DP and non-DP nodes exchange models with the same schema.

    Reproducibility: Poisson sampling and noise come from ``torch.Generator`` s seeded
    from ``seed``, so on CPU a seed gives bit-identical weights, ε and losses. Not
    covered: CUDA kernels (per-sample gradient einsums may be non-deterministic) and a
    user ``DataLoader`` without its own generator (its sampling then draws from the
    learner's private torch stream, which is seeded too, so it stays reproducible as
    long as nothing else draws from it). ``secure_mode`` (a CSPRNG) is not used: it cannot
    be seeded, by design.

    Args:
        model, optimizer, test_data, loss_fn, local_epochs, local_steps, device, seed:
            as for :class:`TorchLearner`. ``loss_fn`` must average over the batch (the
            default cross-entropy does): Opacus rescales the noisy sum by the expected
            batch size.
        train_data: an :class:`ArrayBatches` (turned into a ``DataLoader`` over its
            tensors with the same batch size) or a map-style ``DataLoader``. The sampling
            rate is ``1 / len(train_data)``, i.e. batch size / samples.
        max_grad_norm: per-sample gradient clipping bound C.
        noise_multiplier: noise std / C; 0 means "choose it from ``target_epsilon``".
        target_epsilon: ε to reach after ``rounds`` rounds; 0 means fixed noise.
        rounds: the rounds the node will train (needed for ``target_epsilon``).
        delta: δ of the reported (ε, δ).
        accountant: Opacus accountant, ``"rdp"`` (default) or ``"prv"``.

    Raises:
        ValueError: neither or both of ``noise_multiplier`` and ``target_epsilon`` given,
            ``rounds`` missing for a target, or a bound out of range.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_data: Iterable[tuple[torch.Tensor, torch.Tensor]],
        test_data: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
        *,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        local_epochs: int = 1,
        local_steps: int | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        max_grad_norm: float = 1.0,
        noise_multiplier: float = 0.0,
        target_epsilon: float = 0.0,
        rounds: int = 0,
        delta: float = 1e-5,
        accountant: str = DEFAULT_ACCOUNTANT,
    ) -> None:
        if (noise_multiplier > 0) == (target_epsilon > 0):
            raise ValueError(
                f"give exactly one of noise_multiplier > 0 or target_epsilon > 0, "
                f"got {noise_multiplier} and {target_epsilon}"
            )
        if target_epsilon > 0 and rounds < 1:
            raise ValueError("target_epsilon needs the planned rounds (rounds >= 1)")
        if not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        super().__init__(
            model, optimizer, train_data, test_data, loss_fn=loss_fn, local_epochs=local_epochs,
            local_steps=local_steps, device=device, seed=seed,
        )
        require_opacus()
        from opacus import PrivacyEngine

        sample_seed, noise_seed = (
            int(s) for s in np.random.SeedSequence([seed, _DP_STREAM]).generate_state(2)
        )
        loader = _data_loader(train_data, sample_seed)
        self.sample_rate = 1 / len(loader)
        # batches per epoch as Opacus' sampler counts them: int(1/q), which is one short
        # of len(loader) for some sizes (1/(1/93) < 93 in floating point)
        self.steps_per_round = local_steps or local_epochs * int(1 / self.sample_rate)
        self.max_grad_norm = max_grad_norm
        self.delta = delta
        self.target_epsilon = target_epsilon
        self.accountant = accountant
        if target_epsilon > 0:
            noise_multiplier = noise_for_epsilon(
                target_epsilon, delta, self.sample_rate, rounds * self.steps_per_round, accountant
            )
        self.noise_multiplier = noise_multiplier
        self._noise_generator = torch.Generator(device=self.device).manual_seed(noise_seed)
        with warnings.catch_warnings():
            # seeded generators on purpose (reproducible runs); the docstring says so
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            self.engine = PrivacyEngine(accountant=accountant)
        # self.model stays the unwrapped module: its state_dict names are the wire names
        self._private_model, self.optimizer, self.train_data = self.engine.make_private(
            module=self.model, optimizer=optimizer, data_loader=loader,
            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            noise_generator=self._noise_generator,
        )
        self._warned_over_target = False
        log.debug(
            "DP-SGD learner: sample rate %.4g, noise multiplier %.4g, clip %g, %d steps/round",
            self.sample_rate, noise_multiplier, max_grad_norm, self.steps_per_round,
        )

    @property
    def epsilon(self) -> float:
        """ε spent so far at :attr:`delta` (Opacus' accountant over every step taken)."""
        # the engine's accountant records every step; ε from its history, computed as
        # Opacus' RDP accountant does (with per-step caching, see epsilon_of_history)
        return epsilon_of_history(self.engine.accountant.history, self.delta, self.accountant)

    @property
    def private_model(self) -> nn.Module:
        """The Opacus-wrapped model (``GradSampleModule``) that training runs through."""
        return self._private_model

    def train(self, round: int) -> PrivateTrainResult:
        with _private_rng(self):
            self._private_model.train()
            total, counted, steps = 0.0, 0, 0
            for inputs, targets in self._round_batches():
                inputs, targets = inputs.to(self.device), targets.to(self.device)
                self.optimizer.zero_grad(set_to_none=True)
                loss = self.loss_fn(self._private_model(inputs), targets)
                loss.backward()
                # an empty Poisson batch still takes its (pure noise) step: the
                # accountant assumes every sampled step happens
                self.optimizer.step()
                if len(targets):  # the mean loss of an empty batch is NaN
                    total += loss.item()
                    counted += 1
                steps += 1
        epsilon = self.epsilon
        if self.target_epsilon and epsilon > self.target_epsilon + 0.01 and not self._warned_over_target:
            self._warned_over_target = True
            log.warning("DP-SGD: epsilon %.3f now exceeds the target %.3f (more rounds than planned)",
                        epsilon, self.target_epsilon)
        return PrivateTrainResult(
            loss=total / counted if counted else math.nan, steps=steps, samples=self.num_samples,
            epsilon=epsilon,
        )

    def state(self) -> dict[str, Any]:
        """:meth:`TorchLearner.state` plus the accountant's history and the DP RNG streams."""
        state = super().state()
        sampler = _sampler_generator(self.train_data)
        state["dp"] = {
            "history": list(self.engine.accountant.history),
            "noise_rng": self._noise_generator.get_state(),
            "sample_rng": sampler.get_state() if sampler is not None else None,
        }
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned, privacy spent included."""
        super().load_state(state)
        dp = state.get("dp")
        if dp is None:
            return
        self.engine.accountant.history = list(dp["history"])
        self._noise_generator.set_state(dp["noise_rng"])
        generator = _sampler_generator(self.train_data)
        if generator is not None and dp["sample_rng"] is not None:
            generator.set_state(dp["sample_rng"])


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
