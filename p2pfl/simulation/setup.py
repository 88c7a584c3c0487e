"""Turn an :class:`ExperimentConfig` into topology, schedule, data and learners.

Shared by the networked simulation, the plain reference loop and the benchmarks, so
all three start from bit-identical models, data and shuffling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from p2pfl.assembly import build_learners
from p2pfl.attacks import AttackingLearner
from p2pfl.data import Dataset, load_dataset, share
from p2pfl.errors import ConfigError
from p2pfl.learning.build import check_model_fits, make_model, node_seed
from p2pfl.learning.learner import Learner
from p2pfl.privacy.neighbourhood import secure_neighbourhood_errors
from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.worker import claimed_core, current_cpu
from p2pfl.topology import RandomPeerSchedule, StaticSchedule, Topology, build_topology
from p2pfl.topology.schedule import GossipSchedule

__all__ = [  # the learner builders are re-exported: scripts and tests import them from here
    "DEFAULT_NODES", "Experiment", "build_experiment", "build_learners", "check_model_fits",
    "check_secure_neighbourhoods", "claimed_cpu", "make_model", "node_seed", "pick_attackers",
    "pick_slow_nodes", "torch_threads",
]

DEFAULT_NODES = 16


@dataclass
class Experiment:
    """Everything a run needs, built deterministically from the config."""

    config: ExperimentConfig
    topology: Topology
    schedule: GossipSchedule
    dataset: Dataset
    parts: list[np.ndarray]
    learners: list[Learner]  # TorchLearners, their DP versions, AttackingLearners
    attackers: list[str] = field(default_factory=list)  # names of the attacking nodes
    slow: list[str] = field(default_factory=list)  # names of the slowed-down nodes
    samples_dealt: int = 1  # > 1: the training set was dealt that many times (nodes share samples)
    built: list[int] | None = None  # indices of the nodes whose learners were built (None: all)

    @property
    def names(self) -> list[str]:
        return self.topology.names

    @property
    def learner_of(self) -> dict[str, Learner]:
        """The built learners by node name."""
        indices = range(self.topology.n) if self.built is None else self.built
        return {self.topology.names[i]: learner for i, learner in zip(indices, self.learners, strict=True)}


def build_experiment(config: ExperimentConfig, *, only: Collection[str] | None = None) -> Experiment:
    """Build the experiment; same config, same bits.

    ``only``: build the learners of these nodes alone (``Experiment.built`` lists their
    indices, ``Experiment.learners`` holds them in that order), each bit-identical to the
    whole build's: a cluster shard builds its own nodes', not the other shards'. The
    topology, schedule, data split, attackers and slow nodes are drawn for the whole
    config either way (they are cheap).
    """
    topology = build_topology(
        config.topology, _node_count(config), seed=config.seed, mixing=config.mixing
    )
    schedule: GossipSchedule
    if config.fanout:
        schedule = RandomPeerSchedule(topology.names, config.fanout, config.seed)
    else:
        schedule = StaticSchedule(topology)
    if config.secure_aggregation:
        check_secure_neighbourhoods(schedule, topology.names)
    dataset = load_dataset(
        config.dataset, seed=config.seed, test_fraction=config.test_fraction,
        image=config.model == "cnn",
    )
    shares = share(dataset.y_train, topology.n, config.partition, seed=config.seed)
    built = None if only is None else _indices(topology.names, only)
    learners = build_learners(config, dataset, shares.parts, only=built)
    position = {i: k for k, i in enumerate(range(topology.n) if built is None else built)}
    attackers = pick_attackers(config, topology.n)
    for i in attackers:
        if i in position:
            learners[position[i]] = AttackingLearner(
                learners[position[i]], config.attack, seed=node_seed(config.seed, i), num_classes=dataset.num_classes
            )
    names = [topology.names[i] for i in attackers]
    slow = [topology.names[i] for i in pick_slow_nodes(config, topology.n)]
    return Experiment(
        config, topology, schedule, dataset, shares.parts, learners, names, slow, shares.copies, built
    )


def _indices(names: list[str], only: Collection[str]) -> list[int]:
    """The indices of the nodes ``only`` names, in node order."""
    wanted = set(only)
    unknown = wanted.difference(names)
    if unknown:
        raise ValueError(f"no such nodes: {', '.join(sorted(unknown))}")
    return [i for i, name in enumerate(names) if name in wanted]


def check_secure_neighbourhoods(schedule: GossipSchedule, names: list[str]) -> None:
    """Secure aggregation needs every node to have at least 3 neighbours."""
    errors = list(secure_neighbourhood_errors(schedule, names).values())
    if errors:  # the first node that would refuse, with how to fix the topology
        why = str(errors[0]).partition(": ")[2]
        raise ConfigError(errors[0].field, f"{why}; use e.g. topology = \"random-regular:4\" or a torus")


def pick_attackers(config: ExperimentConfig, n: int) -> list[int]:
    """Indices of the ``config.attackers`` attacking nodes, drawn with the seed."""
    if config.attackers > n - 1:  # the count may come from a topology file
        raise ConfigError("attackers", f"at most nodes - 1 = {n - 1} (one node must be honest), got {config.attackers}")
    if not config.attackers:
        return []
    return sorted(int(i) for i in np.random.default_rng(config.seed).choice(n, config.attackers, replace=False))


def pick_slow_nodes(config: ExperimentConfig, n: int) -> list[int]:
    """Indices of the ``config.slow_nodes`` slow nodes, drawn with the seed."""
    if config.slow_nodes > n:  # the count may come from a topology file
        raise ConfigError("slow_nodes", f"at most the {n} nodes, got {config.slow_nodes}")
    if not config.slow_nodes:
        return []
    rng = np.random.default_rng([config.seed, 1])  # a stream apart from the attackers'
    return sorted(int(i) for i in rng.choice(n, config.slow_nodes, replace=False))


def _node_count(config: ExperimentConfig) -> int | None:
    if config.nodes is not None:
        return config.nodes
    return None if Path(config.topology).exists() else DEFAULT_NODES


@contextlib.contextmanager
def claimed_cpu(config: ExperimentConfig) -> Iterator[int | None]:
    """The core to keep a run's threads on, held for the block, or None (not pinned).

    The caller's current core, or another if a simulation running beside this one holds
    it (:func:`~p2pfl.simulation.worker.claimed_core`). Only single-threaded torch is
    pinned: intra-op threads need the other cores.
    """
    preferred = current_cpu() if config.pin_cpu and config.torch_threads == 1 else None
    with claimed_core(preferred) as cpu:
        yield cpu


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Use ``count`` torch intra-op threads inside the block (0 = leave as is).

    Many small models taking turns on one worker gain nothing from intra-op threads,
    while idle OpenMP threads spin on the cores the event loop needs (measured: a
    4-node run 13x slower on a loaded 2-core machine).
    """
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count:
            torch.set_num_threads(previous)
