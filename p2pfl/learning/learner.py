"""The seam between a node and the user's PyTorch code.

A node only needs five things from learning: train locally, evaluate, read the weights it
will share, replace them with the mixed ones, and the schema of what it shares. The
:class:`Learner` protocol is exactly that; :class:`TorchLearner` implements it for any
``torch.nn.Module`` + optimizer + data loaders. A :class:`TorchLearner` may train under a
:class:`TrainingPrivacy` mechanism (differential privacy, implemented in ``p2pfl.privacy``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from p2pfl.learning.batches import ArrayBatches
from p2pfl.learning.metrics import MetricFn, compute_metrics, resolve_metrics

if TYPE_CHECKING:
    from p2pfl.learning.metrics import Metrics

__all__ = ["ArrayBatches", "EvalResult", "Learner", "TorchLearner", "TrainResult", "TrainingPrivacy", "Weights"]

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class TrainResult:
    """Outcome of one round of local training."""

    loss: float  # mean training loss over the steps of this round
    steps: int
    samples: int  # training samples this learner holds (weights for sample-weighted mixing)


@dataclass(frozen=True)
class EvalResult:
    """Outcome of an evaluation on the learner's test data."""

    loss: float
    accuracy: float
    samples: int
    # the learner's own metrics (p2pfl.learning.metrics), flattened: {"auc": 0.93, "recall_0": 0.9}
    metrics: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class Learner(Protocol):
    """What a node needs from local learning. Methods run in a worker thread."""

    def train(self, round: int) -> TrainResult: ...

    def evaluate(self) -> EvalResult: ...

    def get_weights(self) -> Weights:
        """A snapshot of the shared tensors (fresh CPU arrays the caller may keep)."""
        ...

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None: ...


class TrainingPrivacy(Protocol):
    """A privacy mechanism a :class:`TorchLearner` trains under (its ``privacy=`` argument).

    The learner calls :meth:`attach` once, before any training, :meth:`before_round` and
    :meth:`after_round` around each round's training, and merges :meth:`state` into its
    own :meth:`TorchLearner.state`. The implementations (``DPSGD``, ``UpdateDP``) live in
    ``p2pfl.privacy``; learning knows only this protocol.
    """

    @property
    def epsilon(self) -> float:
        """ε spent so far, at the mechanism's δ."""
        ...

    @property
    def noise_multiplier(self) -> float:
        """Noise standard deviation over the clipping bound."""
        ...

    def attach(self, learner: TorchLearner) -> None:
        """Take the learner over: may swap its ``train_module``, ``optimizer`` and ``train_data``."""
        ...

    def before_round(self, learner: TorchLearner) -> None: ...

    def after_round(self, learner: TorchLearner, result: TrainResult) -> TrainResult:
        """The round's result as the node sees it, carrying ``epsilon``."""
        ...

    def state(self) -> dict[str, Any]:
        """Entries added to the learner's :meth:`TorchLearner.state`."""
        ...

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore from the learner's whole state (after the learner restored its own part)."""
        ...


