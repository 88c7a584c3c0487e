"""Tests for p2pfl.data.datasets: bundled sets, user CSV / NPZ files, errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from p2pfl.data.datasets import Dataset, available_datasets, load_dataset
from p2pfl.errors import DataError


def test_available_datasets() -> None:
    assert available_datasets() == ["breast_cancer", "digits"]


@pytest.mark.parametrize(
    ("name", "n", "classes", "shape"),
    [("digits", 1797, 10, (64,)), ("breast_cancer", 569, 2, (30,))],
)
def test_builtin_shapes_and_dtypes(name: str, n: int, classes: int, shape: tuple[int, ...]) -> None:
    ds = load_dataset(name)
    assert isinstance(ds, Dataset)
    assert ds.name == name
    assert ds.n_train + ds.n_test == n
    assert ds.n_test == pytest.approx(0.2 * n, abs=1)
    assert ds.num_classes == classes and ds.input_shape == shape
    assert ds.x_train.shape == (ds.n_train, *shape) and ds.x_test.shape == (ds.n_test, *shape)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert set(np.unique(ds.y_train)) == set(range(classes)) == set(np.unique(ds.y_test))


def test_digits_image_shape_matches_flat() -> None:
    flat = load_dataset("digits", seed=3)
    image = load_dataset("digits", seed=3, image=True)
    assert image.input_shape == (1, 8, 8)
    assert image.x_train.shape == (flat.n_train, 1, 8, 8)
    np.testing.assert_array_equal(image.x_train.reshape(flat.n_train, -1), flat.x_train)
    np.testing.assert_array_equal(image.y_test, flat.y_test)


def test_breast_cancer_has_no_image_form() -> None:
    with pytest.raises(DataError, match="needs an image dataset such as digits; use the mlp or logreg model"):
        load_dataset("breast_cancer", image=True)


def test_standardised_with_train_statistics_only() -> None:
    ds = load_dataset("breast_cancer", seed=1)
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(axis=0), 1.0, atol=1e-4)
    # Test data is scaled with train statistics, so its mean is close to but not exactly 0.
    test_means = np.abs(ds.x_test.mean(axis=0))
    assert test_means.max() > 1e-3
    assert test_means.max() < 1.0


def test_constant_feature_is_centred_not_divided() -> None:
    ds = load_dataset("digits")  # pixel 0 is always 0 in digits
    assert np.all(np.isfinite(ds.x_train)) and np.all(np.isfinite(ds.x_test))
    np.testing.assert_array_equal(ds.x_train[:, 0], 0.0)


def test_deterministic_for_seed_and_varies_across_seeds() -> None:
    a, b = load_dataset("digits", seed=7), load_dataset("digits", seed=7)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    c = load_dataset("digits", seed=8)
    assert not np.array_equal(a.y_train, c.y_train)


def test_split_is_stratified() -> None:
    ds = load_dataset("breast_cancer", seed=2)
    assert abs(ds.y_train.mean() - ds.y_test.mean()) < 0.02


def test_test_fraction_respected_and_validated() -> None:
    ds = load_dataset("digits", test_fraction=0.5)
    assert abs(ds.n_train - ds.n_test) <= 1
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(DataError, match="test_fraction"):
            load_dataset("digits", test_fraction=bad)


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(DataError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert "'mnist'" in msg and "digits" in msg and "breast_cancer" in msg
    assert "csv:PATH" in msg and "npz:PATH" in msg


# --- CSV ---------------------------------------------------------------------


def _write_csv(path: Path, header: list[str], rows: Sequence[Sequence[object]]) -> Path:
    lines = [",".join(header)] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _tabular_rows(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(5.0, 3.0, size=(n, 3))
    y = np.array(["cat", "dog", "bird"] * (n // 3 + 1))[:n]
    return x, y


def test_csv_label_column_by_name(tmp_path: Path) -> None:
    x, y = _tabular_rows()
    rows = [[label, *feat] for feat, label in zip(x, y, strict=True)]  # label first
    path = _write_csv(tmp_path / "d.csv", ["label", "a", "b", "c"], rows)
    ds = load_dataset(f"csv:{path}", seed=0, test_fraction=0.25)
    assert ds.input_shape == (3,) and ds.num_classes == 3
    assert ds.n_train + ds.n_test == 40 and ds.n_test == 10
    assert ds.class_names == ("bird", "cat", "dog")  # sorted order
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-5)


def test_csv_named_label_column_and_numeric_sort(tmp_path: Path) -> None:
    x, _ = _tabular_rows(30)
    labels = [10, 2, 9] * 10
    rows = [[*feat, label] for feat, label in zip(x, labels, strict=True)]
    path = _write_csv(tmp_path / "d.csv", ["a", "b", "c", "target"], rows)
    ds = load_dataset(f"csv:{path},label=target")
    # numeric labels are sorted as numbers: 2 -> 0, 9 -> 1, 10 -> 2
    assert ds.class_names == ("2", "9", "10")
    assert ds.num_classes == 3


def test_csv_deterministic(tmp_path: Path) -> None:
    x, y = _tabular_rows()
    path = _write_csv(
        tmp_path / "d.csv", ["a", "b", "c", "label"], [[*f, lab] for f, lab in zip(x, y, strict=True)]
    )
    a, b = load_dataset(f"csv:{path}", seed=4), load_dataset(f"csv:{path}", seed=4)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_train, b.y_train)


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="csv file not found: .*nope.csv"):
        load_dataset(f"csv:{tmp_path / 'nope.csv'}")


def test_csv_non_numeric_feature(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", ["a", "b", "label"], [[1, 2, "x"], [1, "oops", "y"]] * 3)
    with pytest.raises(DataError, match=r"line 3, column 'b': 'oops' is not a number"):
        load_dataset(f"csv:{path}")


def test_csv_nan_feature(tmp_path: Path) -> None:
    rows = [[1.0, 0], [2.0, 1], [float("nan"), 0], [3.0, 1]] * 2
    path = _write_csv(tmp_path / "d.csv", ["a", "label"], rows)
    with pytest.raises(DataError, match=r"line 4, column 'a': 'nan' is not a finite number"):
        load_dataset(f"csv:{path}")


def test_csv_empty_cell(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", ["a", "b", "label"], [[1, "", 0], [1, 2, 1]] * 3)
    with pytest.raises(DataError, match="line 2, column 'b': the cell is empty"):
        load_dataset(f"csv:{path}")


def test_csv_single_class(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", ["a", "label"], [[i, "only"] for i in range(10)])
    with pytest.raises(DataError, match="at least 2 classes"):
        load_dataset(f"csv:{path}")


def test_csv_needs_feature_column(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", ["label"], [[0], [1]])
    with pytest.raises(DataError, match="at least one feature column"):
        load_dataset(f"csv:{path}")


def test_csv_ragged_row(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n1,2,0\n1,1\n")
    with pytest.raises(DataError, match=r"line 3 has 2 fields but the header \(line 1\) has 3"):
        load_dataset(f"csv:{path}")


def test_csv_class_too_small_to_stratify(tmp_path: Path) -> None:
    rows = [[i, 0] for i in range(10)] + [[99, 1]]
    path = _write_csv(tmp_path / "d.csv", ["a", "label"], rows)
    with pytest.raises(DataError, match="stratified"):
        load_dataset(f"csv:{path}")


# --- NPZ ---------------------------------------------------------------------


def test_npz_unsplit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2, 3, 3))
    y = np.repeat([3, 7], 25)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    ds = load_dataset(f"npz:{path}", test_fraction=0.2)
    assert ds.input_shape == (2, 3, 3) and ds.num_classes == 2
    assert (ds.n_train, ds.n_test) == (40, 10)
    assert ds.class_names == ("3", "7")
    assert set(np.unique(ds.y_train)) == {0, 1}


def test_npz_presplit_is_used_as_given(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x_train, x_test = rng.normal(2.0, 4.0, size=(30, 4)), rng.normal(2.0, 4.0, size=(7, 4))
    y_train, y_test = np.arange(30) % 3, np.arange(7) % 3
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    ds = load_dataset(f"npz:{path}", test_fraction=0.5)  # fraction ignored
    assert (ds.n_train, ds.n_test) == (30, 7)
    np.testing.assert_array_equal(ds.y_test, y_test)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    np.testing.assert_allclose(ds.x_test, (x_test - mean) / std, rtol=1e-5, atol=1e-5)


def test_npz_missing_arrays(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, features=np.zeros((4, 2)), y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match=r"holds arrays \['features', 'y'\]; expected 'x' and 'y'"):
        load_dataset(f"npz:{path}")


def test_npz_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="npz file not found"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")


def test_npz_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    path.write_text("not a zip")
    with pytest.raises(DataError, match="cannot read npz file"):
        load_dataset(f"npz:{path}")


def test_npz_length_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((5, 2)), y=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="must equal the number of labels"):
        load_dataset(f"npz:{path}")


def test_npz_nan_and_non_numeric(tmp_path: Path) -> None:
    x = np.ones((10, 2))
    x[3, 1] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, x=x, y=np.arange(10) % 2)
    with pytest.raises(
        DataError,
        match=r"1 NaN or infinite value\(s\), first in sample 3, feature 1 \(0-based, as numpy counts: x\[3, 1\]\)",
    ):
        load_dataset(f"npz:{path}")
    path = tmp_path / "str.npz"
    np.savez(path, x=np.array([["a", "b"]] * 10), y=np.arange(10) % 2)
    with pytest.raises(DataError, match="must be numeric"):
        load_dataset(f"npz:{path}")


def test_npz_single_class(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(10, 2)), y=np.zeros(10))
    with pytest.raises(DataError, match="at least 2 classes"):
        load_dataset(f"npz:{path}")
