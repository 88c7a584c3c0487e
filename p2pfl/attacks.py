"""Simulated Byzantine nodes: a learner wrapper that lies about its weights or its labels.

An attacking node runs the protocol like any other node; only what it *sends* is
poisoned. :class:`AttackingLearner` wraps the node's real learner and changes what
``get_weights`` returns (model poisoning) or what the model trains on (``label-flip``,
data poisoning). A model-poisoning attacker trains only on its own data and ignores
its neighbours (see :func:`attacker_aggregator`), so it sends a consistent poison
every round.

Attack specs (``ExperimentConfig.attack``):

============  ===========================================================================
sign-flip     sends ``-w``
scale[:K]     sends ``K * w`` (default ``K`` = 100); a negative ``K`` flips the sign too
noise[:S]     sends ``w + N(0, S^2)`` per coordinate, from a seeded generator (default 1.0)
nan           sends all-NaN tensors: rejected at decode (``non_finite``), so its
              neighbours only see it missing (and wait the round timeout for it)
inf           sends all-Inf tensors: rejected the same way
stale         sends the weights of its first round, forever
label-flip    trains on labels ``C - 1 - y``, sends the honestly trained result
============  ===========================================================================

``scale`` with ``K > 0`` is weaker than it looks: linear models and ReLU networks with
biases are positively homogeneous, so ``K * w`` predicts exactly what ``w`` does, and
plain averaging next to it mostly becomes an amplified copy of the attacker's (honestly
trained) model. Measured on digits (16 nodes, 2 attackers): ``scale:100`` costs ``mean``
5-7 points, while ``scale:-100`` drives a logistic-regression network to 0% (see
``tests/integration/test_byzantine.py``). ``sign-flip`` on a ReLU MLP is mild too: the
negated network still contains the linear map ``W2 W1 x``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from p2pfl.errors import ConfigError

if TYPE_CHECKING:  # torch stays unimported: configs validate attack specs without it
    from p2pfl.learning.learner import EvalResult, Learner, TrainResult, Weights
    from p2pfl.node.mixing import Aggregator

DEFAULT_SCALE = 100.0
DEFAULT_SIGMA = 1.0
_PARAMETERISED = {"scale", "noise"}
_PLAIN = {"sign-flip", "nan", "inf", "stale", "label-flip"}
ATTACK_FORMS = ("sign-flip", "scale[:K]", "noise[:SIGMA]", "nan", "inf", "stale", "label-flip")


@dataclass(frozen=True)
class Attack:
    """A parsed attack spec: its kind and, for ``scale``/``noise``, the given value."""

    kind: str
    value: float | None = None


def parse_attack(spec: str) -> Attack:
    """Parse ``sign-flip``, ``scale:100``, ``noise:0.5``, ``nan``, ``inf``, ``stale``, ``label-flip``.

    Raises:
        ConfigError: (field ``attack``) unknown kind or a bad parameter.
    """
    kind, sep, arg = spec.strip().partition(":")
    kind, arg = kind.strip().lower(), arg.strip()
    if kind in _PLAIN and not sep:
        return Attack(kind)
    if kind in _PARAMETERISED:
        if not sep:
            return Attack(kind)
        try:
            value = float(arg)
        except ValueError:
            raise ConfigError("attack", f"{spec!r}: {arg!r} is not a number") from None
        if not math.isfinite(value) or (kind == "noise" and value < 0):
            raise ConfigError("attack", f"{spec!r}: {kind} needs a finite{' non-negative' * (kind == 'noise')} value")
        return Attack(kind, value)
    raise ConfigError("attack", f"unknown attack {spec!r}; valid forms: {', '.join(ATTACK_FORMS)}")


class AttackingLearner:
    """Wraps a learner so the node built on it is Byzantine; everything else delegates.

    Args:
        inner: the honest learner (for ``label-flip``, one with a ``train_data``
            iterable of ``(inputs, targets)`` batches, e.g. a ``TorchLearner``).
        attack: the attack spec (see the module docstring).
        seed: seeds the ``noise`` generator (same seed, same noise sequence).
        scale: ``K`` for ``scale`` when the spec gives none.
        sigma: ``S`` for ``noise`` when the spec gives none.
        num_classes: class count ``C`` for ``label-flip``.

    Raises:
        ConfigError: a bad spec, or ``label-flip`` without ``num_classes`` or train data.
    """

    def __init__(
        self,
        inner: Learner,
        attack: str,
        *,
        seed: int,
        scale: float = DEFAULT_SCALE,
        sigma: float = DEFAULT_SIGMA,
        num_classes: int | None = None,
    ) -> None:
        self.inner = inner
        self.attack = parse_attack(attack)
        self.scale = self.attack.value if self.attack.kind == "scale" and self.attack.value is not None else scale
        self.sigma = self.attack.value if self.attack.kind == "noise" and self.attack.value is not None else sigma
        self._rng = np.random.default_rng(seed)
        self._trained = False
        self._stale: Weights | None = None
        self._honest: Weights | None = None
        if self.attack.kind == "label-flip":
            if num_classes is None or num_classes < 2:
                raise ConfigError("attack", f"label-flip needs num_classes >= 2, got {num_classes}")
            if not hasattr(inner, "train_data"):
                raise ConfigError("attack", f"label-flip needs a learner with train_data, not {type(inner).__name__}")
            inner.train_data = FlippedLabels(inner.train_data, num_classes)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        # only reached for names this class lacks: num_samples, model, state(), ...
        if name == "inner":  # not set yet (copy, unpickling): no endless recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def train(self, round: int) -> TrainResult:
        self._trained = True
        return self.inner.train(round)

    def evaluate(self) -> EvalResult:
        return self.inner.evaluate()

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        self.inner.set_weights(weights)

    def get_weights(self) -> Weights:
        """The poisoned weights this node sends (its honest snapshot is kept aside)."""
        honest = self.inner.get_weights()
        self._honest = honest
        kind = self.attack.kind
        if kind == "sign-flip":
            return {k: np.negative(v) for k, v in honest.items()}
        if kind == "scale":
            return {k: (v * self.scale).astype(v.dtype) for k, v in honest.items()}
        if kind == "noise":
            return {k: (v + self._rng.normal(0.0, self.sigma, v.shape)).astype(v.dtype) for k, v in honest.items()}
        if kind in ("nan", "inf"):
            fill = math.nan if kind == "nan" else math.inf
            return {k: np.full_like(v, fill) for k, v in honest.items()}
        if kind == "stale":
            if not self._trained:  # before any training (e.g. the node reading its schema)
                return {k: v.copy() for k, v in honest.items()}
            if self._stale is None:
                self._stale = honest
            return {k: v.copy() for k, v in self._stale.items()}
        return {k: v.copy() for k, v in honest.items()}  # label-flip: the weights are honest

    def honest_weights(self) -> Weights:
        """The honest snapshot behind the latest :meth:`get_weights` (fresh if none yet)."""
        return self._honest if self._honest is not None else self.inner.get_weights()


class FlippedLabels:
    """Training batches with every label ``y`` replaced by ``C - 1 - y``.

    Keeps ``dataset`` and ``len`` of the wrapped batches so sample counts stay right.
    """

    def __init__(self, batches: Iterable[tuple[Any, Any]], num_classes: int) -> None:
        self.batches = batches
        self.num_classes = num_classes
        self.dataset = getattr(batches, "dataset", batches)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for inputs, targets in self.batches:
            yield inputs, self.num_classes - 1 - targets


def attacker_aggregator(aggregator: Aggregator, learner: object) -> Aggregator:
    """The aggregator for the node built on ``learner``.

    An honest learner, or a ``label-flip`` one (an honest node with bad data), gets
    ``aggregator`` unchanged. A model-poisoning attacker keeps its own honestly trained
    model and ignores what it receives: otherwise it would average in its own poison
    as echoed by its neighbours (a sign flip cancels itself out within a few rounds,
    a scale compounds to Inf, which receivers then reject), and the attack would test
    less than it claims to.
    """
    if not isinstance(learner, AttackingLearner) or learner.attack.kind == "label-flip":
        return aggregator
    return _KeepOwn(learner)


class _KeepOwn:
    """An attacker's aggregation: its honest snapshot, whatever arrived."""

    def __init__(self, learner: AttackingLearner) -> None:
        self.learner = learner

    def __call__(
        self,
        own_name: str,
        own: Mapping[str, np.ndarray],
        received: Mapping[str, Mapping[str, np.ndarray]],
        weights: Mapping[str, float],
    ) -> Weights:
        return {k: v.copy() for k, v in self.learner.honest_weights().items()}