class TorchLearner:
    """Local training of a ``torch.nn.Module``.

    Every floating-point entry of the module's ``state_dict`` is shared with neighbours
    (parameters and float buffers such as BatchNorm statistics); integer buffers stay local.

    Args:
        model: the model; its current weights are the starting point.
        optimizer: optimizer over ``model.parameters()``; its state (e.g. momentum) stays
            local across rounds.
        train_data: iterable of ``(inputs, targets)`` batches, iterated once per epoch (a
            ``torch.utils.data.DataLoader`` or :class:`ArrayBatches`).
        test_data: iterable of ``(inputs, targets)`` batches for :meth:`evaluate`; ``None``
            means evaluate on the training data.
        loss_fn: loss over ``(outputs, targets)``; cross-entropy by default.
        local_epochs: passes over ``train_data`` per round (ignored if ``local_steps``).
        local_steps: exact optimizer steps per round, cycling through the data.
        device: where the model lives (``"cpu"``, ``"cuda"``, ...).
        seed: seeds this learner's private torch RNG stream (shuffling, dropout). The
            global torch RNG is swapped to this stream while the learner runs, so several
            learners sharing one process stay reproducible.
        privacy: a :class:`TrainingPrivacy` mechanism to train under, e.g.
            ``p2pfl.privacy.DPSGD(...)`` (sample-level DP-SGD) or ``UpdateDP(...)``
            (clipped and noised round updates); each round's result then carries
            ``epsilon``. ``None`` (default) trains without one.
        metrics: evaluation metrics besides accuracy and loss, each computed by
            :meth:`evaluate` from the test labels and the model's class probabilities:
            built-in names (``"auc"``, ``"f1"`` for binary tasks, ``"recall"`` per
            class), ``"module:function"`` names, functions ``f(y_true, y_score)``, or a
            ``{name: function}`` mapping (see :mod:`p2pfl.learning.metrics`). Their
            values land in :attr:`EvalResult.metrics` and each ``metrics.jsonl`` row.
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
        privacy: TrainingPrivacy | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.train_data = train_data
        self.test_data = test_data if test_data is not None else train_data
        self.loss_fn = loss_fn or nn.functional.cross_entropy
        self.local_epochs = local_epochs
        self.local_steps = local_steps
        self.seed = seed
        self._rng_state = _seeded_rng_state(seed)
        self._shared = [k for k, v in model.state_dict().items() if v.is_floating_point()]
        self._lent = False  # the parameters' storage is lent out (lend_weights)
        self._batches: Any = None  # live iterator, for local_steps that span epochs
        # what training runs through; weights are always read and written through
        # self.model, so a privacy wrapper (Opacus' GradSampleModule) keeps the wire names
        self.train_module: nn.Module = self.model
        self.privacy: TrainingPrivacy | None = None
        if privacy is not None:
            self.set_privacy(privacy)
        self.metrics: dict[str, MetricFn] = resolve_metrics(metrics)

    def set_privacy(self, privacy: TrainingPrivacy) -> None:
        """Train under ``privacy`` from now on; call it before the first round, once.

        Raises:
            ValueError: the learner already has a privacy mechanism.
        """
        if self.privacy is not None:
            raise ValueError(f"this learner already trains under {type(self.privacy).__name__}")
        privacy.attach(self)
        self.privacy = privacy

    @property
    def num_samples(self) -> int:
        dataset = getattr(self.train_data, "dataset", self.train_data)
        try:
            return len(dataset)  # type: ignore[arg-type]
        except TypeError:
            return 0

    def train(self, round: int) -> TrainResult:
        self._own_storage()
        if self.privacy is not None:
            self.privacy.before_round(self)
        with _private_rng(self):
            self.train_module.train()
            total, counted, steps = 0.0, 0, 0
            for inputs, targets in self._round_batches():
                inputs, targets = inputs.to(self.device), targets.to(self.device)
                self.optimizer.zero_grad(set_to_none=True)
                loss = self.loss_fn(self.train_module(inputs), targets)
                loss.backward()
                # an empty batch (DP-SGD's Poisson sampling) still takes its step: the
                # accountant assumes every sampled step happens
                self.optimizer.step()
                if len(targets):  # the mean loss of an empty batch is NaN
                    total += loss.item()
                    counted += 1
                steps += 1
            # the gradients are remade by the next round's first step: holding them
            # between rounds would keep a model-sized copy per node for nothing
            self.optimizer.zero_grad(set_to_none=True)
        mean_loss = total / counted if counted else (math.nan if steps else 0.0)
        result = TrainResult(loss=mean_loss, steps=steps, samples=self.num_samples)
        if self.privacy is not None:
            result = self.privacy.after_round(self, result)
        return result

    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        with _private_rng(self):
            self.model.eval()
            loss_sum, correct, count = 0.0, 0, 0
            labels: list[torch.Tensor] = []  # only filled when metrics are asked for
            scores: list[torch.Tensor] = []
            for inputs, targets in self.test_data:
                inputs, targets = inputs.to(self.device), targets.to(self.device)
                outputs = self.model(inputs)
                loss_sum += float(self.loss_fn(outputs, targets)) * len(targets)
                if outputs.dim() > 1 and outputs.shape[-1] > 1:
                    correct += int((outputs.argmax(dim=-1) == targets).sum())
                count += len(targets)
                if self.metrics:
                    labels.append(targets.reshape(-1).cpu())
                    scores.append(_probabilities(outputs).cpu())
        if count == 0:
            return EvalResult(loss=math.nan, accuracy=math.nan, samples=0)
        metrics: dict[str, float] = {}
        if self.metrics:
            y_true = torch.cat(labels).numpy().astype(np.int64, copy=False)
            metrics = compute_metrics(self.metrics, y_true, torch.cat(scores).numpy())
        return EvalResult(loss=loss_sum / count, accuracy=correct / count, samples=count, metrics=metrics)

    @torch.no_grad()
    def output_classes(self) -> int:
        """How many classes the model scores: one forward pass over the first test batch
        (to refuse a binary metric on a multi-class model before training starts). The
        learner's RNG stream is left as it was."""
        saved = self._rng_state.clone()
        data_rng = self.test_data.rng_state() if isinstance(self.test_data, ArrayBatches) else None
        try:
            with _private_rng(self):
                self.model.eval()
                for inputs, _targets in self.test_data:
                    return int(_probabilities(self.model(inputs.to(self.device))).shape[1])
        finally:
            self._rng_state = saved
            if data_rng is not None:
                self.test_data.set_rng_state(data_rng)  # type: ignore[attr-defined]
        raise ValueError("the learner's test data holds no batch")

    def get_weights(self) -> Weights:
        state = self.model.state_dict()
        return {k: state[k].detach().to("cpu", copy=True).numpy() for k in self._shared}

    def lend_weights(self) -> Weights:
        """The shared tensors without a copy (read-only views of the parameters on CPU).

        The learner never writes into lent memory: the next :meth:`set_weights`,
        :meth:`train` or :meth:`load_state` first gives the parameters fresh storage. A
        node sends what it lends while its parameters wait for the round's average, so a
        snapshot costs no model copy.
        """
        if self.device.type != "cpu":
            return self.get_weights()
        state = self.model.state_dict()
        lent: Weights = {}
        for name in self._shared:
            array = state[name].detach().numpy()
            array.flags.writeable = False
            lent[name] = array
        self._lent = True
        return lent

    @torch.no_grad()
    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        state = self.model.state_dict(keep_vars=True)
        for name in self._shared:
            source = torch.from_numpy(np.asarray(weights[name]))
            tensor = state[name]
            if self._lent:  # the old storage is someone's snapshot now: write into new storage
                fresh = torch.empty_like(tensor.data)
                fresh.copy_(source)
                tensor.data = fresh
            else:
                tensor.data.copy_(source)
        self._lent = False

    def _own_storage(self) -> None:
        """Before writing into the parameters in place: fresh storage if theirs is lent."""
        if self._lent:
            state = self.model.state_dict()
            self.set_weights({name: state[name].numpy() for name in self._shared})

    def restart_optimizer(self) -> None:
        """Forget optimizer state (e.g. momentum) that belongs to a model we replaced."""
        self.optimizer.state.clear()

    def state(self) -> dict[str, Any]:
        """Everything needed to resume exactly: model, optimizer, RNG streams, privacy spent."""
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self._rng_state.clone(),
        }
        if isinstance(self.train_data, ArrayBatches):
            state["data_rng"] = self.train_data.rng_state()
        if self.privacy is not None:
            state.update(self.privacy.state())
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned (from this node's own checkpoint)."""
        self._own_storage()
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._rng_state = state["rng"].clone()
        if "data_rng" in state and isinstance(self.train_data, ArrayBatches):
            self.train_data.set_rng_state(state["data_rng"])
        self._batches = None
        if self.privacy is not None:
            self.privacy.load_state(state)

    def _round_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        if self.local_steps is None:
            for _ in range(self.local_epochs):
                yield from self.train_data
            return
        for _ in range(self.local_steps):
            if self._batches is None:
                self._batches = iter(self.train_data)
            batch = next(self._batches, None)
            if batch is None:  # epoch ended: start the next one
                self._batches = iter(self.train_data)
                batch = next(self._batches)
            yield batch


def _probabilities(outputs: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(batch, classes)`` in float64: the softmax of class scores, or
    ``[1 - p, p]`` for a model with one output (a logit of class 1)."""
    outputs = outputs.detach().double()
    if outputs.dim() > 1 and outputs.shape[-1] > 1:
        return torch.softmax(outputs, dim=-1)
    positive = torch.sigmoid(outputs.reshape(-1))
    return torch.stack([1 - positive, positive], dim=1)


def _seeded_rng_state(seed: int) -> torch.Tensor:
    return torch.Generator().manual_seed(seed).get_state()


# torch's global RNG is process-wide, so learners sharing a process (a simulation) take
# turns with it; this serialises their torch work, which on CPU costs nothing since each
# torch op already uses every core.
_GLOBAL_RNG_LOCK = threading.Lock()


class _private_rng:
    """Swap the learner's own RNG stream in as torch's global CPU RNG while it runs."""

    def __init__(self, learner: TorchLearner) -> None:
        self._learner = learner

    def __enter__(self) -> None:
        _GLOBAL_RNG_LOCK.acquire()
        self._saved = torch.get_rng_state()
        torch.set_rng_state(self._learner._rng_state)

    def __exit__(self, *exc: object) -> None:
        self._learner._rng_state = torch.get_rng_state()
        torch.set_rng_state(self._saved)
        _GLOBAL_RNG_LOCK.release()
