"""Loading datasets by name: bundled scikit-learn sets and user CSV / NPZ files.

Every dataset comes out the same way: a stratified, seeded train/test split
with features standardised by training statistics, ``float32`` features and
``int64`` labels in ``0..num_classes-1``.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from p2pfl.data.files import RawData, read_csv, read_npz
from p2pfl.data.preprocess import (
    check_features,
    check_test_fraction,
    continuous_labels,
    encode_labels,
    split_train_test,
    standardise,
)
from p2pfl.data.spec import parse_file_spec
from p2pfl.errors import DataError

logger = logging.getLogger(__name__)

_FILE_FORMS = ("csv:PATH", "csv:PATH,label=COLUMN", "npz:PATH")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset, split and standardised, ready for partitioning.

    ``eq=False`` because element-wise array comparison has no single truth
    value; two datasets are equal only if they are the same object.

    Attributes:
        name: the name it was loaded by (e.g. ``"digits"`` or ``"csv:data.csv"``).
        x_train: ``float32`` features, shape ``(n_train, *input_shape)``.
        y_train: ``int64`` labels in ``0..num_classes-1``, shape ``(n_train,)``.
        x_test: ``float32`` features, shape ``(n_test, *input_shape)``.
        y_test: ``int64`` labels, shape ``(n_test,)``.
        num_classes: number of classes.
        input_shape: shape of one sample, e.g. ``(64,)`` or ``(1, 8, 8)``.
        class_names: original label of each class index, if known.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.shape[1:] != tuple(self.input_shape):
                raise DataError(f"x_{split} samples have shape {x.shape[1:]}, expected {self.input_shape}")
            if y.shape != (x.shape[0],):
                raise DataError(f"y_{split} has shape {y.shape}, expected ({x.shape[0]},)")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise DataError(f"{len(self.class_names)} class names given for {self.num_classes} classes")

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test samples."""
        return int(self.x_test.shape[0])


def _load_digits(image: bool) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data
    # Standardisation is per feature (= per pixel), so reshaping after it
    # or before it gives the same numbers; reshape here for one code path.
    if image:
        x = x.reshape(-1, 1, 8, 8)
    return x, bunch.target, tuple(str(t) for t in bunch.target_names)


def _load_breast_cancer(image: bool) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from sklearn.datasets import load_breast_cancer

    if image:
        raise DataError(
            "breast_cancer is tabular (30 features) and has no image form, so it cannot feed the "
            "cnn model, which needs an image dataset such as digits; use the mlp or logreg model"
        )
    bunch = load_breast_cancer()
    return bunch.data, bunch.target, tuple(str(t) for t in bunch.target_names)


# name -> loader(image) returning raw (x, y, class_names); y already 0..K-1.
_BUILTIN: dict[str, Callable[[bool], tuple[np.ndarray, np.ndarray, tuple[str, ...]]]] = {
    "digits": _load_digits,
    "breast_cancer": _load_breast_cancer,
}


def available_datasets() -> list[str]:
    """Names of the bundled datasets (user files are loaded as ``csv:PATH[,label=COLUMN]`` / ``npz:PATH``).

    Returns:
        The bundled dataset names, sorted.
    """
    return sorted(_BUILTIN)


