"""``p2pfl simulate --cluster ray|auto|ray://HOST:PORT``: one simulation sharded over Ray actors.

The driver (this process) builds the experiment only to name the nodes and write the
summary; it cuts the nodes into shards of ``shard_size``, places one
:class:`~p2pfl.simulation.cluster_shard.ShardActor` per shard (a placement group, one
CPU and a share of the GPUs each), lets every shard bind, hands each the others' tcp
endpoints, and then follows the shards' round reports with the same
:class:`~p2pfl.simulation.recorder.MetricsRecorder` a one-process run uses: same
``metrics.jsonl``, ``summary.json``, models and progress.

A shard whose actor dies is a crash of all its nodes: they are counted as failed, the
other shards are told so their nodes stop waiting for them, and the run goes on.

Ray is imported only here and in the actors, never by ``import p2pfl``.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from p2pfl.errors import ConfigError
from p2pfl.simulation.churn import parse_outages
from p2pfl.simulation.cluster_shard import NodeReport, ShardActor
from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.recorder import MetricsRecorder, RoundSummary
from p2pfl.simulation.setup import Experiment, build_experiment
from p2pfl.simulation.simulator import SimulationResult, keep_results

log = logging.getLogger(__name__)

#: The one line shown when Ray is missing.
RAY_MISSING = "needs Ray: pip install 'p2pfl-gossip[cluster]'"

#: Seconds to wait for the shards' placement before saying the cluster is too small.
PLACEMENT_SECONDS = 60.0


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        ConfigError: (``cluster``) Ray is not installed, with the command that installs it.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError("cluster", RAY_MISSING) from None
    return ray


def run_cluster(
    config: ExperimentConfig,
    *,
    progress: Callable[[RoundSummary], None] | None = None,
    experiment: Experiment | None = None,
) -> SimulationResult:
    """Run ``config`` with its nodes sharded over the Ray cluster ``config.cluster``.

    Uses the Ray session this process already has (``ray.init`` done by the caller, as
    tests do); otherwise starts a local Ray (``ray``) or joins a cluster (``auto``,
    ``ray://HOST:PORT``) and leaves it again at the end.
    """
    if not config.cluster:
        raise ConfigError("cluster", "empty: run_simulation runs in one process")
    ray = import_ray()
    experiment = experiment or build_experiment(config)
    joined = not ray.is_initialized()
    if joined:
        if config.cluster == "ray":
            # metrics only travel through Ray: a small object store is plenty
            ray.init(include_dashboard=False, object_store_memory=100 * 2**20, configure_logging=False)
        else:
            ray.init(address=config.cluster, configure_logging=False)
    try:
        return _run(ray, config, experiment, progress)
    finally:
        if joined:
            ray.shutdown()


def plan_shards(names: Sequence[str], shard_size: int, cpus: int) -> list[list[str]]:
    """Consecutive nodes per shard: ``shard_size`` each (0: spread over ``cpus`` shards)."""
    size = shard_size or math.ceil(len(names) / max(1, cpus))
    return [list(names[i : i + size]) for i in range(0, len(names), size)]


def _run(
    ray: Any, config: ExperimentConfig, experiment: Experiment, progress: Callable[[RoundSummary], None] | None
) -> SimulationResult:
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1))
    shards = plan_shards(experiment.names, config.shard_size, cpus)
    if len(shards) > cpus:
        raise ConfigError(
            "shard_size", f"{len(shards)} shards need a CPU each and the cluster has {cpus}: "
            f"use shard_size >= {math.ceil(len(experiment.names) / max(1, cpus))}"
        )
    gpus = _gpu_share(config, resources.get("GPU", 0.0), len(shards))
    bundle = {"CPU": 1.0, **({"GPU": gpus} if gpus else {})}
    group = placement_group([bundle] * len(shards), strategy="SPREAD")  # over machines where it can
    ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_SECONDS)
    if not ready:
        remove_placement_group(group)
        raise ConfigError("cluster", f"could not place {len(shards)} shards of {bundle} in {PLACEMENT_SECONDS:.0f} s")
    shard_of = {name: i for i, shard in enumerate(shards) for name in shard}
    remote = ray.remote(ShardActor)
    run_id = uuid.uuid4().hex[:8]
    actors = [
        remote.options(
            name=f"p2pfl-{run_id}-shard-{i}",  # for `ray list actors`, and for a test that kills one
            num_cpus=1, num_gpus=gpus, max_concurrency=4,  # poll blocks; peers_down must get through
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i),
        ).remote(config, i, shard_of)
        for i in range(len(shards))
    ]
    log.info("run %s: %d nodes in %d shards of up to %d on %d CPUs", run_id, len(shard_of), len(shards),
             len(shards[0]), cpus)
    recorder = MetricsRecorder(experiment.names, Path(config.out) if config.out else None, progress)
    started = time.perf_counter()
    try:
        endpoints: dict[str, str] = {}
        for part in ray.get([actor.endpoints.remote() for actor in actors]):
            endpoints.update(part)
        # the wall time counts from here, as a one-process run's does from its first node:
        # starting the actors and building their learners is set-up
        log.info("run %s: shards bound in %.1f s", run_id, time.perf_counter() - started)
        started = time.perf_counter()
        ray.get([actor.start.remote(endpoints) for actor in actors])
        reports, lost = _follow(ray, actors, shards, recorder)
    finally:
        recorder.close()
        for actor in actors:
            ray.kill(actor)
        remove_placement_group(group)
    crashed = [name for name, outage in parse_outages(config.fail, config.recover).items() if outage.recover_round is None]
    failed = [name for name in experiment.names if name in crashed or name in lost]
    return keep_results(config, experiment, recorder, reports, failed, time.perf_counter() - started, interrupted=False)


def _follow(
    ray: Any, actors: list[Any], shards: list[list[str]], recorder: MetricsRecorder
) -> tuple[list[NodeReport], set[str]]:
    """Feed the shards' reports to ``recorder`` until every shard is done or dead.

    Returns the node reports of the shards that finished and the nodes of those that died.
    """
    from ray.exceptions import RayActorError

    pending = {actor.poll.remote(): i for i, actor in enumerate(actors)}
    reports: list[NodeReport] = []
    lost: set[str] = set()
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ref)
        try:
            events, done = ray.get(ref)
        except RayActorError as exc:  # the actor's process or machine is gone
            log.error(
                "shard %d (nodes %s) died: its nodes count as crashed and the run goes on (%s)",
                i, ", ".join(shards[i]), str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            lost.update(shards[i])
            for name in shards[i]:
                recorder.node_down(name)
            for j in pending.values():
                actors[j].peers_down.remote(shards[i])
            continue
        for kind, *what in events:
            if kind == "round":
                metrics, weights = what
                # Ray hands numpy arrays as read-only views of its object store: own copies
                recorder.on_round_end(metrics, {key: value.copy() for key, value in weights.items()})
            elif kind == "down":
                recorder.node_down(*what)
        if done is None:
            pending[actors[i].poll.remote()] = i
        else:
            reports.extend(done)
    return reports, lost


def _gpu_share(config: ExperimentConfig, gpus: float, shards: int) -> float:
    """Each shard's share of the cluster's GPUs when the nodes train on cuda (else 0)."""
    if not config.device.startswith("cuda"):
        return 0.0
    if not gpus:
        raise ConfigError("device", f"{config.device!r}, but the Ray cluster has no GPU")
    return math.floor(min(1.0, gpus / shards) * 1e4) / 1e4  # Ray counts GPU shares to 4 decimals
