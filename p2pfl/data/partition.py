"""Splitting a training set across nodes: IID and the usual non-IID schemes.

Spec strings (as written in configs and on the command line):

- ``iid``: shuffle, then near-equal parts.
- ``dirichlet:ALPHA``: label skew; each class is spread over the nodes with
  proportions drawn from Dirichlet(ALPHA) (Hsu et al. 2019; NIID-Bench; FedLab).
  Small ALPHA (e.g. 0.1) is very skewed, large ALPHA (e.g. 100) is near IID.
- ``shards:K``: pathological label skew (McMahan et al. 2017); the data sorted
  by label is cut into ``nodes * K`` shards and each node gets ``K`` of them.
- ``quantity:ALPHA``: quantity skew; node sizes follow Dirichlet(ALPHA), labels
  are IID within each node.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from p2pfl.errors import DataError

logger = logging.getLogger(__name__)

KINDS = ("iid", "dirichlet", "shards", "quantity")
_VALID_FORMS = "'iid', 'dirichlet:ALPHA' (e.g. dirichlet:0.5), 'shards:K' (e.g. shards:2), 'quantity:ALPHA' (e.g. quantity:1.0)"
# Redraws before giving up on a min_samples constraint; enough that failing
# means the request is unrealistic rather than unlucky.
MAX_TRIES = 1000


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed partition scheme.

    Attributes:
        kind: ``"iid"``, ``"dirichlet"``, ``"shards"`` or ``"quantity"``.
        alpha: Dirichlet concentration for ``dirichlet`` and ``quantity``.
        shards: label shards per node for ``shards``.
    """

    kind: str
    alpha: float | None = None
    shards: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"unknown partition kind {self.kind!r}; valid forms: {_VALID_FORMS}")
        if self.kind in ("dirichlet", "quantity"):
            if self.alpha is None or not np.isfinite(self.alpha) or self.alpha <= 0:
                raise DataError(
                    f"{self.kind} needs a concentration alpha > 0, got {self.alpha}; "
                    f"e.g. {self.kind}:0.5 (smaller = more skewed)"
                )
        elif self.alpha is not None:
            raise DataError(f"{self.kind} takes no alpha; valid forms: {_VALID_FORMS}")
        if self.kind == "shards":
            if (
                self.shards is None
                or isinstance(self.shards, bool)
                or int(self.shards) != self.shards
                or self.shards < 1
            ):
                raise DataError(
                    f"shards needs a whole number of shards per node >= 1, got {self.shards}; e.g. shards:2"
                )
        elif self.shards is not None:
            raise DataError(f"{self.kind} takes no shard count; valid forms: {_VALID_FORMS}")

    def __str__(self) -> str:
        if self.kind in ("dirichlet", "quantity"):
            return f"{self.kind}:{self.alpha:g}"
        if self.kind == "shards":
            return f"shards:{self.shards}"
        return self.kind


def parse_partition(spec: str) -> PartitionSpec:
    """Parse a partition spec string such as ``"dirichlet:0.5"``.

    Args:
        spec: ``iid``, ``dirichlet:ALPHA``, ``shards:K`` or ``quantity:ALPHA``.

    Returns:
        The validated :class:`PartitionSpec`.

    Raises:
        DataError: for an unknown kind, a missing or malformed parameter, or
            a parameter out of range; the message lists the valid forms.
    """
    kind, sep, arg = spec.strip().partition(":")
    kind, arg = kind.strip().lower(), arg.strip()
    if kind not in KINDS:
        raise DataError(f"unknown partition {spec!r}; valid forms: {_VALID_FORMS}")
    if kind == "iid":
        if sep:
            raise DataError(f"'iid' takes no parameter, got {spec!r}; valid forms: {_VALID_FORMS}")
        return PartitionSpec("iid")
    if not arg:
        raise DataError(f"{kind!r} needs a parameter, got {spec!r}; valid forms: {_VALID_FORMS}")
    if kind == "shards":
        try:
            return PartitionSpec("shards", shards=int(arg))
        except ValueError:
            raise DataError(f"shards:K needs a whole number K >= 1, got {arg!r}; e.g. shards:2") from None
    try:
        alpha = float(arg)
    except ValueError:
        raise DataError(f"{kind}:ALPHA needs a number ALPHA > 0, got {arg!r}; e.g. {kind}:0.5") from None
    return PartitionSpec(kind, alpha=alpha)


