"""Rehearse a whole consortium on this machine: one OS process per organisation.

The description is copied with every member moved to 127.0.0.1 on a free port, bundles
are generated exactly as for the real rollout (CurveZMQ keys included), and each member
runs ``p2pfl node --config <bundle>/node.toml`` as its own process. Afterwards the
members' metrics are merged into one ``metrics.jsonl`` / ``summary.json`` pair that
``p2pfl report`` reads like a simulation's.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2pfl._toml import dumps, read_toml
from p2pfl.aggregation.consensus import model_distances
from p2pfl.consortium.bundle import init_consortium
from p2pfl.consortium.description import Description, load_description
from p2pfl.node.records import metrics_summary, summary_json
from p2pfl.settings import SETTINGS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RehearsalResult:
    """What a rehearsal produced."""

    out_dir: Path
    summary: dict[str, Any]
    returncodes: dict[str, int | None]  # None: killed at the timeout


def rehearse(
    description_path: str | Path,
    out_dir: str | Path,
    *,
    timeout: float = 600.0,
    torch_threads: int = 1,
    extra_args: tuple[str, ...] = (),
) -> RehearsalResult:
    """Run every member of the description as a local process and collect the results.

    Args:
        description_path: the consortium description (as for ``consortium init``).
        out_dir: receives ``description.toml``, ``bundles/``, ``logs/``, ``metrics.jsonl``
            and ``summary.json``.
        timeout: seconds after which members still running are killed.
        torch_threads: torch threads per member process (several share this machine).
        extra_args: more ``p2pfl node`` arguments for every member (e.g. ``--insecure``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    local = _localise(Path(description_path), out / "description.toml", torch_threads)
    bundles = out / "bundles"
    init_consortium(local, bundles, force=True)
    description = load_description(local)
    names = description.names
    (out / "logs").mkdir(exist_ok=True)
    started = time.perf_counter()
    processes = {}
    for name in names:
        log_file = (out / "logs" / f"{name}.log").open("w")
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", "p2pfl", "node", "--config", str(bundles / name / "node.toml"), *extra_args],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log_file.close()
    returncodes: dict[str, int | None] = {}
    deadline = time.monotonic() + timeout
    for name, process in processes.items():
        try:
            returncodes[name] = process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.error("member %s still running after %.0fs: killed", name, timeout)
            process.kill()
            process.wait()
            returncodes[name] = None
    wall = time.perf_counter() - started
    summary = {**_what_ran(description), **collect(bundles, names, out, wall)}
    summary["returncodes"] = returncodes
    (out / "summary.json").write_text(summary_json(summary))
    return RehearsalResult(out, summary, returncodes)


def collect(bundles: Path, names: list[str], out: Path, wall: float) -> dict[str, Any]:
    """Merge the members' metrics into ``out/metrics.jsonl`` and summarise the run."""
    rows = []
    for name in names:
        path = bundles / name / "state" / "metrics.jsonl"
        if path.exists():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda row: (row["round"], names.index(row["node"])))
    distances = _final_consensus(bundles, names)
    with (out / "metrics.jsonl").open("w") as handle:
        for row in rows:
            row.setdefault("consensus_distance", None)  # per-round models stay with their owners
            handle.write(json.dumps(row) + "\n")
    last_round = {name: max((r["round"] for r in rows if r["node"] == name), default=-1) for name in names}
    finals = [r for r in rows if r["round"] == last_round[r["node"]]]
    accuracies = [r["test_accuracy"] for r in finals if r["test_accuracy"] is not None]
    return {
        "nodes": len(names),
        "rounds_completed": min(last_round.values()) + 1,
        "mean_accuracy": float(np.mean(accuracies)) if accuracies else None,
        "min_accuracy": min(accuracies) if accuracies else None,
        "max_accuracy": max(accuracies) if accuracies else None,
        "accuracy_by_member": {r["node"]: r["test_accuracy"] for r in finals},
        "metrics": metrics_summary(finals),  # the learners' own ([training] metrics): mean/min/max
        "consensus_distance": distances,
        "wall_seconds": wall,
        "bytes_sent_total": sum(r["bytes_sent"] for r in rows),
    }


def _what_ran(description: Description) -> dict[str, Any]:
    """Which run this is, for the summary and the report's titles: the consortium, its
    members (the names deployed nodes take), topology, rounds and data."""
    training = description.training
    bundled = training.learner.startswith("p2pfl.examples.bundled:")
    return {
        "consortium": description.name,
        "members": description.names,
        "topology": description.topology,
        "rounds": training.rounds,
        # the bundled learner names its dataset; an organisation's own learner is its data
        "dataset": training.learner_args.get("dataset", SETTINGS["dataset"].default) if bundled else training.learner,
    }


def _final_consensus(bundles: Path, names: list[str]) -> float | None:
    """Mean squared distance of the members' final models to their average."""
    import torch  # only to read the members' models: the consortium tools load without torch

    models = []
    for name in names:
        path = bundles / name / "state" / "final_model.pt"
        if not path.exists():
            return None
        state = torch.load(path, weights_only=True)  # written by our own member process
        models.append({k: v.double().numpy() for k, v in state.items() if v.is_floating_point()})
    return float(model_distances(models).mean())


def _localise(description: Path, target: Path, torch_threads: int) -> Path:
    """A copy of the description with every member on 127.0.0.1 and a free port."""
    values = read_toml(description, "description")
    members = values.get("members", [])
    ports = free_loopback_ports(len(members))
    for member, port in zip(members, ports, strict=True):
        member["host"] = "127.0.0.1"
        member["port"] = port
        member["bind"] = f"tcp://127.0.0.1:{port}"
    training = values.setdefault("training", {})
    training.setdefault("torch_threads", torch_threads)
    topology = values.get("topology", "ring")
    candidate = description.parent / str(topology)
    if candidate.exists():  # a topology file: keep pointing at it from the new location
        values["topology"] = str(candidate.resolve())
    target.write_text(dumps(values))
    return target


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