def load_dataset(name: str, *, seed: int = 0, test_fraction: float = 0.2, image: bool = False) -> Dataset:
    """Load, split and standardise a dataset.

    Args:
        name: a bundled name (see :func:`available_datasets`), ``csv:PATH``
            (a column named ``label`` holds the labels), ``csv:PATH,label=COLUMN``
            or ``npz:PATH``. Options come after the last commas of a path, and
            only pieces shaped ``KEY=VALUE`` are options (see :mod:`p2pfl.data.spec`).
        seed: seed of the stratified train/test split; the same seed always
            gives the same dataset.
        test_fraction: share of samples held out for testing, in ``(0, 1)``.
            Ignored for an NPZ file that carries its own split.
        image: give ``digits`` as ``(1, 8, 8)`` images instead of 64 flat features.

    Returns:
        The :class:`Dataset`.

    Raises:
        DataError: for an unknown name, an unreadable or malformed file, or
            data that cannot be split (e.g. fewer than two classes).
    """
    check_test_fraction(test_fraction)
    kind, sep, rest = name.partition(":")
    kind = kind.strip().lower()
    if sep and kind in ("csv", "npz"):
        spec = parse_file_spec(kind, rest)
        raw = read_csv(spec.path, spec.label) if kind == "csv" else read_npz(spec.path)
        if image:
            logger.debug("image=True has no effect on %s; samples keep the file's shape", name)
        return _from_raw(name, raw, seed=seed, test_fraction=test_fraction)
    check_dataset_spec(name)  # an unknown name: raises with the valid ones
    x, y, class_names = _BUILTIN[kind](image)
    x_train, x_test, y_train, y_test = split_train_test(
        x, y.astype(np.int64), test_fraction=test_fraction, seed=seed
    )
    return _finish(kind, x_train, y_train, x_test, y_test, class_names)


def check_dataset_spec(name: str) -> None:
    """Refuse a dataset spec that names no bundled dataset and no file form, without
    reading anything (a config checks its dataset with this before loading it).

    Raises:
        DataError: for an unknown name (with the valid ones) or a bad ``csv:``/``npz:``
            option.
    """
    kind, sep, rest = name.partition(":")
    kind = kind.strip().lower()
    if sep and kind in ("csv", "npz"):
        parse_file_spec(kind, rest)
        return
    if not sep and kind in _BUILTIN:
        return
    close = difflib.get_close_matches(kind, _BUILTIN, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close and not sep else ""
    raise DataError(
        f"unknown dataset {name!r}{hint}; choose one of {available_datasets()}, or a user file as "
        f"{', '.join(_FILE_FORMS)} (CSV with a header row, the label column named 'label' or given "
        "with label=COLUMN; NPZ with arrays x, y or x_train, y_train, x_test, y_test)"
    )


def _from_raw(name: str, raw: RawData, *, seed: int, test_fraction: float) -> Dataset:
    if raw.split is not None:
        x_train, y_train, x_test, y_test = raw.split
        x_train = check_features(x_train, f"x_train in {name}")
        x_test = check_features(x_test, f"x_test in {name}")
        (y_train, y_test), class_names = encode_labels(y_train, y_test)
        missing = sorted(set(np.unique(y_test).tolist()) - set(np.unique(y_train).tolist()))
        if missing:
            logger.warning(
                "%s: test labels %s never occur in training",
                name,
                [class_names[k] for k in missing],
            )
        return _finish(name, x_train, y_train, x_test, y_test, class_names)
    assert raw.x is not None and raw.y is not None
    x = check_features(raw.x, f"features in {name}")
    reason = continuous_labels(raw.y)
    if reason is not None:  # a CSV reader has said it already, naming the column
        raise DataError(
            f"{name}: the labels look continuous ({reason}); regression targets are not supported, "
            "the labels must be classes"
        )
    (y,), class_names = encode_labels(raw.y)
    x_train, x_test, y_train, y_test = split_train_test(x, y, test_fraction=test_fraction, seed=seed)
    return _finish(name, x_train, y_train, x_test, y_test, class_names)


def _finish(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    class_names: tuple[str, ...],
) -> Dataset:
    x_train, x_test = standardise(x_train, x_test)
    dataset = Dataset(
        name=name,
        x_train=x_train,
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        x_test=x_test,
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        num_classes=len(class_names),
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        class_names=class_names,
    )
    logger.info(
        "loaded %s: %d train / %d test samples, %d classes, input shape %s",
        name,
        dataset.n_train,
        dataset.n_test,
        dataset.num_classes,
        dataset.input_shape,
    )
    return dataset