def partition(
    labels: np.ndarray,
    num_nodes: int,
    spec: str | PartitionSpec,
    *,
    seed: int,
    min_samples: int = 2,
) -> list[np.ndarray]:
    """Split sample indices across nodes.

    Args:
        labels: 1-D array of class labels, one per sample.
        num_nodes: number of nodes to split across.
        spec: a spec string (see :func:`parse_partition`) or a :class:`PartitionSpec`.
        seed: random seed; the same seed always gives the same split.
        min_samples: every node gets at least this many samples.

    Returns:
        One sorted ``int64`` index array per node. The arrays are disjoint and
        together cover every index.

    Raises:
        DataError: for a bad spec, ``num_nodes < 1``, more nodes than
            ``len(labels) // min_samples``, or a Dirichlet draw that cannot
            give every node ``min_samples`` samples.
    """
    parsed = parse_partition(spec) if isinstance(spec, str) else spec
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be 1-D (one per sample), got shape {labels.shape}")
    n = labels.shape[0]
    if num_nodes < 1:
        raise DataError(f"nodes must be >= 1, got {num_nodes}")
    if min_samples < 1:
        raise DataError(f"min_samples must be >= 1, got {min_samples}")
    if num_nodes * min_samples > n:
        raise DataError(
            f"{num_nodes} nodes need at least {min_samples} training samples each ({num_nodes * min_samples} "
            f"in all) but there are only {n}; use at most {n // min_samples} nodes, or more training "
            "data (a larger dataset or a smaller test_fraction)"
        )
    rng = np.random.default_rng(seed)
    if parsed.kind == "iid":
        parts = _iid(n, num_nodes, rng)
    elif parsed.kind == "dirichlet":
        assert parsed.alpha is not None
        parts = _dirichlet(labels, num_nodes, parsed.alpha, min_samples, rng)
    elif parsed.kind == "shards":
        assert parsed.shards is not None
        parts = _shards(labels, num_nodes, parsed.shards, min_samples, rng)
    else:
        assert parsed.alpha is not None
        parts = _quantity(n, num_nodes, parsed.alpha, min_samples, rng)
    out = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    logger.debug("partition %s over %d nodes: sizes %s", parsed, num_nodes, [len(p) for p in out])
    return out


@dataclass(frozen=True)
class Shares:
    """Each node's training indices, and how often each sample was dealt."""

    parts: list[np.ndarray]
    #: 1: disjoint shares; k > 1: the set was too small for ``min_samples`` per node,
    #: so k copies of it were partitioned and nodes share samples
    copies: int


def share(
    labels: np.ndarray, num_nodes: int, spec: str | PartitionSpec, *, seed: int, min_samples: int = 2
) -> Shares:
    """:func:`partition`, or, when there are fewer than ``min_samples`` training samples
    per node, a partition of just enough copies of the set (the scheme, e.g. Dirichlet
    label skew, holds over the copies). Simulations at a thousand nodes on a small
    dataset then run, with a warning that says so, instead of refusing."""
    labels = np.asarray(labels)
    n = labels.shape[0] if labels.ndim == 1 else 0
    copies = max(1, -(-num_nodes * min_samples // n)) if n else 1
    if copies == 1:
        return Shares(partition(labels, num_nodes, spec, seed=seed, min_samples=min_samples), 1)
    logger.warning(
        "%d nodes need %d training samples each but there are only %d: every sample is dealt to %d "
        "nodes, so nodes share samples; for disjoint shares use at most %d nodes or more data",
        num_nodes, min_samples, n, copies, n // min_samples,
    )
    parts = partition(np.tile(labels, copies), num_nodes, spec, seed=seed, min_samples=min_samples)
    return Shares([np.sort(part % n) for part in parts], copies)


def _iid(n: int, num_nodes: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(n), num_nodes)


def _dirichlet(
    labels: np.ndarray, num_nodes: int, alpha: float, min_samples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    n = labels.shape[0]
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    draws: list[tuple[np.ndarray, list[int]]] = []
    # a draw costs O(nodes): past 100 nodes fewer redraws, then the top-up below
    for _ in range(_tries(num_nodes)):
        draws = []  # per class: its shuffled samples and each node's [start, end) in them
        sizes = np.zeros(num_nodes, dtype=np.int64)
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_nodes, alpha))
            # As NIID-Bench and FedLab do: stop feeding nodes that already hold
            # more than an even share, so that node sizes stay comparable.
            balanced = np.where(sizes < n / num_nodes, p, 0.0)
            if balanced.sum() > 0:
                p = balanced
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]  # non-decreasing
            bounds = np.concatenate(([0], cuts, [len(idx)]))
            sizes += np.diff(bounds)
            draws.append((idx, bounds.tolist()))
        if sizes.min() >= min_samples:
            return _deal(draws, num_nodes)
    parts = _deal(draws, num_nodes)
    short = _top_up(parts, min_samples)
    logger.info(
        "dirichlet:%g over %d nodes: no draw gave every node %d samples; %d nodes were topped up "
        "from the largest ones", alpha, num_nodes, min_samples, short,
    )
    return parts


