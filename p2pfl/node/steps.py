"""A node's torch work, in its worker: finish a round (mix, evaluate), train the next.

Each job runs as four stages: mix, evaluate, train, snapshot. A simulation's shared
worker (:class:`~p2pfl.simulation.worker.PhasedWorker`) runs every node's first stage
before any node's second one, and so on, which keeps each kind of work hot in the CPU's
caches; any other executor gets a job's stages as one call. Every job has all four
stages, even where one has nothing to do, so the phases stay aligned across nodes.

The values handed from stage to stage are typed per path, so nothing is ``None`` that
a later stage needs: a :class:`Train` job (the first round, or catching up) passes
:class:`_ToTrain` -> :class:`_Raw` -> :class:`~p2pfl.node.exchange.Trained`; a
:class:`Finish` job passes :class:`_Mixed` -> :class:`_Evaluated` -> :class:`Finished`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from p2pfl.learning.learner import EvalResult, Learner, TorchLearner, TrainResult, Weights
from p2pfl.node.exchange import Exchanged, Trained
from p2pfl.node.mixing import all_finite
from p2pfl.node.records import NodeStats, RoundMetrics

log = logging.getLogger(__name__)


@runtime_checkable
class StagedExecutor(Protocol):
    """An executor that also takes a job in stages: ``stages[-1](... stages[0](value))``.

    A simulation's shared worker (:class:`~p2pfl.simulation.worker.PhasedWorker`) runs
    every node's first stage before any node's second one, and so on; a node given any
    other executor submits its stages as one job.
    """

    def submit_stages(
        self, loop: asyncio.AbstractEventLoop, value: Any, stages: Sequence[Callable[[Any], Any]]
    ) -> asyncio.Future[Any]: ...


@dataclass(frozen=True)
class Train:
    """Job: train ``round`` from the learner's weights, or from ``adopt`` (catching up)."""

    round: int
    adopt: Weights | None = None


@dataclass(frozen=True)
class Finish:
    """Job: finish the exchanged round (mix, evaluate), then train ``next_round`` if any."""

    sent: Trained  # what this node trained and sent in the round
    exchanged: Exchanged
    next_round: int | None  # None after the last round


@dataclass(frozen=True)
class Finished:
    """A finished round: its metrics, its averaged weights, the next round's training."""

    metrics: RoundMetrics
    mixed: Weights
    next: Trained | None  # None after the last round


@dataclass(frozen=True)
class _Mixed:
    job: Finish
    mixed: Weights
    seconds: float  # mixing so far; evaluating adds to it


@dataclass(frozen=True)
class _ToTrain:
    round: int
    start: Weights | None  # restored if training goes NaN; None: what the learner holds then


@dataclass(frozen=True)
class _Raw:
    round: int
    start: Weights
    result: TrainResult
    seconds: float


_Then = TypeVar("_Then", _ToTrain, _Raw, Trained)


@dataclass(frozen=True)
class _Evaluated(Generic[_Then]):
    metrics: RoundMetrics
    mixed: Weights
    then: _Then | None  # the next round's training, as far as it got


