"""Consortium membership as seen on the MQTT topics: pure parsing and bookkeeping, no I/O.

Topic layout under ``p2pfl/<consortium>/``::

    nodes/<name>/status     retained {"state": "online"|"offline"|"left", "endpoint", "fingerprint", "time"}
    nodes/<name>/progress   retained {"round", "accuracy", "loss", "time"}

Everything here is fed by a broker that anyone in the consortium can publish to, so every
payload is validated and a bad one is dropped with a log line, never raised.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

STATES = ("online", "offline", "left")
# Topic levels are names: MQTT wildcards or separators inside them would change what a topic means.
_FORBIDDEN = ("/", "+", "#", "\x00")


@dataclass(frozen=True)
class MemberStatus:
    """What the broker last said about one node.

    Attributes:
        name: the node's name (its topic level).
        state: ``online``, ``offline`` (its Last Will fired) or ``left`` (it said goodbye).
        endpoint: where its ZeroMQ transport listens, as it announced it.
        fingerprint: its public-key fingerprint, as it announced it.
        round: last round it reported progress for, if any.
        accuracy: test accuracy it reported with that round, if any.
        updated: Unix time of the latest status or progress seen for it.
    """

    name: str
    state: str
    endpoint: str | None
    fingerprint: str | None
    round: int | None
    accuracy: float | None
    updated: float


@dataclass(frozen=True)
class _Status:
    state: str
    endpoint: str | None
    fingerprint: str | None
    time: float


@dataclass(frozen=True)
class _Progress:
    round: int
    accuracy: float | None
    loss: float | None
    time: float


def check_topic_level(field: str, value: str) -> str | None:
    """Why ``value`` cannot be one MQTT topic level, or ``None`` if it can."""
    if not value:
        return f"{field} must not be empty"
    bad = [c for c in _FORBIDDEN if c in value]
    if bad:
        return f"{field} {value!r} must not contain {' '.join(repr(c) for c in bad)}"
    return None


def topic_prefix(consortium: str) -> str:
    return f"p2pfl/{consortium}/nodes"


def status_topic(consortium: str, name: str) -> str:
    return f"{topic_prefix(consortium)}/{name}/status"


def progress_topic(consortium: str, name: str) -> str:
    return f"{topic_prefix(consortium)}/{name}/progress"


def status_payload(state: str, endpoint: str, fingerprint: str, at: float | None = None) -> bytes:
    return json.dumps(
        {"state": state, "endpoint": endpoint, "fingerprint": fingerprint, "time": _now(at)}
    ).encode()


def progress_payload(round: int, accuracy: float, loss: float, at: float | None = None) -> bytes:
    return json.dumps(
        {"round": round, "accuracy": accuracy, "loss": loss, "time": _now(at)}
    ).encode()


def _now(at: float | None) -> float:
    return time.time() if at is None else at


class Membership:
    """The membership table one subscriber builds from status and progress messages.

    Args:
        consortium: whose topics to accept; others are ignored.
        is_member: ``(name, fingerprint) -> bool``; a status failing it is ignored (and logged
            once per name/fingerprint pair). ``None`` accepts everyone (the read-only watcher).
    """

    def __init__(self, consortium: str, is_member: Callable[[str, str], bool] | None = None) -> None:
        self._prefix = topic_prefix(consortium).split("/")
        self._is_member = is_member
        self._status: dict[str, _Status] = {}
        # Kept apart from status so that arrival order (progress before status) does not matter:
        # progress only shows for names whose status was accepted.
        self._progress: dict[str, _Progress] = {}
        self._rejected: set[tuple[str, str | None]] = set()

    def handle(self, topic: str, payload: bytes, retained: bool) -> bool:
        """Apply one message; returns whether the visible membership changed.

        Args:
            topic: the message's topic.
            payload: its raw payload; empty means the retained message was cleared.
            retained: whether the broker replayed it from its store (then its own ``time`` is
                the best guess of when it happened; for a live message, now is better, which
                also covers a Last Will whose ``time`` was fixed when its node connected).
        """
        levels = topic.split("/")
        if len(levels) != len(self._prefix) + 2 or levels[: len(self._prefix)] != self._prefix:
            log.debug("ignoring message on unrelated topic %r", topic)
            return False
        name, kind = levels[-2], levels[-1]
        if check_topic_level("name", name) is not None or kind not in ("status", "progress"):
            log.debug("ignoring message on unrelated topic %r", topic)
            return False
        if not payload:
            # An empty retained payload is how an operator clears a node off the broker.
            return self._forget(name, kind)
        try:
            data = json.loads(payload)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            received = None if retained else time.time()
            if kind == "status":
                return self._apply_status(name, _parse_status(data, received))
            return self._apply_progress(name, _parse_progress(data, received))
        except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            log.warning("ignoring malformed %s of %r on %r: %s", kind, name, topic, exc)
            return False

    def members(self) -> dict[str, MemberStatus]:
        """Snapshot of every accepted node, with its latest progress if it reported any."""
        out: dict[str, MemberStatus] = {}
        for name, status in sorted(self._status.items()):
            progress = self._progress.get(name)
            out[name] = MemberStatus(
                name=name,
                state=status.state,
                endpoint=status.endpoint,
                fingerprint=status.fingerprint,
                round=progress.round if progress else None,
                accuracy=progress.accuracy if progress else None,
                updated=max(status.time, progress.time) if progress else status.time,
            )
        return out

    def state_of(self, name: str) -> str | None:
        status = self._status.get(name)
        return status.state if status else None

    def _apply_status(self, name: str, status: _Status) -> bool:
        if self._is_member is not None and not self._accepts(name, status.fingerprint):
            key = (name, status.fingerprint)
            if key not in self._rejected:
                self._rejected.add(key)
                log.warning(
                    "ignoring %s announcement of %r with fingerprint %r: not a member of the consortium",
                    status.state, name, status.fingerprint,
                )
            return False
        self._status[name] = status
        return True

    def _accepts(self, name: str, fingerprint: str | None) -> bool:
        if fingerprint is None or self._is_member is None:
            return False
        try:
            return bool(self._is_member(name, fingerprint))
        except Exception:  # a buggy predicate must not kill the listener; reject instead
            log.exception("is_member(%r, %r) raised; treating it as not a member", name, fingerprint)
            return False

    def _apply_progress(self, name: str, progress: _Progress) -> bool:
        self._progress[name] = progress
        return name in self._status

    def _forget(self, name: str, kind: str) -> bool:
        if kind == "status":
            self._progress.pop(name, None)
            return self._status.pop(name, None) is not None
        return self._progress.pop(name, None) is not None and name in self._status


def _parse_status(data: dict[str, Any], received: float | None) -> _Status:
    state = data.get("state")
    if state not in STATES:
        raise ValueError(f"state {state!r} is not one of {', '.join(STATES)}")
    return _Status(
        state=state,
        endpoint=_optional_str(data, "endpoint"),
        fingerprint=_optional_str(data, "fingerprint"),
        time=received if received is not None else _time(data),
    )


def _parse_progress(data: dict[str, Any], received: float | None) -> _Progress:
    round_ = data.get("round")
    # bool is an int subclass; True is not a round number
    if not isinstance(round_, int) or isinstance(round_, bool) or round_ < 0:
        raise ValueError(f"round {round_!r} is not a non-negative integer")
    return _Progress(
        round=round_,
        accuracy=_optional_number(data, "accuracy"),
        loss=_optional_number(data, "loss"),
        time=received if received is not None else _time(data),
    )


def _optional_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} {value!r} is not a string")
    return value


def _optional_number(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} {value!r} is not a number")
    return float(value)


def _time(data: dict[str, Any]) -> float:
    value = _optional_number(data, "time")
    # A retained message without a usable time still counts; "now" is the least wrong guess.
    return value if value is not None and math.isfinite(value) else time.time()
