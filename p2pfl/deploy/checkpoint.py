"""Atomic per-round checkpoints and the final model file.

Only files this node wrote itself are ever read back here (``torch.load`` with
``weights_only=True``); nothing that came from the network is loaded this way.

A save writes a temporary file next to its target and renames it over the target
once complete, so a process killed mid-write leaves the previous file intact, plus
the partial temporary file. The writer holds an exclusive lock on its temporary file
until the rename (where ``fcntl`` exists); the kernel drops the locks of a killed
process, so a temporary file nobody holds locked is garbage, and
:func:`load_checkpoint` (which a node calls when it starts) removes such files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from p2pfl._files import atomic_write, remove_if_unlocked, temp_prefix
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


def restore_learner(learner: Learner, saved: dict[str, Any], source: Path | None = None) -> None:
    """Load a checkpoint's learner state into ``learner``.

    Args:
        source: the checkpoint file, named in the error when it does not fit.

    Raises:
        ConfigError: (``state_dir``) the checkpoint was written for another model.
    """
    try:
        if saved["kind"] == "state":
            learner.load_state(saved["state"])  # type: ignore[attr-defined]
        else:
            learner.set_weights({k: v.numpy() for k, v in saved["weights"].items()})
    except (RuntimeError, ValueError, KeyError) as exc:  # size mismatch, missing/unexpected keys
        raise _different_model(source, exc) from exc


def _different_model(source: Path | None, exc: BaseException) -> ConfigError:
    # torch spreads the mismatches over several lines; one line reads better in a log
    detail = " ".join(str(exc).split())
    if len(detail) > 300:
        detail = detail[:297] + "..."
    where = source if source is not None else "the checkpoint"
    state_dir = source.parent if source is not None else "the state_dir"
    return ConfigError(
        "state_dir", f"{where} was written for a different model ({type(exc).__name__}: {detail}): "
        f"move {state_dir} away to start afresh, or restore the old model"
    )


def save_checkpoint(directory: Path, node: str, round_: int, learner: Learner) -> Path:
    """Write the checkpoint atomically: a crash mid-write leaves the previous one intact."""
    path = directory / CHECKPOINT_FILE
    atomic_torch_save({"format": FORMAT, "node": node, "round": round_, "learner": learner_state(learner)}, path)
    return path


def load_checkpoint(directory: Path, node: str) -> Checkpoint | None:
    """The node's last checkpoint, or None if it has none yet.

    Also removes the temporary files of saves that were killed midway
    (:func:`remove_stale_temp_files`): a node calls this when it starts.
    """
    removed = remove_stale_temp_files(directory)
    if removed:
        log.warning(
            "removed %d temporary file(s) left in %s by a save that was interrupted: %s",
            len(removed), directory, ", ".join(p.name for p in removed),
        )
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


def temp_file_prefixes() -> tuple[str, ...]:
    """Name prefixes of the temporary files :func:`atomic_torch_save` writes here."""
    return tuple(temp_prefix(Path(name)) for name in (CHECKPOINT_FILE, FINAL_MODEL_FILE))


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete the temporary files that interrupted saves left in ``directory``.

    A temporary file is stale when no process holds its lock: a file being written
    right now (by another thread or process) is left alone. Without ``fcntl``
    (Windows), a file still open for writing cannot be deleted and is skipped.

    Returns:
        The files removed.
    """
    removed = []
    for prefix in temp_file_prefixes():
        for path in sorted(directory.glob(f"{prefix}*")):
            if remove_if_unlocked(path):
                removed.append(path)
    return removed


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``.

    The temporary file stays locked until it is renamed, so a concurrent
    :func:`remove_stale_temp_files` never deletes it.
    """
    with atomic_write(path, binary=True, lock=True) as handle:
        torch.save(obj, handle)
