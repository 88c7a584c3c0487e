"""``p2pfl simulate --cluster ray|auto|ray://HOST:PORT``: one simulation sharded over Ray actors.

The driver (this process) builds the experiment without learners
(:func:`driver_experiment`), only to name the nodes and write the summary; it cuts the
nodes into shards of ``shard_size``, places one
:class:`~p2pfl.simulation.cluster_shard.ShardActor` per shard (a placement group, one
CPU and a share of the GPUs each), lets every shard bind, hands each the others' tcp
endpoints, and then follows the shards' round reports with a
:class:`~p2pfl.simulation.recorder.ReducedRecorder`, a one-process run's recorder that
gets no model: same ``metrics.jsonl``, ``summary.json``, models and progress.

No node's model goes through Ray per round. For the consensus distance each shard sends
the float64 sum of its nodes' models (and their number) as it closes a round; the driver
adds them into the average, puts it once in the object store and hands it to the shards,
which answer with each node's squared distance to it. The final models are fetched once,
at the end.

A shard whose actor dies is a crash of all its nodes: they are counted as failed, the
other shards are told so their nodes stop waiting for them, and the run goes on.

Ray is imported only here and in the actors, never by ``import p2pfl``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from p2pfl.errors import ConfigError
from p2pfl.node.records import NodeStats, RoundMetrics
from p2pfl.simulation.churn import parse_outages
from p2pfl.simulation.cluster_shard import NodeReport, ShardActor
from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.divergence import divergence_hint
from p2pfl.simulation.recorder import ReducedRecorder, RoundSummary
from p2pfl.simulation.setup import Experiment, build_experiment
from p2pfl.simulation.simulator import SimulationResult, keep_results

log = logging.getLogger(__name__)

#: The one line shown when Ray is missing.
RAY_MISSING = "needs Ray: pip install 'p2pfl-gossip[cluster]'"

#: Seconds to wait for the shards' placement before saying the cluster is too small.
PLACEMENT_SECONDS = 60.0

#: Seconds an interrupted run waits for the shards' final models.
FETCH_SECONDS = 10.0


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
    experiment = experiment or driver_experiment(config)
    joined = not ray.is_initialized()
    if joined:
        _connect(ray, config.cluster)
    try:
        return _run(ray, config, experiment, progress)
    finally:
        if joined:
            ray.shutdown()


def driver_experiment(config: ExperimentConfig) -> Experiment:
    """The experiment as the driver needs it: names, topology, attackers, slow nodes,
    and no learner, which the shards build (with DP every learner, for the summary's
    noise multipliers). The model is still checked against the data here."""
    return build_experiment(config, only=None if config.dp else ())


def _connect(ray: Any, cluster: str) -> None:
    """Start a local Ray (``ray``) or join the cluster ``cluster`` names."""
    try:
        if cluster == "ray":
            # "local": a new Ray of our own, even where a `ray start` cluster runs on this
            # machine; metrics only travel through it, so a small object store is plenty
            ray.init(address="local", include_dashboard=False, object_store_memory=100 * 2**20,
                     configure_logging=False)
        else:
            ray.init(address=cluster, configure_logging=False)
    except ConnectionError as exc:  # no cluster there: one line, not Ray's traceback
        where = f"at {cluster}" if cluster != "auto" else "running on this machine (`ray start --head` starts one)"
        raise ConfigError("cluster", f"no Ray cluster {where}: {exc}") from None


def plan_shards(names: Sequence[str], shard_size: int, cpus: int) -> list[list[str]]:
    """Consecutive nodes per shard: ``shard_size`` each (0: spread over ``cpus`` shards)."""
    size = shard_size or math.ceil(len(names) / max(1, cpus))
    return [list(names[i : i + size]) for i in range(0, len(names), size)]


def _run(
    ray: Any, config: ExperimentConfig, experiment: Experiment, progress: Callable[[RoundSummary], None] | None
) -> SimulationResult:
    from ray.util.placement_group import placement_group, remove_placement_group

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
    try:
        ready, _ = ray.wait([group.ready()], timeout=PLACEMENT_SECONDS)
        if not ready:
            raise ConfigError(
                "cluster", f"could not place {len(shards)} shards of {bundle} in {PLACEMENT_SECONDS:.0f} s"
            )
        return _run_shards(ray, config, experiment, progress, shards, gpus, group)
    finally:
        remove_placement_group(group)


def _run_shards(
    ray: Any, config: ExperimentConfig, experiment: Experiment, progress: Callable[[RoundSummary], None] | None,
    shards: list[list[str]], gpus: float, group: Any,
) -> SimulationResult:
    """One actor per shard in ``group``'s bundles; the run, followed from start to end."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

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
    log.info("run %s: %d nodes in %d shards of up to %d", run_id, len(shard_of), len(shards), len(shards[0]))
    recorder = ReducedRecorder(
        experiment.names, Path(config.out) if config.out else None, progress, divergence_hint(config.gossip)
    )
    follower = _Follower(ray, actors, shards, recorder)
    outages = parse_outages(config.fail, config.recover)
    crashed = [name for name, outage in outages.items() if outage.recover_round is None]
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
        reports = follower.follow()
        follower.fetch_final_weights()
    except KeyboardInterrupt:  # Ctrl-C: keep what the run did, as a one-process run does
        recorder.close()
        with contextlib.suppress(Exception):  # the models as they are, if the shards still answer
            follower.fetch_final_weights(timeout=FETCH_SECONDS)
        failed = [name for name in experiment.names if name in crashed or name in follower.lost]
        keep_results(config, experiment, recorder, follower.partial(), failed, time.perf_counter() - started,
                     interrupted=True)
        raise
    finally:
        recorder.close()
        for actor in actors:
            ray.kill(actor)
    failed = [name for name in experiment.names if name in crashed or name in follower.lost]
    wall = time.perf_counter() - started
    return keep_results(config, experiment, recorder, reports, failed, wall, interrupted=False)


