"""Turn an :class:`ExperimentConfig` into topology, schedule, data and learners.

Shared by the networked simulation, the plain reference loop and the benchmarks, so
all three start from bit-identical models, data and shuffling.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from p2pfl.attacks import AttackingLearner
from p2pfl.data import Dataset, load_dataset, partition
from p2pfl.errors import ConfigError
from p2pfl.learning.learner import ArrayBatches, TorchLearner
from p2pfl.learning.models import build_model
from p2pfl.simulation.config import ExperimentConfig
from p2pfl.topology import RandomPeerSchedule, StaticSchedule, Topology, build_topology
from p2pfl.topology.schedule import GossipSchedule

DEFAULT_NODES = 16
_EVAL_BATCH = 1024


@dataclass
class Experiment:
    """Everything a run needs, built deterministically from the config."""

    config: ExperimentConfig
    topology: Topology
    schedule: GossipSchedule
    dataset: Dataset
    parts: list[np.ndarray]
    learners: list[TorchLearner | AttackingLearner]
    attackers: list[str] = field(default_factory=list)  # names of the attacking nodes
    slow: list[str] = field(default_factory=list)  # names of the slowed-down nodes

    @property
    def names(self) -> list[str]:
        return self.topology.names


def build_experiment(config: ExperimentConfig) -> Experiment:
    """Build the experiment; same config, same bits."""
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
    parts = partition(dataset.y_train, topology.n, config.partition, seed=config.seed)
    learners: list[TorchLearner | AttackingLearner] = list(build_learners(config, dataset, parts))
    attackers = pick_attackers(config, topology.n)
    for i in attackers:
        learners[i] = AttackingLearner(
            learners[i], config.attack, seed=node_seed(config.seed, i), num_classes=dataset.num_classes
        )
    names = [topology.names[i] for i in attackers]
    slow = [topology.names[i] for i in pick_slow_nodes(config, topology.n)]
    return Experiment(config, topology, schedule, dataset, parts, learners, names, slow)


def check_secure_neighbourhoods(schedule: GossipSchedule, names: list[str]) -> None:
    """Secure aggregation needs every node to have at least 3 neighbours."""
    from p2pfl.errors import NodeError
    from p2pfl.privacy.secagg import check_schedule

    try:
        check_schedule(schedule, names)
    except NodeError as exc:
        raise ConfigError("secure_aggregation", f"{exc}; use e.g. topology = \"random-regular:4\" or a torus") from None


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


def build_learners(
    config: ExperimentConfig, dataset: Dataset, parts: list[np.ndarray]
) -> list[TorchLearner]:
    """One learner per partition, all starting from the same initial model."""
    torch.manual_seed(config.seed)
    initial = make_model(config.model, dataset.input_shape, dataset.num_classes)
    x_test = torch.from_numpy(dataset.x_test)
    y_test = torch.from_numpy(dataset.y_test)
    test_batches = ArrayBatches(x_test, y_test, _EVAL_BATCH, shuffle=False)
    learners = []
    for i, idx in enumerate(parts):
        model = copy.deepcopy(initial)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        stream = node_seed(config.seed, i)
        train = ArrayBatches(
            torch.from_numpy(dataset.x_train[idx]), torch.from_numpy(dataset.y_train[idx]),
            config.batch_size, seed=stream,
        )
        learner = TorchLearner(
            model, optimizer, train, test_batches,
            local_epochs=config.local_epochs, local_steps=config.local_steps or None,
            device=config.device, seed=stream,
        )
        if config.dp:  # differential privacy wraps the plain learner (needs Opacus)
            from p2pfl.privacy.factory import privatize

            learner = privatize(  # type: ignore[assignment]
                learner, config.dp, seed=stream, rounds=config.rounds, clip=config.clip,
                noise=config.noise, target_epsilon=config.target_epsilon, delta=config.delta,
            )
        learners.append(learner)
    return learners


def make_model(spec: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A built-in model by name, or ``module:function`` returning the user's ``nn.Module``."""
    if ":" not in spec:
        return build_model(spec, input_shape, num_classes)
    module_name, _, function_name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            "model", f"cannot load {spec!r} ({exc}); give module:function importable from here"
        ) from None
    model = factory(input_shape, num_classes)
    if not isinstance(model, nn.Module):
        raise ConfigError("model", f"{spec} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def node_seed(seed: int, index: int) -> int:
    """Independent, reproducible per-node stream seed."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _node_count(config: ExperimentConfig) -> int | None:
    if config.nodes is not None:
        return config.nodes
    return None if Path(config.topology).exists() else DEFAULT_NODES


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