class RoundWorker:
    """Runs one node's jobs on its executor.

    Args:
        name: the node's name (logs, metrics).
        learner: the node's model; only this worker touches it once the node runs.
        stats: the node's counters (``non_finite_models``).
        checkpoint: optional ``f(metrics)``, called right after a round is evaluated.
    """

    def __init__(
        self, name: str, learner: Learner, stats: NodeStats, checkpoint: Callable[[RoundMetrics], None] | None
    ) -> None:
        self.name = name
        self.learner = learner
        self.stats = stats
        self.checkpoint = checkpoint
        self._executor: Executor | None = None
        self._staged: StagedExecutor | None = None
        self._stages = (self._mix, self._evaluate, self._train, self._snapshot)

    def use(self, executor: Executor) -> None:
        """Run jobs on ``executor`` (stage by stage, if it takes stages)."""
        self._executor = executor
        self._staged = executor if isinstance(executor, StagedExecutor) else None

    async def train(self, round_: int, adopt: Weights | None = None) -> Trained:
        """Train ``round_`` (from ``adopt``-ed weights when catching up)."""
        trained: Trained = await self._submit(Train(round_, adopt))
        return trained

    async def finish(self, sent: Trained, exchanged: Exchanged, next_round: int | None) -> Finished:
        """Average and evaluate the exchanged round, then train ``next_round`` if any:
        one job, so that the loop and the worker meet once per round."""
        finished: Finished = await self._submit(Finish(sent, exchanged, next_round))
        return finished

    async def _submit(self, job: Train | Finish) -> Any:
        loop = asyncio.get_running_loop()
        if self._staged is not None:
            return await self._staged.submit_stages(loop, job, self._stages)

        def all_stages() -> Any:
            value: Any = job
            for stage in self._stages:
                value = stage(value)
            return value

        return await loop.run_in_executor(self._executor, all_stages)

    # -- the stages --------------------------------------------------------------------

    def _mix(self, job: Train | Finish) -> Train | _Mixed:
        """Average the finished round's models (nothing to do for a Train job)."""
        if isinstance(job, Train):
            return job
        started = time.perf_counter()
        exchanged = job.exchanged
        mixed = exchanged.aggregate()
        if not all_finite(mixed):  # finite but extreme models can overflow the sum
            self._non_finite(exchanged.round, "averaging with " + ", ".join(sorted(exchanged.received_from)))
            mixed = job.sent.weights
        return _Mixed(job, mixed, time.perf_counter() - started)

    def _evaluate(self, value: Train | _Mixed) -> _ToTrain | _Evaluated[_ToTrain]:
        """Load the mixed (or adopted) weights and evaluate the finished round."""
        if isinstance(value, Train):
            if value.adopt is not None:
                self._replace_weights(value.adopt)
            return _ToTrain(value.round, value.adopt)
        started = time.perf_counter()
        job = value.job
        self.learner.set_weights(value.mixed)
        evaluation = self.learner.evaluate()
        metrics = self._round_metrics(job, evaluation, value.seconds + time.perf_counter() - started)
        if self.checkpoint is not None:
            self.checkpoint(metrics)
        then = None if job.next_round is None else _ToTrain(job.next_round, value.mixed)
        return _Evaluated(metrics, value.mixed, then)

    def _train(self, value: _ToTrain | _Evaluated[_ToTrain]) -> _Raw | _Evaluated[_Raw]:
        """Train the next round from the weights the learner now holds."""
        if isinstance(value, _ToTrain):
            return self._train_one(value)
        then = None if value.then is None else self._train_one(value.then)
        return _Evaluated(value.metrics, value.mixed, then)

    def _snapshot(self, value: _Raw | _Evaluated[_Raw]) -> Trained | Finished:
        """Snapshot the trained weights to send."""
        if isinstance(value, _Raw):
            return self._snapshot_one(value)
        then = None if value.then is None else self._snapshot_one(value.then)
        return Finished(value.metrics, value.mixed, then)

    def _train_one(self, to_train: _ToTrain) -> _Raw:
        started = time.perf_counter()
        # the first round has nothing mixed or adopted to fall back on: keep what it starts from
        start = to_train.start if to_train.start is not None else self.learner.get_weights()
        result = self.learner.train(to_train.round)
        return _Raw(to_train.round, start, result, time.perf_counter() - started)

    def _snapshot_one(self, raw: _Raw) -> Trained:
        """A fresh snapshot: its frames may sit in a slow peer's queue while we train on.
        A NaN model is dropped for the one training started from."""
        started = time.perf_counter()
        weights = self._weights_to_send()
        if not all_finite(weights):  # never send (or keep training) a NaN model
            self._non_finite(raw.round, f"local training (train loss {raw.result.loss})")
            self._replace_weights(raw.start)  # its momentum is NaN too
            weights = self._weights_to_send()
        return Trained(raw.round, raw.result, weights, raw.seconds + time.perf_counter() - started)

    # -- helpers -----------------------------------------------------------------------

    def _weights_to_send(self) -> Weights:
        """A ``TorchLearner``'s weights lent without a copy, any other learner's snapshot.
        Looked up on the class: a wrapper (an attacker, update DP) that forwards unknown
        attributes to its learner must not have its own ``get_weights`` bypassed."""
        learner = self.learner
        if isinstance(learner, TorchLearner) and type(learner).get_weights is TorchLearner.get_weights:
            return learner.lend_weights()
        return learner.get_weights()

    def _replace_weights(self, weights: Weights) -> None:
        """Load weights that did not come from our own last step, and forget the
        optimizer state (momentum) of the model they replace, if the learner keeps any."""
        self.learner.set_weights(weights)
        restart = getattr(self.learner, "restart_optimizer", None)
        if callable(restart):
            restart()

    def _non_finite(self, round_: int, during: str) -> None:
        self.stats.non_finite_models += 1
        log.error(
            "node %s round %d: %s gave NaN/Inf weights; keeping the weights from before it. "
            "Lower the learning rate, or use a robust aggregator if a neighbour sends extreme models",
            self.name, round_, during,
        )

    def _round_metrics(self, job: Finish, evaluation: EvalResult, finish_seconds: float) -> RoundMetrics:
        exchanged = job.exchanged
        return RoundMetrics(
            node=self.name,
            round=exchanged.round,
            train_loss=job.sent.result.loss,
            test_loss=evaluation.loss,
            test_accuracy=evaluation.accuracy,
            bytes_sent=exchanged.bytes_sent,
            bytes_received=exchanged.bytes_received,
            round_seconds=job.sent.seconds + exchanged.seconds + finish_seconds,
            received_from=exchanged.received_from,
            missing=exchanged.missing,
            # a differentially private learner's TrainResult carries its spent epsilon
            epsilon=getattr(job.sent.result, "epsilon", None),
            timestamp=time.time(),
            # a Learner of the user's may build its result without the field
            metrics=getattr(evaluation, "metrics", None) or {},
        )
