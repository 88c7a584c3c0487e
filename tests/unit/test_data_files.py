"""User CSV files: the label column is named, never guessed; errors point at file, line and column."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from p2pfl.data import load_dataset
from p2pfl.data.spec import FileSpec, parse_file_spec
from p2pfl.errors import DataError


def _write(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    lines = [",".join(header)] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _target_first(tmp_path: Path, n: int = 40) -> Path:
    """The user's file from issue 16: the class first, a random 0/1 column last."""
    rng = np.random.default_rng(0)
    rows = [[k % 3, *rng.normal(size=2).round(4), int(rng.integers(2))] for k in range(n)]
    return _write(tmp_path / "targetfirst.csv", ["target", "a", "b", "organic"], rows)


# --- the spec ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        ("data.csv", FileSpec("csv", "data.csv")),
        ("data.csv,label=target", FileSpec("csv", "data.csv", "target")),
        ("data.csv, label = Class Name ", FileSpec("csv", "data.csv", "Class Name")),
        ("runs,2024/data.csv", FileSpec("csv", "runs,2024/data.csv")),
        ("runs,2024/data.csv,label=y", FileSpec("csv", "runs,2024/data.csv", "y")),
        ("a=b/data.csv,label=y", FileSpec("csv", "a=b/data.csv", "y")),  # '=' in the first piece is path
    ],
)
def test_spec_options_are_trailing_key_value_pieces(rest: str, expected: FileSpec) -> None:
    assert parse_file_spec("csv", rest) == expected


