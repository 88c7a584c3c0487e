"""Datasets and their partitioning across nodes.

Public API::

    load_dataset(name, *, seed=0, test_fraction=0.2, image=False) -> Dataset
    available_datasets() -> list[str]
    check_dataset_spec(name) -> None
    partition(labels, num_nodes, spec, *, seed, min_samples=2) -> list[np.ndarray]
    share(labels, num_nodes, spec, *, seed, min_samples=2) -> Shares  (partition, or copies when too few)
    parse_partition(spec) -> PartitionSpec
    label_counts(labels, parts, num_classes) -> np.ndarray
    format_label_counts(counts, names=None, *, node_names=None) -> str
"""

from __future__ import annotations

from p2pfl.data.datasets import Dataset, available_datasets, check_dataset_spec, load_dataset
from p2pfl.data.partition import (
    PartitionSpec,
    Shares,
    format_label_counts,
    label_counts,
    parse_partition,
    partition,
    share,
)

__all__ = [
    "Dataset",
    "PartitionSpec",
    "available_datasets",
    "check_dataset_spec",
    "format_label_counts",
    "label_counts",
    "load_dataset",
    "parse_partition",
    "partition",
    "share",
    "Shares",
]