class _Follower:
    """Feeds the shards' reports to the driver's recorder until every shard is done or
    dead, and reduces the shards' round sums into each round's consensus distances."""

    def __init__(self, ray: Any, actors: list[Any], shards: list[list[str]], recorder: ReducedRecorder) -> None:
        self._ray = ray
        self._actors = actors
        self._shards = shards
        self._recorder = recorder
        self.lost: set[str] = set()  # the nodes of the shards that died
        self._histories: dict[str, list[RoundMetrics]] = {name: [] for shard in shards for name in shard}
        self._dead: set[int] = set()  # shards whose actor died
        self._ended: set[int] = set()  # shards that sent all they will (their poll returned the reports)
        self._sums: dict[int, dict[int, tuple[Any, int]]] = {}  # round -> shard -> (its sums, its count)
        self._centring: dict[int, set[int]] = {}  # round -> shards yet to send their distances
        self._distances: dict[int, dict[str, float]] = {}  # round -> the distances sent so far
        self._pending: dict[Any, tuple[int, int | None]] = {}  # object ref -> (shard, round of a centre call)

    def follow(self) -> list[NodeReport]:
        """The node reports of the shards that finished."""
        from ray.exceptions import RayActorError

        ray, actors, pending = self._ray, self._actors, self._pending
        pending.update({actor.poll.remote(): (i, None) for i, actor in enumerate(actors)})
        reports: list[NodeReport] = []
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            i, centred = pending.pop(ref)
            try:
                answer = ray.get(ref)
            except RayActorError as exc:  # the actor's process or machine is gone
                if i not in self._dead:
                    self._shard_died(i, exc)
                continue
            if centred is not None:
                self._centred(i, centred, answer)
                continue
            events, done = answer
            for kind, *what in events:
                if kind == "round":
                    [metrics] = what
                    self._histories[metrics.node].append(metrics)
                    self._recorder.report(metrics)
                elif kind == "sum":
                    round_, sums, count = what
                    self._sums.setdefault(round_, {})[i] = (sums, count)
                elif kind == "down":
                    self._recorder.node_down(*what)
            if done is None:
                pending[actors[i].poll.remote()] = (i, None)
            else:
                reports.extend(done)
                self._ended.add(i)
            self._reduce()
        return reports

    def fetch_final_weights(self, timeout: float | None = None) -> None:
        """Every live shard's final models into the recorder: once, at the end."""
        live = [actor for i, actor in enumerate(self._actors) if i not in self._dead]
        for part in self._ray.get([actor.final_weights.remote() for actor in live], timeout=timeout):
            for name, weights in part.items():
                # Ray hands numpy arrays as read-only views of its object store: own copies
                self._recorder.final_weights[name] = {key: value.copy() for key, value in weights.items()}

    def partial(self) -> list[NodeReport]:
        """The nodes as far as their round reports tell (an interrupted run: no counters)."""
        return [NodeReport(name, NodeStats(), history) for name, history in self._histories.items()]

    def _reduce(self) -> None:
        """Average the rounds every live shard has sent its sum of (in round order: a
        shard sends its sums in order, so a later round is never complete before), and
        hand each average to the shards that counted models in it."""
        for round_ in sorted(self._sums):
            have = self._sums[round_]
            if any(j not in have for j in range(len(self._actors)) if j not in self._dead | self._ended):
                return
            del self._sums[round_]
            parts = {j: part for j, part in sorted(have.items()) if j not in self._dead and part[1]}
            count = sum(number for _, number in parts.values())
            if not count:
                self._recorder.give_distances(round_, {})
                continue
            keys = parts[min(parts)][0]
            # added shard after shard in float64: the one-process average up to rounding
            mean = {key: sum(sums[key] for sums, _ in parts.values()) / count for key in keys}
            ref = self._ray.put(mean)  # once, for all the shards
            self._centring[round_] = set(parts)
            self._distances[round_] = {}
            for j in parts:
                self._pending[self._actors[j].centre.remote(round_, ref)] = (j, round_)

    def _centred(self, shard: int, round_: int, distances: dict[str, float]) -> None:
        self._distances[round_].update(distances)
        self._centring[round_].discard(shard)
        self._give_complete()

    def _give_complete(self) -> None:
        for round_ in sorted(self._centring):
            if not self._centring[round_]:
                del self._centring[round_]
                self._recorder.give_distances(round_, self._distances.pop(round_))

    def _shard_died(self, index: int, exc: Exception) -> None:
        names = self._shards[index]
        log.error(
            "shard %d (nodes %s) died: its nodes count as crashed and the run goes on (%s)",
            index, ", ".join(names), str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
        self._dead.add(index)
        self.lost.update(names)
        for name in names:
            self._recorder.node_down(name)
        for j, actor in enumerate(self._actors):  # their nodes stop waiting for these at once
            if j not in self._dead and j not in self._ended:
                actor.peers_down.remote(names)
        for waiting in self._centring.values():  # its distances will not come (its nodes get NaN)
            waiting.discard(index)
        self._give_complete()
        self._reduce()


def _gpu_share(config: ExperimentConfig, gpus: float, shards: int) -> float:
    """Each shard's share of the cluster's GPUs when the nodes train on cuda (else 0)."""
    if not config.device.startswith("cuda"):
        return 0.0
    if not gpus:
        raise ConfigError("device", f"{config.device!r}, but the Ray cluster has no GPU")
    return math.floor(min(1.0, gpus / shards) * 1e4) / 1e4  # Ray counts GPU shares to 4 decimals
