"""Atomic per-round checkpoints and the final model file.

Only files this node wrote itself are ever read back here (``torch.load`` with
``weights_only=True``); nothing that came from the network is loaded this way.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from p2pfl.errors import ConfigError
from p2pfl.learning.learner import Learner

log = logging.getLogger(__name__)

FORMAT = 1
CHECKPOINT_FILE = "checkpoint.pt"
FINAL_MODEL_FILE = "final_model.pt"


@dataclass(frozen=True)
class Checkpoint:
    """What a restarted node resumes from."""

    node: str
    round: int  # last completed round; the node resumes at round + 1
    learner: dict[str, Any]


def learner_state(learner: Learner) -> dict[str, Any]:
    """The learner's full state if it offers one (TorchLearner), else its shared weights."""
    state = getattr(learner, "state", None)
    if callable(state):
        return {"kind": "state", "state": state()}
    return {"kind": "weights", "weights": {k: torch.from_numpy(v) for k, v in learner.get_weights().items()}}


def restore_learner(learner: Learner, saved: dict[str, Any]) -> None:
    if saved["kind"] == "state":
        learner.load_state(saved["state"])  # type: ignore[attr-defined]
    else:
        learner.set_weights({k: v.numpy() for k, v in saved["weights"].items()})


def save_checkpoint(directory: Path, node: str, round_: int, learner: Learner) -> Path:
    """Write the checkpoint atomically: a crash mid-write leaves the previous one intact."""
    path = directory / CHECKPOINT_FILE
    atomic_torch_save({"format": FORMAT, "node": node, "round": round_, "learner": learner_state(learner)}, path)
    return path


def load_checkpoint(directory: Path, node: str) -> Checkpoint | None:
    """The node's last checkpoint, or None if it has none yet."""
    path = directory / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        data = torch.load(path, weights_only=True)  # our own file, never a peer's bytes
    except Exception as exc:
        raise ConfigError(
            "state_dir", f"checkpoint {path} cannot be read ({exc}); move it away to start afresh"
        ) from None
    if data.get("format") != FORMAT or data.get("node") != node:
        raise ConfigError(
            "state_dir", f"{path} belongs to node {data.get('node')!r} (format {data.get('format')}), "
            f"not {node!r}: give this node its own state_dir"
        )
    return Checkpoint(node=node, round=int(data["round"]), learner=data["learner"])


def save_final_model(directory: Path, learner: Learner) -> Path:
    """The trained model as a plain state_dict file: ``torch.load(path)`` reads it."""
    model = getattr(learner, "model", None)
    if isinstance(model, torch.nn.Module):
        state = model.state_dict()
    else:
        state = {k: torch.from_numpy(v) for k, v in learner.get_weights().items()}
    path = directory / FINAL_MODEL_FILE
    atomic_torch_save(state, path)
    return path


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)
