"""What a simulation leaves in its ``out`` folder, and how a new run treats an old one.

A run writes ``metrics.jsonl``, ``summary.json`` and, with ``save_models``, one plain
``state_dict`` per node plus their average under ``models/``; ``p2pfl report`` draws its
plots beside them. A folder that already holds a run is not overwritten silently: the
CLI refuses it unless told to replace it, and then removes the old run's files first,
so no plot of the old run is left beside the new metrics.

Importing this module needs no torch: the checks run while the config is read, before
anything heavy is imported; only :func:`save_models` imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from p2pfl._files import atomic_write, sync_written
from p2pfl.errors import ConfigError

__all__ = [
    "AVERAGE_MODEL", "METRICS_FILE", "MODELS_DIR", "PLOTS", "SUMMARY_FILE", "average_weights", "clear_run",
    "check_model_names", "out_dir_problem", "previous_run", "save_models",
]

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
MODELS_DIR = "models"  # <node>.pt per node, and average.pt
AVERAGE_MODEL = "average"
#: The plots ``p2pfl report`` draws into a run folder (removed with the run they show).
PLOTS = ("accuracy.png", "consensus.png", "bytes.png", "metrics.png", "accuracy_vs_epsilon.png")  # what p2pfl report draws


def out_dir_problem(out: str) -> str | None:
    """Why ``out`` cannot become a results folder, or None; nothing is created.

    The folder itself, or the nearest of its parents that exists, must be a folder this
    process may write into.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        return f"{out} is a file, not a folder; give a folder path for the results"
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create {out}: {existing} is a file; give a folder path for the results"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write into {existing} (permission denied); give a folder you can write to"
    return None


def previous_run(out_dir: Path) -> list[str]:
    """The files of an earlier run in ``out_dir`` that say a run is there (metrics, summary)."""
    return [name for name in (METRICS_FILE, SUMMARY_FILE) if (out_dir / name).is_file()]


def clear_run(out_dir: Path) -> list[Path]:
    """Remove the files a run and its report wrote into ``out_dir``, and nothing else.

    Returns:
        The paths removed.

    Raises:
        ConfigError: (field ``out``) if one cannot be removed.
    """
    candidates = [out_dir / name for name in (METRICS_FILE, SUMMARY_FILE, *PLOTS)]
    models = out_dir / MODELS_DIR
    if models.is_dir():
        candidates += sorted(models.glob("*.pt"))
    removed = []
    try:
        for path in candidates:
            if path.is_file():
                path.unlink()
                removed.append(path)
        if models.is_dir() and not any(models.iterdir()):
            models.rmdir()
    except OSError as exc:
        raise ConfigError("out", f"cannot remove the previous run's {exc.filename} ({exc.strerror})") from None
    return removed


def check_model_names(names: Iterable[str]) -> None:
    """Every node name can name its model file ``models/<name>.pt``.

    Raises:
        ConfigError: (field ``save_models``) naming the first name that cannot.
    """
    for name in names:
        if name in ("", ".", "..", AVERAGE_MODEL) or any(c in name for c in "/\\\0"):
            raise ConfigError(
                "save_models", f"node name {name!r} cannot name its model file {MODELS_DIR}/{name}.pt; "
                "rename the node in the topology file, or pass --no-save-models",
            )


def average_weights(models: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The entry-wise mean of ``models`` (same keys and shapes), in each entry's dtype."""
    return {
        key: np.mean([m[key] for m in models], axis=0, dtype=np.float64).astype(first.dtype)
        for key, first in models[0].items()
    }


def save_models(
    out_dir: Path, weights: Mapping[str, Mapping[str, np.ndarray]], average_of: Sequence[str]
) -> list[Path]:
    """Write each node's weights to ``models/<node>.pt`` and the mean of ``average_of``'s
    to ``models/average.pt``, as plain ``{name: tensor}`` state_dicts (atomically).

    ``torch.load(path, weights_only=True)`` reads them back; ``model.load_state_dict``
    takes them (``strict=False`` for a model with integer buffers, which nodes do not
    share). Returns the paths written.
    """
    import torch  # only here: the rest of this module serves the torch-free config checks

    def write(name: str, state: Mapping[str, np.ndarray]) -> Path:
        path = out_dir / MODELS_DIR / f"{name}.pt"
        with atomic_write(path, binary=True, sync=False) as handle:  # one sync for all, below
            torch.save({key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state.items()}, handle)
        return path

    written = [write(name, state) for name, state in weights.items()]
    present = [weights[name] for name in average_of if name in weights]
    if present:
        written.append(write(AVERAGE_MODEL, average_weights(present)))
    sync_written(written)  # before summary.json, which says the run folder is complete
    return written
