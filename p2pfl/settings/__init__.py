"""The one schema of training and node settings: type, default, bounds and help per key.

Every config that takes these keys (the experiment file and ``p2pfl simulate``'s flags,
``node.toml``, the consortium description's ``[training]``, :class:`NodeConfig`) declares
its fields with :func:`setting` and checks them with :func:`validate`, so a key means the
same thing, has the same default and is refused with the same message everywhere::

    @dataclass(frozen=True)
    class MyConfig:
        rounds: int = setting("rounds")

        def __post_init__(self) -> None:
            validate(self)

Checks that need more than the standard library (a topology's mixing method, an
aggregator spec, a torch device) stay with the config that owns them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from p2pfl.errors import ConfigError
from p2pfl.settings.rules import RULES
from p2pfl.settings.values import (
    DP_MODES,
    LEARNER,
    METRICS,
    MODES,
    TRANSPORTS,
    cluster_problem,
    compress_problem,
    discovery_problem,
    endpoint_problem,
    gossip_problem,
    learner_args_problem,
    learner_problem,
    metrics_problem,
    name_problem,
    parse_gossip,
    parse_start,
    split_names,
    start_problem,
)

__all__ = [
    "DP_MODES", "LEARNER", "METRICS", "MODES", "SETTINGS", "TRANSPORTS", "Setting", "describe", "parse_gossip",
    "parse_start", "setting", "setting_of", "split_names", "validate",
]

_METADATA = "p2pfl.setting"


@dataclass(frozen=True)
class Setting:
    """One key: its type, default, what values are valid and a one-line help.

    ``ge``/``gt``/``le``/``lt`` bound numbers (``>=``, ``>``, ``<=``, ``<``); ``finite``
    refuses inf and NaN; ``choices`` lists the valid values; ``check`` returns why a
    value is refused (None if fine), or raises the ConfigError itself. ``unit`` and ``note`` only shape the message, e.g.
    ``must be >= 0 (0 = use local_epochs)``. ``shown`` replaces the default in help text.
    ``parse`` turns a value as written (a file, a flag) into the key's value before it
    is checked, e.g. ``"auc,f1"`` into ``("auc", "f1")``.
    """

    key: str
    type: Any
    default: Any
    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    finite: bool = False
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None
    unit: str = ""
    note: str = ""
    shown: str | None = None
    parse: Callable[[Any], Any] | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not valid for this key, or None."""
        if value is None:
            return None  # only optional keys are None: the type check lets nothing else through
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(_show(c) for c in self.choices)}, got {value!r}"
        if self._bounded():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"expected a number, got {value!r}"
            if not self._within(value):
                return f"must be {self.bounds()}, got {value}"
        return self.check(value) if self.check is not None else None

    def bounds(self) -> str:
        """The valid range in words: ``>= 1``, ``in [0, 1)``, ``a finite number > 0``."""
        low = f">= {_num(self.ge)}" if self.ge is not None else f"> {_num(self.gt)}" if self.gt is not None else ""
        if low and self.lt is not None:  # a half-open interval
            text = f"in {'[' if self.ge is not None else '('}{low.split()[1]}, {_num(self.lt)})"
        else:
            high = f"<= {_num(self.le)}" if self.le is not None else f"< {_num(self.lt)}" if self.lt is not None else ""
            text = " and ".join(part for part in (low, high) if part)
        text = f"a finite number {text}" if self.finite else text
        return text + (f" {self.unit}" if self.unit else "") + (f" ({self.note})" if self.note else "")

    def _bounded(self) -> bool:
        return any(b is not None for b in (self.ge, self.gt, self.le, self.lt)) or self.finite

    def _within(self, value: float) -> bool:
        # written so that NaN fails every comparison
        return (
            (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt)
            and (not self.finite or math.isfinite(value))
        )


def setting(key: str, *, default: Any = dataclasses.MISSING, required: bool = False) -> Any:
    """A dataclass field for ``key``: the schema's default (or ``default``, where a config
    has a reason to differ; say it), carrying the setting for :func:`validate`."""
    spec = SETTINGS[key]
    metadata = {_METADATA: spec}
    if required:
        return dataclasses.field(metadata=metadata)
    value = spec.default if default is dataclasses.MISSING else default
    if isinstance(value, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=value, metadata=metadata)


def setting_of(field: dataclasses.Field[Any]) -> Setting | None:
    """The setting a dataclass field was declared with, or None."""
    spec = field.metadata.get(_METADATA)
    return spec if isinstance(spec, Setting) else None


def validate(config: Any) -> None:
    """Check every setting field of the dataclass ``config``, then the rules that tie
    several of its keys together (only those whose keys it has).

    Raises:
        ConfigError: naming the key at fault and what would be valid.
    """
    values: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        spec = setting_of(field)
        if spec is None:
            continue
        value = getattr(config, field.name)
        problem = spec.problem(value)
        if problem is not None:
            raise ConfigError(field.name, problem)
        values[field.name] = value
    for keys, rule in RULES:
        if all(key in values for key in keys):
            rule(values)


