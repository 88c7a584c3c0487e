"""Reading user-supplied datasets from CSV and NPZ files.

Both readers return raw (unsplit or pre-split, unstandardised) arrays; the
caller in :mod:`p2pfl.data.datasets` does the splitting and scaling so that
every source is treated the same way.
"""

from __future__ import annotations

import csv
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from p2pfl.errors import DataError

logger = logging.getLogger(__name__)

LABEL_COLUMN = "label"


@dataclass(frozen=True, eq=False)
class RawData:
    """Arrays read from a file, before encoding, splitting and scaling.

    Attributes:
        x: features ``(n, *shape)`` when the file is not pre-split, else ``None``.
        y: labels ``(n,)`` of any type, when the file is not pre-split, else ``None``.
        split: ``(x_train, y_train, x_test, y_test)`` when the file holds its own split.
    """

    x: np.ndarray | None = None
    y: np.ndarray | None = None
    split: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None


def read_csv(path: str | Path) -> RawData:
    """Read a CSV file with a header row into features and labels.

    The label column is the one named ``label`` (case-insensitive), or else the
    last column. Every other column must be numeric.

    Args:
        path: the CSV file.

    Returns:
        Unsplit :class:`RawData` with ``float64`` features and string labels.

    Raises:
        DataError: if the file is missing, empty or not UTF-8 text, rows are
            ragged, a feature cell is not a number, or a cell is empty.
    """
    path = _existing_file(path, "csv")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = [row for row in csv.reader(fh) if row and any(cell.strip() for cell in row)]
    except UnicodeDecodeError:  # e.g. an .npz or a spreadsheet given as csv:PATH
        raise DataError(
            f"csv file {path} is not UTF-8 text CSV (it holds bytes that are not UTF-8); "
            "give a text CSV file, or a NumPy archive as npz:PATH"
        ) from None
    except csv.Error as exc:  # e.g. a field beyond the csv module's size limit
        raise DataError(f"csv file {path} cannot be parsed as CSV: {exc}") from None
    if not rows:
        raise DataError(f"csv file {path} is empty; expected a header row and data rows")
    header = [name.strip() for name in rows[0]]
    body = rows[1:]
    if len(header) < 2:
        raise DataError(
            f"csv file {path} has {len(header)} column(s) ({header}); it needs at least one "
            f"feature column and a label column (named '{LABEL_COLUMN}' or else the last one)"
        )
    if not body:
        raise DataError(f"csv file {path} has a header but no data rows")

    lowered = [name.lower() for name in header]
    label_col = lowered.index(LABEL_COLUMN) if LABEL_COLUMN in lowered else len(header) - 1
    feature_cols = [i for i in range(len(header)) if i != label_col]
    logger.debug("csv %s: label column %r, %d feature columns", path, header[label_col], len(feature_cols))

    x = np.empty((len(body), len(feature_cols)), dtype=np.float64)
    y: list[str] = []
    for r, row in enumerate(body):
        line = r + 2  # 1-based, after the header, as an editor shows it
        if len(row) != len(header):
            raise DataError(
                f"csv file {path} line {line} has {len(row)} fields but the header has {len(header)}"
            )
        for j, col in enumerate(feature_cols):
            cell = row[col].strip()
            try:
                x[r, j] = float(cell)
            except ValueError:
                what = "is empty" if not cell else f"is {cell!r}, not a number"
                raise DataError(
                    f"csv file {path} line {line}, feature column {header[col]!r} {what}; "
                    f"all columns except the label column must be numeric"
                ) from None
        label = row[label_col].strip()
        if not label:
            raise DataError(f"csv file {path} line {line} has an empty label in column {header[label_col]!r}")
        y.append(label)
    return RawData(x=x, y=np.asarray(y))


def read_npz(path: str | Path) -> RawData:
    """Read a NumPy ``.npz`` archive.

    It must hold either ``x`` and ``y`` (we split them), or ``x_train``,
    ``y_train``, ``x_test`` and ``y_test`` (used as given). If both forms are
    present the explicit split wins.

    Args:
        path: the ``.npz`` file.

    Returns:
        :class:`RawData`, either unsplit or pre-split.

    Raises:
        DataError: if the file is missing or unreadable, or the arrays are
            missing or have inconsistent lengths.
    """
    path = _existing_file(path, "npz")
    split_keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        # allow_pickle=False: never execute code from a data file.
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if set(split_keys) <= keys:
                arrays = tuple(archive[k] for k in split_keys)
            elif {"x", "y"} <= keys:
                arrays = (archive["x"], archive["y"])
            else:
                raise DataError(
                    f"npz file {path} holds arrays {sorted(keys)}; expected 'x' and 'y', "
                    f"or 'x_train', 'y_train', 'x_test' and 'y_test'"
                )
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read npz file {path}: {exc}") from exc

    if len(arrays) == 4:
        x_train, y_train, x_test, y_test = arrays
        _check_pair(x_train, y_train, "x_train", "y_train", path)
        _check_pair(x_test, y_test, "x_test", "y_test", path)
        if x_train.shape[1:] != x_test.shape[1:]:
            raise DataError(
                f"npz file {path}: x_train samples have shape {x_train.shape[1:]} but x_test samples "
                f"have shape {x_test.shape[1:]}; they must match"
            )
        return RawData(split=(x_train, y_train, x_test, y_test))
    x, y = arrays
    _check_pair(x, y, "x", "y", path)
    return RawData(x=x, y=y)


def _existing_file(path: str | Path, kind: str) -> Path:
    if not str(path).strip():
        raise DataError(f"no file given; write the dataset as '{kind}:PATH', e.g. '{kind}:data/train.{kind}'")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{kind} file not found: {p} (resolved to {p.resolve()})")
    return p


def _check_pair(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str, path: Path) -> None:
    if y.ndim != 1:
        raise DataError(f"npz file {path}: {y_name} must be 1-D (one label per sample), got shape {y.shape}")
    if x.ndim == 0 or x.shape[0] != y.shape[0]:
        raise DataError(
            f"npz file {path}: {x_name} has shape {x.shape} but {y_name} has {y.shape[0]} labels; "
            f"the first dimension of {x_name} must equal the number of labels"
        )
