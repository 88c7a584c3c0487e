"""Checks of single setting values that take more than bounds, and the ``start`` grammar."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from p2pfl.errors import ConfigError

TRANSPORTS = ("inproc", "ipc", "tcp")
MODES = ("sync", "async")
DP_MODES = ("", "sample", "update")  # off | DP-SGD per sample | clipped+noised update per round
LEARNER = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
#: The built-in evaluation metrics (``p2pfl.learning.metrics`` computes them) and what each needs.
METRICS: Mapping[str, str] = {"auc": "binary", "f1": "binary", "recall": "per class"}


def parse_start(spec: str) -> tuple[str, int, datetime | None]:
    """Parse a start condition: ``all``, ``none``, ``min:N`` or ``at:2026-12-01T10:00:00Z``.

    Returns:
        ``(kind, count, at)``; a time without a zone is taken as UTC.

    Raises:
        ConfigError: naming ``start``, with the valid forms.
    """
    kind, _, value = spec.strip().partition(":")
    if kind in ("all", "none") and not value:
        return kind, 0, None
    if kind == "min" and value.isdigit() and int(value) >= 0:
        return "min", int(value), None
    if kind == "at" and value:
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return "at", 0, when if when.tzinfo else when.replace(tzinfo=UTC)
    raise ConfigError("start", f"{spec!r} is not a start condition: use all, none, min:N or at:2026-12-01T10:00:00Z")


# --- value checks that take more than bounds --------------------------------------------


def start_problem(value: str) -> str | None:
    parse_start(value)  # raises ConfigError("start", ...) with the valid forms
    return None


def learner_problem(value: str) -> str | None:
    if not value:
        return ("missing; give the module:function that builds each node's learner, "
                'e.g. learner = "p2pfl.examples.bundled:build_learner"')
    if not LEARNER.fullmatch(value):
        return f"{value!r} is not module:function (e.g. mypackage.models:build_learner)"
    return None


def learner_args_problem(value: Mapping[Any, Any]) -> str | None:
    for key in value:
        if not isinstance(key, str) or not key.isidentifier():
            # the key at fault is inside the table: name it in the field
            raise ConfigError(f"learner_args.{key}", "must be a Python identifier (it is passed as a keyword)")
    return None


#: ``compress``'s grammar (:func:`p2pfl.wire.codecs.parse_codec` reads it; settings import no wire)
_COMPRESS = re.compile(r"fp16|bf16|int8(:[1-9]\d{0,9})?|(topk|randk):(?P<f>[0-9.eE+-]+)(:fp16|:int8|:int4)?")


def compress_problem(value: str) -> str | None:
    match = _COMPRESS.fullmatch(value)
    valid = ("use fp16, bf16, int8, int8:CHUNK, topk:F[:fp16|:int8|:int4] or randk:F[:fp16|:int8|:int4] (F in (0, 1]), "
             "or leave it empty")
    if not value:
        return None
    if match is None:
        return f"{value!r}: {valid}"
    if match["f"] is not None:
        try:
            fraction = float(match["f"])
        except ValueError:
            fraction = math.nan
        if not 0 < fraction <= 1:
            return f"{value!r}: the fraction must be in (0, 1], e.g. {value.split(':')[0]}:0.01"
    elif value.startswith("int8:") and int(value[5:]) > 2**31:
        return f"{value!r}: the chunk size must be in [1, 2**31]"
    return None


#: CHOCO's consensus step when ``gossip = "choco"`` gives none: measured on the digits
#: benchmark (16 nodes, ring, topk:0.1); the paper tunes it per codec and graph.
CHOCO_GAMMA = 0.5


def parse_gossip(spec: str) -> tuple[str, float]:
    """``plain`` or ``choco[:GAMMA]`` as ``(algorithm, gamma)`` (gamma 1.0 for plain).

    Raises:
        ConfigError: naming ``gossip``, with the valid forms.
    """
    name, colon, value = spec.partition(":")
    if name == "plain" and not colon:
        return "plain", 1.0
    if name == "choco":
        if not colon:
            return "choco", CHOCO_GAMMA
        try:
            gamma = float(value)
        except ValueError:
            gamma = math.nan
        if 0 < gamma <= 1:
            return "choco", gamma
        raise ConfigError("gossip", f"{spec!r}: the consensus step GAMMA must be in (0, 1], e.g. choco:{CHOCO_GAMMA}")
    raise ConfigError("gossip", f"{spec!r}: use plain, choco or choco:GAMMA (GAMMA in (0, 1])")


def gossip_problem(value: str) -> str | None:
    parse_gossip(value)  # raises ConfigError("gossip", ...) with the valid forms
    return None


def split_names(value: Any) -> tuple[str, ...]:
    """``("auc,f1", "recall")`` or ``"auc,f1"`` as ``("auc", "f1", "recall")``: a list key
    given comma-separated (``--metrics auc,f1``), repeated, or as a TOML array."""
    items = (value,) if isinstance(value, str) else tuple(value)
    return tuple(name.strip() for item in items for name in str(item).split(",") if name.strip())


def metrics_problem(value: tuple[str, ...]) -> str | None:
    for name in value:
        if name in METRICS or LEARNER.fullmatch(name):
            continue
        close = difflib.get_close_matches(name, METRICS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        valid = ", ".join(f"{key} ({needs})" for key, needs in METRICS.items())
        return f"unknown metric {name!r}{hint}; valid: {valid}, or module:function for your own"
    if len(set(value)) != len(value):
        return f"names a metric twice: {', '.join(value)}"
    return None


def name_problem(value: str) -> str | None:
    return None if value else "missing; give this node's name"


def discovery_problem(value: str) -> str | None:
    if not value or value.startswith(("mqtt://", "mqtts://")):
        return None
    return f"{value!r}: use mqtt://host:port, mqtts://host:port (TLS) or leave it empty"


def endpoint_problem(value: str) -> str | None:
    return None if "://" in value else f"{value!r} is not an endpoint like tcp://0.0.0.0:7002"




def cluster_problem(value: str) -> str | None:
    if value in ("", "ray", "auto") or (value.startswith("ray://") and value.rpartition(":")[2].isdigit()):
        return None
    return f"{value!r} is not a cluster: use ray (a local Ray), auto (this machine's Ray cluster) or ray://HOST:PORT"
