"""The node's value types: its config, per-round metrics, counters, observer seam."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from p2pfl import wire
from p2pfl.settings import setting, validate

if TYPE_CHECKING:  # the records stay importable without torch (the rehearsal's parent)
    from p2pfl.learning.learner import Weights


@dataclass(frozen=True)
class NodeConfig:
    """How one node runs its rounds.

    ``name``, ``rounds``, ``round_timeout``, ``mode``, ``staleness``, ``staleness_grace``, ``compress``
    and ``gossip`` are the settings of :mod:`p2pfl.settings` (same defaults and checks as in node.toml).

    Attributes:
        name: this node's name; peers know it by this and it is the header's sender.
        rounds: rounds to run (the node stops after round ``rounds - 1``).
        round_timeout: seconds to wait for neighbours' models after sending one's own;
            whoever has not arrived by then is left out of this round's average.
        max_rounds_ahead: messages for rounds further ahead than this are rejected.
        start_round: first round to run (a resumed node starts after its checkpoint).
        limits: size bounds for incoming messages.
        mode: ``"sync"`` (rounds with a barrier: wait for the neighbours' models up to
            ``round_timeout``) or ``"async"`` (no barrier: merge whatever arrived,
            see :mod:`p2pfl.node.gossip_async`; ``rounds`` then bounds the logical clock).
        staleness: async mode: a model ``s`` clock ticks behind beyond the grace counts
            ``(1 + s) ** -staleness`` of its mixing weight (0 = no discount).
        staleness_grace: async mode: clock ticks of lag that are not discounted.
        compress: the codec model messages travel with (``""`` = none; see
            :mod:`p2pfl.wire.codecs`); models compressed otherwise are refused.
        gossip: ``"plain"`` (average the neighbours' models) or ``"choco[:GAMMA]"``
            (CHOCO-SGD, see :mod:`p2pfl.node.gossip_choco`); every member the same.
        seed: the run's seed; with the name it seeds the codec's randomness (int8's
            rounding, randk's masks), so another seed draws other masks.
    """

    name: str = setting("name", required=True)
    rounds: int = setting("rounds", required=True)
    round_timeout: float = setting("round_timeout")
    max_rounds_ahead: int = 4
    start_round: int = 0
    limits: wire.WireLimits = wire.WireLimits()
    mode: str = setting("mode")
    staleness: float = setting("staleness")
    staleness_grace: int = setting("staleness_grace")
    compress: str = setting("compress")
    gossip: str = setting("gossip")
    seed: int = setting("seed")

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class RoundMetrics:
    """What a node measured in one round."""

    node: str
    round: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    bytes_sent: int
    bytes_received: int
    round_seconds: float
    received_from: tuple[str, ...]
    missing: tuple[str, ...]
    epsilon: float | None = None  # DP learners: privacy spent through this round; else None
    timestamp: float = 0.0  # UNIX time the round's metrics were taken (time-to-accuracy)
    # the learner's own evaluation metrics (TorchLearner(metrics=...)), e.g. {"auc": 0.93}
    metrics: Mapping[str, float] = field(default_factory=dict)


#: The keys of a ``metrics.jsonl`` row that are not a learner's own metrics.
ROW_KEYS = frozenset(
    [f.name for f in dataclasses.fields(RoundMetrics) if f.name != "metrics"] + ["consensus_distance"]
)


def metrics_row(metrics: RoundMetrics) -> dict[str, Any]:
    """One ``metrics.jsonl`` row (plain data: the peer tuples become lists, the learner's
    own metrics become keys of the row: ``"auc": 0.93``)."""
    row = dict(vars(metrics))  # a flat dataclass: cheaper than asdict's deep copy
    row["received_from"] = list(metrics.received_from)
    row["missing"] = list(metrics.missing)
    row.update(row.pop("metrics"))
    return row


def user_metric_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys of the learner's own metrics in ``rows``, in the order they first appear."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update((key, None) for key in row if key not in ROW_KEYS)
    return list(keys)


def metrics_summary(final_rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """``summary.json``'s ``metrics``: each of the learner's own metrics over the nodes'
    final rows, ``{"auc": {"mean": .., "min": .., "max": ..}}`` (null where no node has a
    number, e.g. the recall of a class missing from the test set)."""
    summary: dict[str, dict[str, float | None]] = {}
    for key in user_metric_keys(final_rows):
        values = [float(v) for row in final_rows if isinstance(v := row.get(key), (int, float)) and math.isfinite(v)]
        summary[key] = {
            "mean": sum(values) / len(values) if values else None,
            "min": min(values) if values else None,
            "max": max(values) if values else None,
        }
    return summary


def summary_json(summary: Mapping[str, Any]) -> str:
    """``summary.json``'s text: NaN/Inf (e.g. diverged models' distance) become null, as in
    metrics.jsonl, since bare NaN is not JSON and strict readers refuse the file."""
    return json.dumps(_finite_value(summary), indent=2) + "\n"


def json_line(row: Mapping[str, Any]) -> str:
    """A row as one JSON line; NaN/Inf become null, which every JSON reader accepts."""
    return json.dumps(_finite_or_null(row)) + "\n"


def _finite_or_null(row: Mapping[str, Any]) -> dict[str, Any]:
    # a row is flat (written once per node and round: kept to one pass)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _finite_value(value: Any) -> Any:
    """``value`` with NaN/Inf as None, at any depth (summary.json nests tables)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_value(v) for v in value]
    return value


@dataclass
class NodeStats:
    """Running counters of a node; ``rejected`` counts refused messages by reason."""

    rejected: Counter[str] = field(default_factory=Counter)
    messages_accepted: int = 0
    bytes_sent: int = 0  # model traffic of the rounds
    bytes_received: int = 0
    control_bytes_sent: int = 0  # greetings, goodbyes, catch-up
    sync_replies_sent: int = 0  # catch-up answers (a model each) to neighbours far behind
    sends_dropped: int = 0
    non_finite_models: int = 0  # own model went NaN/Inf (averaging or training); reverted


def limits_for(weights: Mapping[str, Any], config: NodeConfig) -> wire.WireLimits:
    """Size limits fitted to the local model: a peer's messages mirror our own.

    A header decodes into many times its size in Python objects, so a generic 1 MiB
    bound would let a few messages pin hundreds of MB; our own header's size (names,
    shapes) with ample room for extensions bounds it honestly.
    """
    own = wire.encode(kind="model", sender="x" * 64, round=2**31, samples=2**31, tensors=weights)
    header, payload = len(own[0]), sum(len(frame) for frame in own[1:])
    limits = config.limits
    return dataclasses.replace(
        limits,
        # secure aggregation's headers carry ~110 bytes per neighbour (sealed shares, signed
        # keys): 64 KiB leaves room for hundreds of neighbours
        max_header_bytes=min(limits.max_header_bytes, 4 * header + 64 * 1024),
        # masked (secure aggregation) tensors travel as 64-bit integers: twice float32
        max_message_bytes=min(limits.max_message_bytes, 4 * (header + payload) + 64 * 1024),
        # a compressed model carries up to three parts per tensor (topk:F:int8)
        max_tensors=min(limits.max_tensors, (3 if config.compress else 1) * len(weights) + 64),
    )


class RoundObserver(Protocol):
    """Told about every finished round (a simulation records metrics through it)."""

    def on_round_end(self, metrics: RoundMetrics, weights: Weights) -> None: ...
