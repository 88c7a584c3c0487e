"""Turn an :class:`ExperimentConfig` into topology, schedule, data and learners.

Shared by the networked simulation, the plain reference loop and the benchmarks, so
all three start from bit-identical models, data and shuffling.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from p2pfl.attacks import AttackingLearner
from p2pfl.data import Dataset, load_dataset, partition
from p2pfl.errors import ConfigError, P2PFLError
from p2pfl.learning.learner import ArrayBatches, TorchLearner
from p2pfl.learning.models import build_model
from p2pfl.privacy.neighbourhood import secure_neighbourhood_errors
from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.worker import claimed_core, current_cpu
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


def build_learners(
    config: ExperimentConfig, dataset: Dataset, parts: list[np.ndarray]
) -> list[TorchLearner]:
    """One learner per partition, all starting from the same initial model."""
    torch.manual_seed(config.seed)
    initial = make_model(config.model, dataset.input_shape, dataset.num_classes)
    check_model_fits(config.model, initial, dataset, parts[0][: config.batch_size], config.device)
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
    """A built-in model by name, or ``module:function`` returning the user's ``nn.Module``.

    The module is looked up in the current folder too, as ``python -m`` would.
    """
    if ":" not in spec:
        if spec.strip().lower() == "cnn" and len(input_shape) != 3:  # a CLI user cannot reshape the data
            raise ConfigError(
                "model", f"the cnn model needs an image dataset such as digits (samples of shape (1, 8, 8)), "
                f"but this dataset's samples have shape {input_shape}; use the mlp or logreg model"
            )
        return build_model(spec, input_shape, num_classes)
    module_name, _, function_name = spec.partition(":")
    try:
        with _cwd_importable():
            factory = getattr(importlib.import_module(module_name), function_name)
    except Exception as exc:  # missing, or broken at import: either way the spec is at fault
        raise ConfigError(
            "model", f"cannot load {spec!r} ({type(exc).__name__}: {exc}); give module:function "
            "importable from the current folder or an installed package"
        ) from None
    try:
        with _cwd_importable():  # a builder may import its helpers lazily
            model = factory(input_shape, num_classes)
    except P2PFLError:
        raise
    except Exception as exc:
        raise ConfigError(
            "model", f"{spec}({input_shape}, {num_classes}) raised {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError("model", f"{spec} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """Put the current folder first on ``sys.path`` for the block, unless it is there.

    The ``p2pfl`` console script, unlike ``python -m``, does not, so a user's model
    package next to the experiment would not be found. Removed afterwards: imports made
    later must not pick up whatever the current folder holds.
    """
    cwd = os.getcwd()
    if "" in sys.path or cwd in sys.path:
        yield
        return
    sys.path.insert(0, cwd)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(cwd)


def check_model_fits(
    spec: str, model: nn.Module, dataset: Dataset, sample: np.ndarray, device: str
) -> None:
    """One forward pass and loss on a training batch, so a model that does not fit the
    data fails here in one line rather than inside every node.

    Runs on a copy with torch's RNG restored afterwards: dropout or batch-norm
    statistics in the probe must not change the run's numbers.

    Raises:
        ConfigError: (field ``model``) with what the model must accept and return.
    """
    shape, classes = dataset.input_shape, dataset.num_classes
    flat = " (flat features: reshape inside the model if it expects images)" if len(shape) == 1 else ""
    expected = (
        f"the model must take float32 inputs of shape (batch, {', '.join(map(str, shape))}){flat} "
        f"and return (batch, {classes}) class scores"
    )
    place = torch.device(device)
    probe = copy.deepcopy(model).to(place)
    x = torch.from_numpy(dataset.x_train[sample]).to(place)
    y = torch.from_numpy(dataset.y_train[sample]).to(place)
    gpus = [place] if place.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=gpus), torch.no_grad():
            scores = probe(x)
            if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (len(x), classes):
                got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
                raise ValueError(f"it returned {got} for a batch of {len(x)}")
            nn.functional.cross_entropy(scores, y)
    except Exception as exc:
        raise ConfigError("model", f"{spec} does not fit {dataset.name} ({type(exc).__name__}: {exc}); {expected}") from None


def node_seed(seed: int, index: int) -> int:
    """Independent, reproducible per-node stream seed."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


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
