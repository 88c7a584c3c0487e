"""``p2pfl data``: show how a dataset is split across nodes."""

from __future__ import annotations

import argparse
from typing import Any

from p2pfl.errors import ConfigError


def register(commands: Any) -> None:
    parser = commands.add_parser("data", help="show per-node label counts of a partition")
    parser.add_argument("--dataset", default="digits", help="digits, breast_cancer, csv:PATH, npz:PATH")
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--partition", default="dirichlet:0.5", help="iid, dirichlet:A, shards:K, quantity:A")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from p2pfl.data import (  # numpy, sklearn: only here
        format_label_counts,
        label_counts,
        load_dataset,
        partition,
    )

    if args.nodes < 1:  # as `p2pfl simulate` says it, before loading any data
        raise ConfigError("nodes", f"must be >= 1, got {args.nodes}")
    dataset = load_dataset(args.dataset, seed=args.seed, test_fraction=args.test_fraction)
    parts = partition(dataset.y_train, args.nodes, args.partition, seed=args.seed)
    counts = label_counts(dataset.y_train, parts, dataset.num_classes)
    print(f"{dataset.name}: {dataset.n_train} training samples, {dataset.n_test} test samples, "
          f"{dataset.num_classes} classes, partition {args.partition}, seed {args.seed}")
    print(format_label_counts(counts))
    return 0
