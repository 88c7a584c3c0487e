"""Train/test splitting and feature standardisation shared by every dataset source."""

from __future__ import annotations

import logging

import numpy as np

from p2pfl.errors import DataError

logger = logging.getLogger(__name__)

# Above this many distinct numeric labels, mostly unique ones suggest a continuous
# column; class sizes are summarised instead of listed one by one.
MAX_PLAIN_CLASSES = 20


def encode_labels(*label_arrays: np.ndarray) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """Map arbitrary labels to ``0..K-1`` in sorted order.

    Numeric labels are sorted numerically; anything else is sorted as text, so
    ``"10"`` follows ``"9"`` only when every label is a number.

    Args:
        *label_arrays: one or more 1-D label arrays that share one label space
            (e.g. a train and a test split).

    Returns:
        The encoded ``int64`` arrays (same order as given) and the class names,
        where ``class_names[k]`` is the original label that became ``k``.

    Raises:
        DataError: if fewer than two distinct labels occur.
    """
    joined = np.concatenate([np.asarray(a).reshape(-1) for a in label_arrays])
    numeric = _as_numeric(joined)
    keys = numeric if numeric is not None else joined.astype(str)
    if numeric is not None and np.isnan(numeric).any():
        raise DataError("labels contain NaN; every sample needs a label")
    classes, inverse = np.unique(keys, return_inverse=True)
    if len(classes) < 2:
        raise DataError(
            f"labels have {len(classes)} distinct value(s) ({_preview(classes)}); "
            "classification needs at least 2 classes"
        )
    encoded = inverse.astype(np.int64).reshape(-1)
    out: list[np.ndarray] = []
    start = 0
    for a in label_arrays:
        size = np.asarray(a).size
        out.append(encoded[start : start + size])
        start += size
    names = tuple(_label_name(c) for c in classes)
    return out, names


def split_train_test(
    x: np.ndarray, y: np.ndarray, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split into train and test sets, stratified by label and seeded.

    Args:
        x: features, shape ``(n, *input_shape)``.
        y: encoded labels, shape ``(n,)``.
        test_fraction: share of samples that go to the test set, in ``(0, 1)``.
        seed: random seed; the same seed always gives the same split.

    Returns:
        ``(x_train, x_test, y_train, y_test)``.

    Raises:
        DataError: if the fraction is out of range or a stratified split is
            impossible (e.g. a class with a single sample).
    """
    check_test_fraction(test_fraction)
    # Imported here so that ``import p2pfl`` does not pay for scikit-learn.
    from sklearn.model_selection import train_test_split

    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=test_fraction, random_state=seed, stratify=y
        )
    except ValueError as exc:
        raise DataError(
            f"cannot split {len(y)} samples stratified by label with test_fraction={test_fraction} "
            f"({_class_sizes(np.bincount(y))}): {exc}. Every class needs at least 2 samples and the "
            "test set needs at least one sample per class; use more data or a larger test_fraction"
        ) from exc
    return x_train, x_test, y_train, y_test


def continuous_labels(labels: np.ndarray) -> str | None:
    """Say why ``labels`` look like a regression target rather than classes, or ``None``.

    Numeric labels with more than :data:`MAX_PLAIN_CLASSES` distinct values of
    which at least a quarter occur only once cannot be stratified into a train
    and a test split anyway; they are almost always a measurement (a price, a
    concentration) given as the label by mistake.

    Args:
        labels: 1-D labels as read (text or numbers).

    Returns:
        A short description such as ``"121 distinct values in 178 rows, 87 of them
        only once, e.g. 1065, 1050, 1185"``, or ``None`` if they look like classes.
    """
    numeric = _as_numeric(np.asarray(labels).reshape(-1))
    if numeric is None or np.isnan(numeric).any():
        return None
    values, first, counts = np.unique(numeric, return_index=True, return_counts=True)
    singles = int((counts == 1).sum())
    if len(values) <= MAX_PLAIN_CLASSES or singles * 4 < len(values):
        return None
    examples = ", ".join(_label_name(numeric[i]) for i in sorted(first)[:3])
    return (
        f"{len(values)} distinct values in {numeric.size} rows, {singles} of them only once, e.g. {examples}"
    )


def check_test_fraction(test_fraction: float) -> None:
    """Raise :class:`DataError` unless ``0 < test_fraction < 1``."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")


def standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardise each feature with statistics of the training split only.

    Using train statistics for both splits keeps test information out of
    training. A constant feature (std 0) is only centred, not divided.

    Args:
        x_train: training features, shape ``(n_train, *input_shape)``.
        x_test: test features with the same per-sample shape.

    Returns:
        Both arrays standardised, as ``float32``.
    """
    # float64 for the statistics so that large raw values do not lose precision.
    train = x_train.astype(np.float64)
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std == 0] = 1.0
    out_train = ((train - mean) / std).astype(np.float32)
    out_test = ((x_test.astype(np.float64) - mean) / std).astype(np.float32)
    return out_train, out_test


def check_features(x: np.ndarray, what: str) -> np.ndarray:
    """Check that features are numeric and finite and return them as ``float64``.

    Args:
        x: feature array, shape ``(n, *input_shape)``.
        what: how to name the array in messages (e.g. ``"x_train in data.npz"``).

    Raises:
        DataError: on non-numeric dtype, fewer than 2 dimensions, or NaN / inf.
    """
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{what} must be numeric, got dtype {x.dtype}")
    if x.ndim < 2:
        raise DataError(
            f"{what} must have shape (n_samples, *features), got shape {x.shape}; "
            "reshape a single feature to (n_samples, 1)"
        )
    if x.shape[0] == 0:
        raise DataError(f"{what} has no samples")
    out = x.astype(np.float64)
    bad = ~np.isfinite(out)
    if bad.any():
        first = np.argwhere(bad)[0]
        feature = tuple(int(i) for i in first[1:])
        where = f"feature {feature[0]}" if len(feature) == 1 else f"feature index {feature}"
        raise DataError(
            f"{what} contains {int(bad.sum())} NaN or infinite value(s), first in sample {int(first[0])}, "
            f"{where} (0-based, as numpy counts: x[{', '.join(str(int(i)) for i in first)}]); "
            "remove or impute them first"
        )
    return out


def _as_numeric(labels: np.ndarray) -> np.ndarray | None:
    """Return labels as float64 if every one is a number, else ``None``."""
    if np.issubdtype(labels.dtype, np.number) or labels.dtype == np.bool_:
        return labels.astype(np.float64)
    try:
        return labels.astype(str).astype(np.float64)
    except ValueError:
        return None


def _label_name(value: object) -> str:
    """Render a class key as text, dropping the ``.0`` of whole numbers."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _class_sizes(counts: np.ndarray) -> str:
    if len(counts) <= MAX_PLAIN_CLASSES:
        return f"class sizes {counts.tolist()}"
    return (
        f"{len(counts)} classes, {int((counts == 1).sum())} of them with a single sample; "
        "is the label column really the class?"
    )


def _preview(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(_label_name(v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")
