"""The same synchronous algorithm as a plain loop: no nodes, no sockets, no asyncio.

Each round every learner takes its local steps, then all models are mixed at once,
``x <- W_r x``, with the round's mixing matrix. The networked simulation must reproduce
this exactly (up to float rounding); tests hold it to that, and the benchmark measures
the simulation's overhead against it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from p2pfl.aggregation.consensus import model_distances
from p2pfl.learning.learner import Weights
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
    names = experiment.names
    learners = experiment.learners
    for round_ in range(experiment.config.rounds):
        for learner in learners:
            learner.train(round_)
        snapshots = [learner.get_weights() for learner in learners]
        # torch, not numpy, for the product: a second (BLAS) thread pool would fight
        # torch's own for the cores and slow the training steps down
        w = torch.from_numpy(mixing_matrix_for_round(experiment.schedule, names, round_))
        mixed: list[Weights] = [{} for _ in learners]
        for key in snapshots[0]:
            stacked = torch.stack([torch.from_numpy(s[key]) for s in snapshots])
            product = torch.tensordot(w, stacked.double(), dims=1).to(stacked.dtype).numpy()
            for i in range(len(learners)):
                mixed[i][key] = product[i]
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