def _deal(draws: list[tuple[np.ndarray, list[int]]], num_nodes: int) -> list[np.ndarray]:
    """Each node's samples of a draw, class after class (only the draw kept is dealt:
    slicing every try's chunks cost seconds at thousands of nodes)."""
    return [
        np.concatenate([idx[bounds[node] : bounds[node + 1]] for idx, bounds in draws]) for node in range(num_nodes)
    ]


def _tries(num_nodes: int) -> int:
    return MAX_TRIES if num_nodes <= 100 else max(10, 100 * MAX_TRIES // num_nodes)


def _top_up(parts: list[np.ndarray], min_samples: int) -> int:
    """Move samples from the largest parts to those under ``min_samples`` (in place);
    returns how many parts were short. Needs ``sum(sizes) >= len(parts) * min_samples``."""
    short = [i for i, part in enumerate(parts) if len(part) < min_samples]
    donors = [(-len(part), j) for j, part in enumerate(parts) if len(part) > min_samples]
    heapq.heapify(donors)  # the largest part gives first, the lowest index on ties
    for i in short:
        while len(parts[i]) < min_samples:
            _, j = heapq.heappop(donors)
            parts[i] = np.append(parts[i], parts[j][-1])
            parts[j] = parts[j][:-1]
            if len(parts[j]) > min_samples:
                heapq.heappush(donors, (-len(parts[j]), j))
    return len(short)


def _shards(
    labels: np.ndarray, num_nodes: int, per_node: int, min_samples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    n = labels.shape[0]
    total = num_nodes * per_node
    if total > n:
        raise DataError(
            f"shards:{per_node} over {num_nodes} nodes needs {total} shards but there are only "
            f"{n} samples; use fewer shards per node or fewer nodes"
        )
    classes = np.unique(labels)
    # Shuffle before sorting so that which samples of a class share a shard is random.
    shuffled = rng.permutation(n)
    by_class = [shuffled[labels[shuffled] == c] for c in classes]
    if total >= len(classes):
        # Cut at label boundaries so that each shard holds one label and a node
        # with K shards sees at most K labels, even when class sizes are not
        # multiples of the shard size.
        counts = _allocate_shards([len(idx) for idx in by_class], total)
        shard_list = [s for idx, k in zip(by_class, counts, strict=True) for s in np.array_split(idx, k)]
    else:
        # Fewer shards than labels: one-label shards would drop whole classes,
        # so cut the label-sorted order evenly and accept mixed shards.
        logger.warning(
            "shards:%d over %d nodes makes %d shards for %d labels; shards will mix labels",
            per_node,
            num_nodes,
            total,
            len(classes),
        )
        shard_list = np.array_split(np.concatenate(by_class), total)
    for _ in range(MAX_TRIES):
        order = rng.permutation(total).reshape(num_nodes, per_node)
        parts = [np.concatenate([shard_list[s] for s in row]) for row in order]
        if min(len(p) for p in parts) >= min_samples:
            return parts
    raise DataError(
        f"shards:{per_node} over {num_nodes} nodes could not give each node at least {min_samples} "
        f"samples in {MAX_TRIES} deals; use more shards per node or fewer nodes"
    )


def _allocate_shards(class_sizes: Sequence[int], total: int) -> list[int]:
    """Share ``total`` shards among classes, at least one each, keeping shards near equal.

    Each extra shard goes to the class whose shards are currently largest, which
    minimises the largest shard and never gives a class more shards than samples
    (as long as ``total <= sum(class_sizes)``).
    """
    counts = [1] * len(class_sizes)
    heap: list[tuple[float, int]] = [(-float(size), c) for c, size in enumerate(class_sizes)]
    heapq.heapify(heap)
    for _ in range(total - len(class_sizes)):
        _, c = heapq.heappop(heap)
        counts[c] += 1
        heapq.heappush(heap, (-class_sizes[c] / counts[c], c))
    return counts


def _quantity(
    n: int, num_nodes: int, alpha: float, min_samples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    # Give everyone min_samples first and share only the rest by Dirichlet
    # weights: this honours min_samples without redrawing.
    spare = n - num_nodes * min_samples
    raw = rng.dirichlet(np.full(num_nodes, alpha)) * spare
    extra = np.floor(raw).astype(np.int64)
    # Largest remainders get the leftover units so that sizes sum to n exactly.
    leftover = spare - int(extra.sum())
    extra[np.argsort(-(raw - extra), kind="stable")[:leftover]] += 1
    sizes = min_samples + extra
    return np.split(rng.permutation(n), np.cumsum(sizes)[:-1])


def label_counts(labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Count the samples of each class on each node.

    Args:
        labels: 1-D ``int`` labels in ``0..num_classes-1``.
        parts: index arrays, one per node (as returned by :func:`partition`).
        num_classes: number of classes.

    Returns:
        ``int64`` array of shape ``(len(parts), num_classes)``.

    Raises:
        DataError: if a label is outside ``0..num_classes-1``.
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels must lie in 0..{num_classes - 1}, got range {labels.min()}..{labels.max()}")
    counts = np.zeros((len(parts), num_classes), dtype=np.int64)
    for i, idx in enumerate(parts):
        counts[i] = np.bincount(labels[np.asarray(idx, dtype=np.int64)], minlength=num_classes)
    return counts


def format_label_counts(
    counts: np.ndarray,
    names: Sequence[str] | None = None,
    *,
    node_names: Sequence[str] | None = None,
) -> str:
    """Render a nodes x classes count table with a totals row and column.

    Args:
        counts: ``(nodes, classes)`` counts, e.g. from :func:`label_counts`.
        names: column headers, one per class (default: the class index).
        node_names: row headers, one per node (default: ``node 0``, ``node 1``, ...).

    Returns:
        A right-aligned plain-text table, one line per node plus header and totals.

    Raises:
        DataError: if ``counts`` is not 2-D or a name list has the wrong length.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise DataError(f"counts must be a (nodes, classes) table, got shape {counts.shape}")
    num_nodes, num_classes = counts.shape
    col_names = [str(c) for c in range(num_classes)] if names is None else [str(s) for s in names]
    row_names = (
        [f"node {i}" for i in range(num_nodes)] if node_names is None else [str(s) for s in node_names]
    )
    if len(col_names) != num_classes:
        raise DataError(f"{len(col_names)} class names given for {num_classes} classes")
    if len(row_names) != num_nodes:
        raise DataError(f"{len(row_names)} node names given for {num_nodes} nodes")

    header = ["", *col_names, "total"]
    rows = [
        [row_names[i], *map(str, counts[i].tolist()), str(int(counts[i].sum()))] for i in range(num_nodes)
    ]
    rows.append(["total", *map(str, counts.sum(axis=0).tolist()), str(int(counts.sum()))])
    table = [header, *rows]
    widths = [max(len(r[j]) for r in table) for j in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if j == 0 else cell.rjust(w)
            for j, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in table
    ]
    return "\n".join(line.rstrip() for line in lines)
