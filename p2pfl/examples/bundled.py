"""``build_learner`` for consortium rehearsals on the bundled datasets.

Member ``index`` of ``nodes`` gets exactly the learner the simulator gives node
``index`` for the same settings (same split, partition, initial model and RNG streams:
both build it with :func:`p2pfl.assembly.build_learners`), so a rehearsal's accuracy
can be compared with a simulation's.

In node.toml::

    learner = "p2pfl.examples.bundled:build_learner"
    learner_args = { index = 0, nodes = 5, dataset = "digits", partition = "dirichlet:0.5" }
"""

from __future__ import annotations

from typing import Any

from p2pfl.assembly import build_learners
from p2pfl.config import config_from_mapping
from p2pfl.data import load_dataset, share
from p2pfl.errors import ConfigError
from p2pfl.learning.learner import Learner
from p2pfl.simulation.config import ExperimentConfig  # the settings' schema and defaults


def build_learner(*, index: int, nodes: int, **settings: Any) -> Learner:
    """The simulator's learner ``index`` of ``nodes``.

    Args:
        index: this member's position (0-based) among the ``nodes`` members.
        nodes: number of members sharing the dataset.
        **settings: any :class:`~p2pfl.simulation.config.ExperimentConfig` field that
            shapes learning: dataset, partition, model, lr, momentum, weight_decay,
            batch_size, local_epochs, local_steps, seed, test_fraction, device.
    """
    if not 0 <= index < nodes:
        raise ConfigError("learner_args.index", f"must be in 0..{nodes - 1}, got {index}")
    config = config_from_mapping(ExperimentConfig, {"nodes": nodes, **settings})
    dataset = load_dataset(
        config.dataset, seed=config.seed, test_fraction=config.test_fraction,
        image=config.model == "cnn",
    )
    parts = share(dataset.y_train, nodes, config.partition, seed=config.seed).parts
    return build_learners(config, dataset, parts)[index]
