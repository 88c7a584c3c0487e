"""``p2pfl data``: show how a dataset is split across nodes."""

from __future__ import annotations

import argparse
from typing import Any

from p2pfl.cli._flags import add_setting_flags
from p2pfl.config import config_from_mapping
from p2pfl.simulation.config import ExperimentConfig

DEFAULT_NODES = 16
KEYS = ("dataset", "nodes", "partition", "seed", "test_fraction")


def register(commands: Any) -> None:
    parser = commands.add_parser("data", help="show per-node label counts of a partition")
    # the settings of `p2pfl simulate`, with its defaults (16 nodes: there is no topology here)
    defaults = {key: getattr(ExperimentConfig(), key) for key in KEYS} | {"nodes": DEFAULT_NODES}
    add_setting_flags(parser, ExperimentConfig, KEYS, defaults=defaults)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from p2pfl.data import format_label_counts, label_counts, load_dataset, share

    # checked as `p2pfl simulate` checks them, before loading any data
    config_from_mapping(ExperimentConfig, {key: getattr(args, key) for key in KEYS})
    dataset = load_dataset(args.dataset, seed=args.seed, test_fraction=args.test_fraction)
    parts = share(dataset.y_train, args.nodes, args.partition, seed=args.seed).parts
    counts = label_counts(dataset.y_train, parts, dataset.num_classes)
    print(f"{dataset.name}: {dataset.n_train} training samples, {dataset.n_test} test samples, "
          f"{dataset.num_classes} classes, partition {args.partition}, seed {args.seed}")
    print(format_label_counts(counts))
    return 0
