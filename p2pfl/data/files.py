"""Reading user-supplied datasets from CSV and NPZ files.

Both readers return raw (unsplit or pre-split, unstandardised) arrays; the
caller in :mod:`p2pfl.data.datasets` does the splitting and scaling so that
every source is treated the same way.
"""

from __future__ import annotations

import csv
import difflib
import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from p2pfl.data.preprocess import continuous_labels
from p2pfl.data.spec import FileSpec
from p2pfl.errors import DataError

logger = logging.getLogger(__name__)

LABEL_COLUMN = "label"
# Suggested in the "no column named 'label'" message; never used without being named.
_USUAL_LABEL_NAMES = ("target", "class", "classes", "labels", "y", "species", "outcome", "diagnosis")


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


def read_csv(path: str | Path, label: str | None = None) -> RawData:
    """Read a CSV file with a header row into features and labels.

    The label column is ``label`` when given (a header name, matched exactly or
    else case-insensitively), or else the column named ``label``. Every other
    column must hold numbers. Errors name the file, the line as a text editor
    numbers it (the header is line 1 when it comes first) and the column.

    Args:
        path: the CSV file, as the user wrote it (used in hints).
        label: the name of the label column, from ``csv:PATH,label=COLUMN``.

    Returns:
        Unsplit :class:`RawData` with ``float64`` features and string labels.

    Raises:
        DataError: if the file is missing, empty or not UTF-8 text, the label
            column is not named and no column is called ``label``, the named one
            does not exist or looks continuous, rows are ragged, or a feature
            cell is empty, not a number or not finite.
    """
    spec = FileSpec("csv", str(path).strip())
    file = _existing_file(path, "csv")
    header_line, header, body = _read_rows(file)
    if len(header) < 2:
        raise DataError(
            f"csv file {file} has {len(header)} column(s) ({_columns(header)}); it needs at least one "
            "feature column and a label column"
        )
    if not body:
        raise DataError(f"csv file {file} has a header but no data rows")
    label_col = _label_column(file, spec, header, body, label)
    label_name = header[label_col]
    feature_cols = [i for i in range(len(header)) if i != label_col]
    logger.debug("csv %s: label column %r, %d feature columns", file, label_name, len(feature_cols))

    x = np.empty((len(body), len(feature_cols)), dtype=np.float64)
    y: list[str] = []
    for r, (line, row) in enumerate(body):
        if len(row) != len(header):
            raise DataError(
                f"csv file {file} line {line} has {len(row)} fields but the header (line {header_line}) "
                f"has {len(header)}"
            )
        for j, col in enumerate(feature_cols):
            x[r, j] = _feature_cell(file, line, header[col], row[col], label_name)
        cell = row[label_col].strip()
        if not cell:
            raise DataError(
                f"csv file {file} line {line}, label column {label_name!r}: the cell is empty; every row needs a label"
            )
        y.append(cell)
    labels = np.asarray(y)
    _check_label_values(file, spec, header, body, label_col, labels)
    return RawData(x=x, y=labels)


def _read_rows(file: Path) -> tuple[int, list[str], list[tuple[int, list[str]]]]:
    """Header line number, header names and ``(line, cells)`` of every non-blank row."""
    rows: list[tuple[int, list[str]]] = []
    try:
        with file.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            start = 1
            for row in reader:
                # A quoted cell may span lines; a row starts one line after the last one ended.
                if row and any(cell.strip() for cell in row):
                    rows.append((start, row))
                start = reader.line_num + 1
    except UnicodeDecodeError:  # e.g. an .npz or a spreadsheet given as csv:PATH
        raise DataError(
            f"csv file {file} is not UTF-8 text CSV (it holds bytes that are not UTF-8); "
            "give a text CSV file, or a NumPy archive as npz:PATH"
        ) from None
    except csv.Error as exc:  # e.g. a field beyond the csv module's size limit
        raise DataError(f"csv file {file} cannot be parsed as CSV: {exc}") from None
    if not rows:
        raise DataError(f"csv file {file} is empty; expected a header row and data rows")
    header_line, header = rows[0]
    return header_line, [name.strip() for name in header], rows[1:]


def _label_column(
    file: Path, spec: FileSpec, header: list[str], body: list[tuple[int, list[str]]], label: str | None
) -> int:
    """Index of the label column: the one named by ``label``, else the one called ``label``."""
    wanted = LABEL_COLUMN if label is None else label.strip()
    exact = [i for i, name in enumerate(header) if name == wanted]
    folded = [i for i, name in enumerate(header) if name.lower() == wanted.lower()]
    matches = exact or folded
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(repr(header[i]) for i in matches)
        raise DataError(
            f"csv file {file} has {len(matches)} columns named {wanted!r} ({names}); "
            "rename all but one, or name the label column by its exact name with "
            f"--dataset {spec.with_label('COLUMN')}"
        )
    if label is None:
        guess = _likely_label(header, body)
        perhaps = f"; perhaps label={guess}" if guess else ""
        raise DataError(
            f"csv file {file} has no column named {LABEL_COLUMN!r}: name the label column with "
            f"--dataset {spec.with_label('COLUMN')} (columns: {_columns(header)}{perhaps})"
        )
    close = difflib.get_close_matches(wanted.lower(), [name.lower() for name in header], n=1, cutoff=0.6)
    hint = ""
    if close:
        hint = f"; did you mean {next(name for name in header if name.lower() == close[0])!r}?"
    raise DataError(f"csv file {file} has no column named {wanted!r}{hint} (columns: {_columns(header)})")


def _likely_label(header: list[str], body: list[tuple[int, list[str]]]) -> str | None:
    """A column worth suggesting as the label: a usual label name, else the one text column."""
    for name in header:
        if name.lower() in _USUAL_LABEL_NAMES:
            return name
    text = [
        j
        for j in range(len(header))
        if any(j < len(row) and row[j].strip() and not _is_number(row[j]) for _, row in body)
    ]
    return header[text[0]] if len(text) == 1 else None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _feature_cell(file: Path, line: int, column: str, cell: str, label_name: str) -> float:
    text = cell.strip()
    try:
        value = float(text)
    except ValueError:
        problem = "the cell is empty" if not text else f"{text!r} is not a number"
        raise DataError(
            f"csv file {file} line {line}, column {column!r}: {problem}; every column except the "
            f"label column {label_name!r} must hold numbers"
        ) from None
    if not math.isfinite(value):
        raise DataError(
            f"csv file {file} line {line}, column {column!r}: {text!r} is not a finite number; "
            "remove or impute missing values first"
        )
    return value


def _check_label_values(
    file: Path,
    spec: FileSpec,
    header: list[str],
    body: list[tuple[int, list[str]]],
    label_col: int,
    labels: np.ndarray,
) -> None:
    name = header[label_col]
    cells: list[str] = labels.tolist()
    if all(_is_number(cell) for cell in cells):
        for (line, _), cell in zip(body, cells, strict=True):
            if math.isnan(float(cell)):
                raise DataError(
                    f"csv file {file} line {line}, label column {name!r}: {cell!r} is not a label; "
                    "every row needs a label"
                )
    reason = continuous_labels(labels)
    if reason is not None:
        raise DataError(
            f"csv file {file}: label column {name!r} looks continuous ({reason}); regression targets "
            f"are not supported: name the class column with --dataset {spec.with_label('COLUMN')} "
            f"(columns: {_columns(header)})"
        )


def _columns(header: list[str], limit: int = 20) -> str:
    shown = ", ".join(header[:limit])
    return shown + (f", ... ({len(header)} columns)" if len(header) > limit else "")


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
