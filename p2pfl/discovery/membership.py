"""Consortium membership as seen on the MQTT topics: pure parsing and bookkeeping, no I/O.

Topic layout under ``p2pfl/<consortium>/``::

    nodes/<name>/status     retained {"v": 1, "state": "online"|"offline"|"left", "endpoint", "fingerprint",
                                      "time"[, "reason": "finished"|"stopped", "round"]}
    nodes/<name>/progress   retained {"v": 1, "round", "accuracy", "loss", "time"}

A node that leaves on purpose says ``left`` with why: ``finished`` (all its rounds are done,
``round`` is its last) or ``stopped`` (stopped mid-run, e.g. SIGINT; ``round`` is its last
reported round, if any). The wire state stays ``left`` so that nodes of older versions still
read it as gone; what the table shows is the reason (a ``left`` without one comes from an
older node).

Versioning: readers ignore keys they do not know, so adding a key keeps ``v`` at 1 and old
readers working. ``v`` is raised only for a change an old reader would misread; readers
drop messages whose ``v`` is newer than theirs (a payload without ``v`` is version 1).

Everything here is fed by a broker that anyone in the consortium can publish to, so every
payload is validated and a bad one is dropped with a log line, never raised. Given a
:class:`~p2pfl.discovery.signing.Verifier`, messages must also be signed by the member
they are about (see :mod:`p2pfl.discovery.signing` for the extra keys ``boot``, ``seq``, ``sig``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from p2pfl.discovery.signing import Verifier

log = logging.getLogger(__name__)

#: The message format this module writes and the newest it reads (see the module docstring).
FORMAT_VERSION = 1
#: States as sent on the wire.
STATES = ("online", "offline", "left")
#: Why a node left, as it says in its ``left`` status.
REASONS = ("finished", "stopped")
#: States a member can be shown in: ``online``, ``offline`` (its Last Will fired, or it failed),
#: ``finished``/``stopped`` (it left, saying why), ``left`` (it left without a reason: an older node).
VISIBLE_STATES = ("online", "offline", "finished", "stopped", "left")
# Topic levels are names: MQTT wildcards or separators inside them would change what a topic means.
_FORBIDDEN = ("/", "+", "#", "\x00")


@dataclass(frozen=True)
class MemberStatus:
    """What the broker last said about one node.

    Attributes:
        name: the node's name (its topic level).
        state: ``online``; ``offline`` (its Last Will fired: it vanished or failed);
            ``finished`` (it did all its rounds and left); ``stopped`` (it was stopped
            mid-run, e.g. SIGINT, and left); ``left`` (an older node that left without saying why).
        endpoint: where its ZeroMQ transport listens, as it announced it.
        fingerprint: its public-key fingerprint, as it announced it.
        round: last round it reported (in its progress, or when it left), if any.
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
    state: str  # as shown: the reason replaces "left" when there is one
    endpoint: str | None
    fingerprint: str | None
    time: float
    round: int | None = None  # the last round it named when leaving


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


def status_payload(
    state: str, endpoint: str, fingerprint: str, at: float | None = None,
    *, reason: str | None = None, round: int | None = None,
) -> bytes:
    """A status message (unsigned); ``reason`` and ``round`` go only with ``left``."""
    return json.dumps(status_fields(state, endpoint, fingerprint, at, reason=reason, round=round)).encode()


def status_fields(
    state: str, endpoint: str, fingerprint: str, at: float | None = None,
    *, reason: str | None = None, round: int | None = None,
) -> dict[str, Any]:
    """The keys of a status message, to be signed and sent."""
    data: dict[str, Any] = {
        "v": FORMAT_VERSION, "state": state, "endpoint": endpoint, "fingerprint": fingerprint, "time": _now(at),
    }
    if reason is not None:
        data["reason"] = reason
    if round is not None:
        data["round"] = round
    return data