def describe(config_class: type, key: str, *, default: Any = dataclasses.MISSING) -> str:
    """The help of ``config_class``'s ``key`` with its default: ``help (default: X)``.

    The default shown is ``default`` if given, else the schema's description of it, else
    that config's own default (a config may differ from the schema, e.g. torch_threads).
    """
    field = next(f for f in dataclasses.fields(config_class) if f.name == key)
    spec = setting_of(field)
    if spec is None:
        raise KeyError(key)
    text = f"{spec.help} ({spec.note})" if spec.note else spec.help
    if default is not dataclasses.MISSING:
        shown = _show(default)
    elif spec.shown is not None:
        shown = spec.shown
    elif field.default is not dataclasses.MISSING:
        shown = _show(field.default)
    elif field.default_factory is not dataclasses.MISSING:
        shown = _show(spec.default)  # only setting() gives a factory: a copy of this
    else:
        return f"{text} (required)"
    return f"{text} (default: {shown})"


# --- the settings -------------------------------------------------------------------------

_S = Setting
_ALL = [
    # what runs: topology, data, model
    _S("nodes", int | None, None, "number of nodes", ge=1, shown="16, or the topology file's count"),
    _S("topology", str, "ring", "generator spec (ring, line, star, complete, torus[:RxC], grid[:RxC], hypercube, "
       "random-regular[:D], erdos-renyi[:P], small-world[:K,P], exponential) or a topology file"),
    _S("mixing", str, "metropolis", "mixing matrix: metropolis, max-degree or file (edge weights from the file)"),
    _S("fanout", int, 0, "time-varying gossip: each round send to this many random peers", ge=0,
       note="0 = static topology"),
    _S("dataset", str, "digits", "digits, breast_cancer, csv:PATH[,label=COLUMN] or npz:PATH"),
    _S("partition", str, "dirichlet:0.5", "how the data is split: iid, dirichlet:ALPHA, shards:K or quantity:ALPHA"),
    _S("test_fraction", float, 0.2, "share of the dataset held out as the common test set", gt=0, lt=1),
    _S("model", str, "mlp", "mlp, cnn, logreg or module:function(input_shape, num_classes)"),
    _S("seed", int, 0, "seed: fixes data split, partition, init, shuffling and random graphs", ge=0, le=2**32 - 1),
    _S("metrics", tuple[str, ...], (), "evaluation metrics besides accuracy and loss, comma-separated: auc, f1 "
       "(binary tasks), recall (per class) or module:function(y_true, y_score)", check=metrics_problem,
       parse=split_names, shown="none"),
    # local training
    _S("rounds", int, 40, "communication rounds", ge=1),
    _S("local_epochs", int, 1, "passes over the local data per round", ge=1),
    _S("local_steps", int, 0, "exactly this many optimizer steps per round instead of local_epochs", ge=0,
       note="0 = use local_epochs"),
    _S("lr", float, 0.05, "SGD learning rate", gt=0, finite=True),
    _S("momentum", float, 0.9, "SGD momentum (kept locally across rounds)", ge=0, lt=1),
    _S("weight_decay", float, 0.0, "SGD weight decay", ge=0),
    _S("batch_size", int, 16, "local mini-batch size", ge=1),
    _S("device", str, "cpu", "torch device for every node: cpu, cuda, cuda:1, ..."),
    _S("torch_threads", int, 0, "torch intra-op threads", ge=0, note="0 = torch's default"),
    # rounds
    _S("round_timeout", float, 60.0, "seconds a node waits for its neighbours each round", gt=0, unit="seconds"),
    _S("mode", str, "sync", "sync (rounds with a barrier) or async (no barrier: merge what arrived, weighted by "
       "staleness; rounds bound the logical clock)", choices=MODES),
    _S("staleness", float, 0.5, "async: a model s clock ticks older than the grace counts (1+s)^-staleness of "
       "its mixing weight", ge=0, note="0 = no staleness discount"),
    _S("staleness_grace", int, 5, "async: clock ticks of lag that are not discounted", ge=0, unit="clock ticks"),
    _S("start", str, "all", "when the first round starts: all (every neighbour said hello), none, min:N or "
       "at:ISO-8601 time (UTC if no zone)", check=start_problem),
    # the simulated machine
    _S("transport", str, "inproc", "inproc, ipc or tcp (127.0.0.1, ephemeral ports)", choices=TRANSPORTS),
    _S("curve", bool, False, "CurveZMQ on every link (fresh keys per node, allow-list of all nodes)"),
    _S("pin_cpu", bool, True, "keep the event loop and the training worker on one core (with torch_threads = 1)"),
    _S("cluster", str, "", "shard the nodes over Ray actors: ray (start Ray here), auto (join this machine's "
       "Ray cluster) or ray://HOST:PORT (Ray client); needs pip install 'p2pfl-gossip[cluster]'",
       check=cluster_problem, shown="off: one process"),
    _S("shard_size", int, 0, "with cluster: nodes per shard (one Ray actor each)", ge=0,
       note="0 = nodes / the cluster's CPUs"),
    _S("slow_nodes", int, 0, "number of slow nodes (chosen with the seed)", ge=0),
    _S("slowdown", float, 1.0, "how many times slower the slow nodes' steps are", ge=1),
    _S("step_seconds", float, 0.0, "emulated step time of a normal node, so nodes behave as if on their own "
       "hardware", ge=0, note="0 = as fast as this machine"),
    _S("fail", tuple[str, ...], (), "crash a node after a round: node=NAME,round=R (repeatable; a generated "
       "topology names its nodes 0..N-1)"),
    _S("recover", tuple[str, ...], (), "restart a crashed node once the others finished a round: "
       "node=NAME,round=R (repeatable)"),
    _S("join", tuple[str, ...], (), "start a node late, afresh, once the others finished a round: "
       "node=NAME,round=R (repeatable)"),
    _S("out", str | None, None, "output directory for metrics.jsonl, summary.json and models/; a folder "
       "holding a run is refused unless --overwrite", shown="no files"),
    _S("save_models", bool, True, "with out: save each node's final model and their average as plain "
       "state_dicts, out/models/NODE.pt and out/models/average.pt"),
    # robustness and privacy
    _S("aggregator", str, "mean", "mean, median, trimmed-mean:B, krum:F, multi-krum:F,M or clipped-gossip[:TAU]"),
    _S("attack", str, "", "what the attackers do: sign-flip, scale[:K], noise[:SIGMA], nan, inf, stale or "
       "label-flip", shown="none"),
    _S("attackers", int, 0, "number of attacking nodes (chosen with the seed); needs attack", ge=0),
    _S("dp", str, "", "differential privacy: sample (DP-SGD via Opacus) or update (noised round update)",
       choices=DP_MODES, shown="off"),
    _S("target_epsilon", float, 0.0, "with dp: pick the noise so epsilon after all rounds is <= this", ge=0,
       note="0 = fixed noise"),
    _S("noise", float, 0.0, "with dp: noise multiplier (noise std / clip) instead of target_epsilon", ge=0),
    _S("clip", float, 1.0, "with dp: L2 bound of per-sample gradients (sample) or round updates (update)", gt=0),
    _S("delta", float, 1e-5, "with dp: delta of the reported (epsilon, delta)", gt=0, lt=1),
    _S("compress", str, "", "compress models on the wire with error feedback: fp16, bf16, int8[:CHUNK] "
       "(stochastic rounding, one scale per tensor or per CHUNK entries), topk:F or randk:F, their values as "
       "float32 or, with :fp16, :int8 or :int4 (topk:F:int8), smaller (meant for gossip = choco); every member must use the same", check=compress_problem, shown="off"),
    _S("gossip", str, "plain", "plain (average the neighbours' models) or choco[:GAMMA] (CHOCO-SGD: send compressed "
       "differences to public copies, consensus step GAMMA in (0, 1], default 0.5; static topology, aggregator "
       "mean, no secure aggregation); every member must use the same", check=gossip_problem),
    _S("secure_aggregation", bool, False, "secure aggregation: each node learns only the weighted sum of its "
       "neighbours' models (pairwise masks; needs >= 3 neighbours per node, mode sync, aggregator mean)"),
    # one organisation's node
    _S("name", str, "", "this node's name (its member name in consortium.toml)", check=name_problem),
    _S("bind", str, "", "where the node listens, e.g. tcp://0.0.0.0:7002", check=endpoint_problem),
    _S("consortium", str, "", "public consortium file: members, endpoints, public keys, topology"),
    _S("peers", dict[str, str], {}, "static name = endpoint table (instead of a consortium file)"),
    _S("secret_key", str, "", "this node's CurveZMQ secret key file (mode 0600)"),
    _S("public_key", str, "", "this node's CurveZMQ public key file"),
    _S("insecure", bool, False, "plain-text links without authentication (logs a warning)"),
    _S("learner", str, "", "module:function(**learner_args) that builds the node's learner (model + private data)",
       check=learner_problem),
    _S("learner_args", dict[str, Any], {}, "keyword arguments for the learner function", check=learner_args_problem),
    _S("state_dir", str, "state", "where checkpoints, metrics.jsonl and the final model go"),
    _S("discovery", str, "", "optional mqtt://host:port or mqtts://host:port (TLS) for live membership",
       check=discovery_problem),
    _S("discovery_username", str, "", "MQTT user name", shown="this node's name when a password file is given"),
    _S("discovery_password_file", str, "", "file holding the MQTT password (first line, mode 0600); never the "
       "password itself"),
    _S("discovery_ca_file", str, "", "CA certificate (PEM) that signed the broker's, for mqtts://",
       shown="the system's CAs"),
    _S("discovery_cert_file", str, "", "client certificate (PEM), for brokers that require one"),
    _S("discovery_key_file", str, "", "the client certificate's private key (PEM)", shown="in the cert file"),
    _S("hello_interval", float, 1.0, "first delay between greetings while waiting to start", gt=0, unit="seconds"),
]
#: Every setting by key.
SETTINGS: dict[str, Setting] = {spec.key: spec for spec in _ALL}
del _S, _ALL


def _show(value: Any) -> str:
    if value == "" or value == () or value == {}:
        return '""' if value == "" else "none"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _num(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else str(value)


