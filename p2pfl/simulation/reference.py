"""The same synchronous algorithm as a plain loop: no nodes, no sockets, no asyncio.

Each round every learner takes its local steps, then all models are mixed at once,
``x <- W_r x``, with the round's mixing matrix (``gossip = "choco"``: CHOCO-SGD's
compressed differences and consensus step, written out in numpy). The networked simulation must reproduce
this exactly (up to float rounding); tests hold it to that, and the benchmark measures
the simulation's overhead against it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from p2pfl import wire
from p2pfl.aggregation.consensus import model_distances
from p2pfl.learning.learner import Weights
from p2pfl.node.compression import node_seed
from p2pfl.settings import parse_gossip
from p2pfl.simulation.recorder import RoundSummary
from p2pfl.simulation.setup import Experiment, claimed_cpu, torch_threads
from p2pfl.simulation.worker import pinned_thread
from p2pfl.topology import mixing_matrix_for_round


def run_reference(
    experiment: Experiment, *, on_round: Callable[[RoundSummary], None] | None = None
) -> list[Weights]:
    """Run ``experiment`` in-process; returns each node's final weights (index order)."""
    # the same conditions as the simulation: its threads share one core (see worker.py)
    with torch_threads(experiment.config.torch_threads), claimed_cpu(experiment.config) as cpu, pinned_thread(cpu):
        return _run(experiment, on_round)


def _run(experiment: Experiment, on_round: Callable[[RoundSummary], None] | None) -> list[Weights]:
    learners = experiment.learners
    algorithm, gamma = parse_gossip(experiment.config.gossip)
    choco = _Choco(experiment, gamma) if algorithm == "choco" else None
    for round_ in range(experiment.config.rounds):
        for learner in learners:
            learner.train(round_)
        snapshots = [learner.get_weights() for learner in learners]
        if choco is not None:
            mixed = choco.step(round_, snapshots)
        else:
            mixed = _mix(experiment, round_, snapshots)
        accuracies = []
        for learner, weights in zip(learners, mixed, strict=True):
            learner.set_weights(weights)
            accuracies.append(learner.evaluate().accuracy)
        if on_round is not None:
            distances = model_distances(mixed)
            on_round(
                RoundSummary(
                    round=round_, nodes=len(learners),
                    mean_accuracy=float(np.mean(accuracies)),
                    min_accuracy=float(np.min(accuracies)),
                    max_accuracy=float(np.max(accuracies)),
                    consensus_distance=float(distances.mean()),
                    bytes_sent=0,
                )
            )
    return [learner.get_weights() for learner in learners]


def _mix(experiment: Experiment, round_: int, snapshots: list[Weights]) -> list[Weights]:
    """``x <- W_r x``."""
    # torch, not numpy, for the product: a second (BLAS) thread pool would fight
    # torch's own for the cores and slow the training steps down
    w = torch.from_numpy(mixing_matrix_for_round(experiment.schedule, experiment.names, round_))
    mixed: list[Weights] = [{} for _ in snapshots]
    for key in snapshots[0]:
        stacked = torch.stack([torch.from_numpy(s[key]) for s in snapshots])
        product = torch.tensordot(w, stacked.double(), dims=1).to(stacked.dtype).numpy()
        for i in range(len(snapshots)):
            mixed[i][key] = product[i]
    return mixed


class _Choco:
    """CHOCO-SGD's Algorithm 1 on all nodes at once: the public copies ``x̂`` start at the
    common initial model; each node's codec generator is seeded as a node seeds it."""

    def __init__(self, experiment: Experiment, gamma: float) -> None:
        self._experiment = experiment
        self._gamma = gamma
        self._codec = wire.parse_codec(experiment.config.compress)
        self._rngs = [np.random.default_rng(node_seed(name, experiment.config.seed)) for name in experiment.names]
        initial = experiment.learners[0].get_weights()
        self._hats = [{k: np.array(v, dtype=np.float32) for k, v in initial.items()} for _ in experiment.names]

    def step(self, round_: int, xs: list[Weights]) -> list[Weights]:
        names, n = self._experiment.names, len(xs)
        for i in range(n):  # q_i = Q(x_i - x̂_i); x̂_i += q_i (on every holder of a copy)
            q = {k: xs[i][k] - self._hats[i][k] for k in xs[i]}
            sent = self._codec.encode(q, self._rngs[i]).sent if self._codec is not None else q
            self._hats[i] = {k: self._hats[i][k] + sent[k] for k in q}
        w = mixing_matrix_for_round(self._experiment.schedule, names, round_)
        order = sorted(range(n), key=lambda j: names[j])
        mixed: list[Weights] = []
        for i in range(n):  # x_i += γ Σ_j w_ij (x̂_j - x̂_i)
            new = {k: v.copy() for k, v in xs[i].items()}
            for j in order:
                if j != i and w[i, j] != 0:
                    for k in new:
                        new[k] += np.float32(self._gamma * w[i, j]) * (self._hats[j][k] - self._hats[i][k])
            mixed.append(new)
        return mixed