def test_spec_with_an_existing_file_named_like_an_option_is_that_file(tmp_path: Path) -> None:
    odd = tmp_path / "x,label=y.csv"
    odd.write_text("")
    assert parse_file_spec("csv", str(odd)) == FileSpec("csv", str(odd))


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("csv:d.csv,lable=target", r"unknown option lable=; did you mean label=\? csv takes label=\.\.\."),
        ("csv:d.csv,label=a,label=b", "gives label= more than once"),
        ("csv:d.csv,label=", "has an empty label="),
        ("npz:d.npz,label=y", "npz files take no options"),
    ],
)
def test_bad_spec_options(spec: str, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        load_dataset(spec)


# --- the label column ----------------------------------------------------------------


def test_no_label_column_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    path = _target_first(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset(f"csv:{path}")
    assert str(err.value) == (
        f"csv file {path} has no column named 'label': name the label column with "
        f"--dataset csv:{path},label=COLUMN (columns: target, a, b, organic; perhaps label=target)"
    )


def test_no_label_column_suggests_the_only_text_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "iris.csv", ["w", "species", "h"], [[1, "setosa", 2], [2, "virginica", 3]] * 4)
    with pytest.raises(DataError, match=r"\(columns: w, species, h; perhaps label=species\)$"):
        load_dataset(f"csv:{path}")


def test_named_label_column_is_used(tmp_path: Path) -> None:
    path = _target_first(tmp_path)
    ds = load_dataset(f"csv:{path},label=target")
    assert ds.num_classes == 3 and ds.class_names == ("0", "1", "2")
    assert ds.input_shape == (3,)  # a, b and organic are features
    assert ds.name == f"csv:{path},label=target"
    # case-insensitive when the exact name is absent
    assert load_dataset(f"csv:{path},label=TARGET").num_classes == 3


def test_a_column_called_label_needs_no_option_and_label_option_wins(tmp_path: Path) -> None:
    rows = [[k % 2, k % 3, k * 0.5] for k in range(30)]
    path = _write(tmp_path / "d.csv", ["LABEL", "kind", "x"], rows)
    assert load_dataset(f"csv:{path}").num_classes == 2
    named = load_dataset(f"csv:{path},label=kind")
    assert named.num_classes == 3 and named.input_shape == (2,)


def test_misspelt_label_column_says_did_you_mean(tmp_path: Path) -> None:
    path = _target_first(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset(f"csv:{path},label=targt")
    assert str(err.value) == (
        f"csv file {path} has no column named 'targt'; did you mean 'target'? (columns: target, a, b, organic)"
    )


def test_two_columns_called_label_is_ambiguous(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", ["Label", "x", "LABEL"], [[0, 1, 1], [1, 2, 0]] * 3)
    with pytest.raises(DataError, match=r"has 2 columns named 'label' \('Label', 'LABEL'\)"):
        load_dataset(f"csv:{path}")
    assert load_dataset(f"csv:{path},label=Label").input_shape == (2,)


def test_continuous_label_column_is_named_as_such(tmp_path: Path) -> None:
    """Like wine with proline as the label: many distinct floats, most of them once."""
    rng = np.random.default_rng(1)
    rows = [[k % 3, round(float(rng.normal()), 3), float(rng.integers(300, 1700))] for k in range(178)]
    path = _write(tmp_path / "wine.csv", ["class", "alcohol", "proline"], rows)
    with pytest.raises(DataError) as err:
        load_dataset(f"csv:{path},label=proline")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"csv file {path}: label column 'proline' looks continuous (")
    assert "regression targets are not supported" in msg
    assert f"--dataset csv:{path},label=COLUMN (columns: class, alcohol, proline)" in msg
    assert load_dataset(f"csv:{path},label=class").num_classes == 3


def test_many_classes_that_each_repeat_are_not_continuous(tmp_path: Path) -> None:
    rows = [[k % 30, k * 0.1] for k in range(300)]
    path = _write(tmp_path / "d.csv", ["label", "x"], rows)
    assert load_dataset(f"csv:{path}", test_fraction=0.2).num_classes == 30


def test_continuous_npz_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((100, 2)), y=np.linspace(0.0, 1.0, 100))
    with pytest.raises(DataError, match=r"labels look continuous \(100 distinct values in 100 rows"):
        load_dataset(f"npz:{path}")


# --- where a bad cell is -------------------------------------------------------------


def test_nan_and_empty_cells_name_file_line_and_column(tmp_path: Path) -> None:
    """Both say 'line N' as an editor numbers it (header = line 1) and the column name."""
    body = [[1, 2, 0], [3, 4, 1]] * 3
    nan = _write(tmp_path / "nan.csv", ["a", "magnesium", "label"], [*body[:3], [5, "NaN", 0], *body[3:]])
    with pytest.raises(DataError) as err:
        load_dataset(f"csv:{nan}")
    assert str(err.value) == (
        f"csv file {nan} line 5, column 'magnesium': 'NaN' is not a finite number; "
        "remove or impute missing values first"
    )
    empty = _write(tmp_path / "empty.csv", ["a", "magnesium", "label"], [*body[:3], [5, "", 0], *body[3:]])
    with pytest.raises(DataError, match=rf"^csv file {empty} line 5, column 'magnesium': the cell is empty;"):
        load_dataset(f"csv:{empty}")
    inf = _write(tmp_path / "inf.csv", ["a", "b", "label"], [*body, ["inf", 1, 0]])
    with pytest.raises(DataError, match=r"line 8, column 'a': 'inf' is not a finite number"):
        load_dataset(f"csv:{inf}")


def test_line_numbers_count_blank_lines_and_multiline_cells(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('a,label\n\n1,"two\nlines"\n2,x\n\noops,y\n')
    with pytest.raises(DataError, match=r"line 7, column 'a': 'oops' is not a number"):
        load_dataset(f"csv:{path}")


def test_label_cell_errors_name_the_line(tmp_path: Path) -> None:
    rows = [[1, 0], [2, 1], [3, ""], [4, 1]]
    path = _write(tmp_path / "d.csv", ["a", "label"], rows)
    with pytest.raises(DataError, match=r"line 4, label column 'label': the cell is empty"):
        load_dataset(f"csv:{path}")
    path = _write(tmp_path / "n.csv", ["a", "label"], [[1, 0], [2, 1], [3, "nan"], [4, 1]])
    with pytest.raises(DataError, match=r"line 4, label column 'label': 'nan' is not a label"):
        load_dataset(f"csv:{path}")
