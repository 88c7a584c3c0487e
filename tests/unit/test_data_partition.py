"""Tests for p2pfl.data.partition: spec parsing, every partitioner, count tables."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfl.data.partition import (
    PartitionSpec,
    format_label_counts,
    label_counts,
    parse_partition,
    partition,
    share,
)
from p2pfl.errors import DataError

SPECS = ["iid", "dirichlet:0.5", "shards:2", "quantity:1.0"]


@pytest.fixture(scope="module")
def digits_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target.astype(np.int64)


def _entropy(counts: np.ndarray) -> float:
    """Mean label entropy per node (nats)."""
    p = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return float(h.mean())


# --- parsing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iid", PartitionSpec("iid")),
        (" IID ", PartitionSpec("iid")),
        ("dirichlet:0.5", PartitionSpec("dirichlet", alpha=0.5)),
        ("shards:2", PartitionSpec("shards", shards=2)),
        ("quantity:1.0", PartitionSpec("quantity", alpha=1.0)),
    ],
)
def test_parse_valid(text: str, expected: PartitionSpec) -> None:
    assert parse_partition(text) == expected


def test_spec_str_round_trips() -> None:
    for text in SPECS:
        assert parse_partition(str(parse_partition(text))) == parse_partition(text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("random", "unknown partition 'random'"),
        ("dirichlet", "needs a parameter"),
        ("dirichlet:abc", "needs a number"),
        ("dirichlet:0", "alpha > 0"),
        ("quantity:-1", "alpha > 0"),
        ("shards:0", ">= 1"),
        ("shards:1.5", "whole number"),
        ("iid:3", "takes no parameter"),
    ],
)
def test_parse_errors(text: str, fragment: str) -> None:
    with pytest.raises(DataError) as err:
        parse_partition(text)
    assert fragment in str(err.value)


def test_unknown_kind_lists_valid_forms() -> None:
    with pytest.raises(DataError) as err:
        parse_partition("random")
    for form in ("'iid'", "dirichlet:ALPHA", "shards:K", "quantity:ALPHA"):
        assert form in str(err.value)


def test_spec_object_is_validated() -> None:
    with pytest.raises(DataError, match="alpha > 0"):
        PartitionSpec("dirichlet")
    with pytest.raises(DataError, match="unknown partition kind"):
        PartitionSpec("nope")


# --- common properties -------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_disjoint_cover_sorted_int64(spec: str, digits_labels: np.ndarray) -> None:
    parts = partition(digits_labels, 10, spec, seed=0, min_samples=5)
    assert len(parts) == 10
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)
        assert len(p) >= 5
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined))
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(digits_labels)))


@pytest.mark.parametrize("spec", SPECS)
def test_seeded_reproducibility(spec: str, digits_labels: np.ndarray) -> None:
    a = partition(digits_labels, 8, spec, seed=11)
    b = partition(digits_labels, 8, parse_partition(spec), seed=11)
    c = partition(digits_labels, 8, spec, seed=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_single_node_gets_everything(digits_labels: np.ndarray) -> None:
    for spec in SPECS:
        (only,) = partition(digits_labels, 1, spec, seed=0)
        np.testing.assert_array_equal(only, np.arange(len(digits_labels)))


# --- per scheme --------------------------------------------------------------


def test_iid_sizes_near_equal(digits_labels: np.ndarray) -> None:
    sizes = [len(p) for p in partition(digits_labels, 7, "iid", seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_small_alpha_more_skewed(digits_labels: np.ndarray) -> None:
    def mean_entropy(alpha: float) -> float:
        hs = [
            _entropy(
                label_counts(digits_labels, partition(digits_labels, 10, f"dirichlet:{alpha}", seed=s), 10)
            )
            for s in range(3)
        ]
        return float(np.mean(hs))

    low, high = mean_entropy(0.1), mean_entropy(100.0)
    assert low < high - 0.5
    assert high > 0.95 * np.log(10)  # alpha=100 is near IID


def test_dirichlet_tops_up_nodes_no_draw_could_fill() -> None:
    labels = np.repeat(np.arange(10), 10)  # 100 samples: 20 nodes x 5 takes them all
    parts = partition(labels, 20, "dirichlet:0.001", seed=0, min_samples=5)
    assert [len(p) for p in parts] == [5] * 20
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))  # still disjoint and complete
    again = partition(labels, 20, "dirichlet:0.001", seed=0, min_samples=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_share_is_partition_when_the_data_suffices(digits_labels: np.ndarray) -> None:
    shares = share(digits_labels, 10, "dirichlet:0.5", seed=3)
    expected = partition(digits_labels, 10, "dirichlet:0.5", seed=3)
    assert shares.copies == 1
    assert all(np.array_equal(a, b) for a, b in zip(shares.parts, expected, strict=True))


def test_share_deals_copies_loudly_when_nodes_outnumber_samples(caplog: pytest.LogCaptureFixture) -> None:
    labels = np.arange(100) % 10
    with caplog.at_level("WARNING"):
        shares = share(labels, 120, "dirichlet:0.5", seed=0)
    assert shares.copies == 3  # 120 nodes x 2 samples = 240 > 2 x 100
    assert "every sample is dealt to 3 nodes" in caplog.text and "use at most 50 nodes" in caplog.text
    assert min(len(p) for p in shares.parts) >= 2
    dealt = np.bincount(np.concatenate(shares.parts), minlength=100)
    assert dealt.tolist() == [3] * 100  # each sample exactly copies times, nothing invented


def test_shards_limit_labels_per_node(digits_labels: np.ndarray) -> None:
    for nodes in (5, 7, 10):
        parts = partition(digits_labels, nodes, "shards:2", seed=3)
        for p in parts:
            assert len(np.unique(digits_labels[p])) <= 2
        assert sum(len(p) for p in parts) == len(digits_labels)


def test_shards_fewer_than_labels_still_covers(digits_labels: np.ndarray) -> None:
    parts = partition(digits_labels, 2, "shards:2", seed=0)  # 4 shards, 10 labels
    assert sum(len(p) for p in parts) == len(digits_labels)


def test_shards_too_many() -> None:
    with pytest.raises(DataError, match="needs 30 shards but there are only 20"):
        partition(np.arange(20) % 2, 10, "shards:3", seed=0, min_samples=1)


def test_quantity_sizes_vary(digits_labels: np.ndarray) -> None:
    parts = partition(digits_labels, 10, "quantity:0.5", seed=0, min_samples=10)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 10
    assert sizes.max() > 2 * sizes.min()
    # labels stay roughly IID inside the larger nodes
    big = parts[int(sizes.argmax())]
    assert len(np.unique(digits_labels[big])) == 10


# --- errors ------------------------------------------------------------------


def test_argument_errors(digits_labels: np.ndarray) -> None:
    with pytest.raises(DataError, match="^nodes must be >= 1"):
        partition(digits_labels, 0, "iid", seed=0)
    with pytest.raises(DataError, match=r"use at most 5 nodes"):
        partition(np.arange(10) % 2, 6, "iid", seed=0, min_samples=2)
    with pytest.raises(DataError, match="1-D"):
        partition(np.zeros((3, 3)), 2, "iid", seed=0)
    with pytest.raises(DataError, match="unknown partition"):
        partition(digits_labels, 2, "bogus", seed=0)


# --- counts and table --------------------------------------------------------


def test_label_counts(digits_labels: np.ndarray) -> None:
    parts = partition(digits_labels, 4, "dirichlet:0.3", seed=0)
    counts = label_counts(digits_labels, parts, 10)
    assert counts.shape == (4, 10) and counts.dtype == np.int64
    assert counts.sum() == len(digits_labels)
    np.testing.assert_array_equal(counts.sum(axis=0), np.bincount(digits_labels, minlength=10))
    np.testing.assert_array_equal(counts.sum(axis=1), [len(p) for p in parts])
    with pytest.raises(DataError, match=r"labels must lie in 0..4"):
        label_counts(digits_labels, parts, 5)


def test_format_label_counts() -> None:
    counts = np.array([[3, 0], [1, 12]])
    text = format_label_counts(counts, ["benign", "malignant"])
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["benign", "malignant", "total"]
    assert lines[1].split() == ["node", "0", "3", "0", "3"]
    assert lines[-1].split() == ["total", "4", "12", "16"]
    assert len({len(line) for line in lines}) == 1  # aligned columns
    named = format_label_counts(counts, node_names=["a:1", "b:2"])
    assert named.splitlines()[1].startswith("a:1")
    with pytest.raises(DataError, match="3 class names given for 2 classes"):
        format_label_counts(counts, ["a", "b", "c"])