def progress_payload(round: int, accuracy: float, loss: float, at: float | None = None) -> bytes:
    """A progress message (unsigned)."""
    return json.dumps(progress_fields(round, accuracy, loss, at)).encode()


def progress_fields(round: int, accuracy: float, loss: float, at: float | None = None) -> dict[str, Any]:
    """The keys of a progress message, to be signed and sent."""
    return {"v": FORMAT_VERSION, "round": round, "accuracy": accuracy, "loss": loss, "time": _now(at)}


def _now(at: float | None) -> float:
    return time.time() if at is None else at


class Membership:
    """The membership table one subscriber builds from status and progress messages.

    Args:
        consortium: whose topics to accept; others are ignored.
        is_member: ``(name, fingerprint) -> bool``; a status failing it is ignored (and logged
            once per name/fingerprint pair). ``None`` accepts everyone (the read-only watcher).
        verifier: checks each message's signature, order and age; ``None`` accepts unsigned
            messages (no signing keys known: anyone who can publish can speak for anyone).
        refused: the counter to add refusals to (a new one by default).

    Attributes:
        refused: messages ignored, by reason (:data:`~p2pfl.discovery.signing.REFUSALS`).
    """

    def __init__(
        self, consortium: str, is_member: Callable[[str, str], bool] | None = None,
        verifier: Verifier | None = None, refused: Counter[str] | None = None,
    ) -> None:
        self._prefix = topic_prefix(consortium).split("/")
        self._is_member = is_member
        self._verifier = verifier
        self.refused: Counter[str] = refused if refused is not None else Counter()
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
            _check_version(data)
            if self._verifier is not None:
                will = kind == "status" and data.get("state") == "offline"
                reason = self._verifier.check(topic, name, data, live=not retained, will=will)
                if reason == "duplicate":
                    return False
                if reason is not None:
                    self.refused[reason] += 1
                    self._verifier.log_refusal(name, reason, kind)
                    return False
            received = None if retained else time.time()
            if kind == "status":
                return self._apply_status(name, _parse_status(data, received))
            return self._apply_progress(name, _parse_progress(data, received))
        except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            self.refused["malformed"] += 1
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
                round=_latest(progress.round if progress else None, status.round),
                accuracy=progress.accuracy if progress else None,
                updated=max(status.time, progress.time) if progress else status.time,
            )
        return out

    def state_of(self, name: str) -> str | None:
        status = self._status.get(name)
        return status.state if status else None

    def _apply_status(self, name: str, status: _Status) -> bool:
        if self._is_member is not None and not self._accepts(name, status.fingerprint):
            self.refused["not-member"] += 1
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


def _latest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _check_version(data: dict[str, Any]) -> None:
    version = data.get("v", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"format version {version!r} is not a positive integer")
    if version > FORMAT_VERSION:
        raise ValueError(f"format version {version} is newer than this p2pfl reads ({FORMAT_VERSION}): upgrade it")


def _parse_status(data: dict[str, Any], received: float | None) -> _Status:
    state = data.get("state")
    if state not in STATES:
        raise ValueError(f"state {state!r} is not one of {', '.join(STATES)}")
    # A reason this version does not know (from a newer node) still means the node left.
    reason = data.get("reason")
    round_ = data.get("round")
    return _Status(
        state=reason if state == "left" and reason in REASONS else state,
        endpoint=_optional_str(data, "endpoint"),
        fingerprint=_optional_str(data, "fingerprint"),
        time=received if received is not None else _time(data),
        round=None if round_ is None else _round(round_),
    )


def _parse_progress(data: dict[str, Any], received: float | None) -> _Progress:
    return _Progress(
        round=_round(data.get("round")),
        accuracy=_optional_number(data, "accuracy"),
        loss=_optional_number(data, "loss"),
        time=received if received is not None else _time(data),
    )


def _round(value: object) -> int:
    # bool is an int subclass; True is not a round number
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"round {value!r} is not a non-negative integer")
    return value


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
