"""Signed presence: members sign what they announce on the broker; receivers verify and refuse.

A broker is a place where anyone allowed to publish can say anything about anyone. So every
status and progress message carries, besides its content (``v`` stays 1: old readers ignore
the extra keys)::

    "boot": 1764771234567890   microseconds of wall-clock time when the sender's presence started
    "seq":  17                 a counter of that presence, one per message it signs
    "sig":  "<base64>"         Ed25519 over the topic and the canonical JSON of every other key

and a receiver that has the consortium's signing keys accepts a message only when:

- it is signed (else ``unsigned``) by the key ``consortium.toml`` lists for the member named
  in the topic (``no-key`` when it lists none, ``forged`` when the signature is wrong); the
  topic is signed too, so a status cannot be replayed as another member's or as progress;
- ``(boot, seq)`` is newer than the last one accepted on that topic (else ``replayed``): a
  member's own earlier statuses (an old Will, an old "offline") cannot be played back over
  a newer one; a restarted process starts a later ``boot``;
- a message delivered live (not replayed from the broker's store) is not older than
  :data:`MAX_AGE` seconds by its ``time``, nor from the future (else ``stale``). A Last Will
  is exempt: its text, time included, is fixed when the node connects, and it is always
  ``offline``, which only ordering can judge.

Refused messages are counted by reason and logged sparsely (the first per member and
reason, then at 10, 100, ... of them).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from p2pfl.security.identity import verify_signature

if TYPE_CHECKING:
    from p2pfl.security.identity import Identity

log = logging.getLogger(__name__)

__all__ = ["MAX_AGE", "MAX_SKEW", "REFUSALS", "Signer", "Verifier", "canonical"]

#: A live message whose ``time`` is older than this many seconds is refused as ``stale``.
MAX_AGE = 300.0
#: ... and so is one this many seconds in the future (clocks of organisations differ a little).
MAX_SKEW = 60.0
#: Why a message is refused (the keys of the ``refused`` counters).
REFUSALS = ("unsigned", "no-key", "forged", "replayed", "stale", "malformed", "not-member")
_DOMAIN = b"p2pfl presence v1\x00"
_SIGNED_KEYS = ("boot", "seq", "sig")


def canonical(data: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: sorted keys, no spaces, ASCII; what a receiver parsed
    is exactly what it verifies (duplicate keys, spacing and key order cannot matter)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _signed_bytes(topic: str, data: Mapping[str, Any]) -> bytes:
    return _DOMAIN + topic.encode("utf-8") + b"\x00" + canonical({k: v for k, v in data.items() if k != "sig"})


class Signer:
    """Seals one presence's messages: ``boot`` fixed at creation, ``seq`` counting up.

    Args:
        identity: the member's signing key; ``None`` sends messages unsigned (a node with
            no key pair, e.g. ``--insecure``), which verifying receivers refuse.
    """

    def __init__(self, identity: Identity | None) -> None:
        self.identity = identity
        self.boot = time.time_ns() // 1000
        self._seq = 0

    def seal(self, topic: str, data: Mapping[str, Any]) -> bytes:
        """``data`` as JSON with ``boot``, the next ``seq`` and the signature (if any)."""
        if self.identity is None:
            return json.dumps(dict(data)).encode()
        self._seq += 1
        sealed: dict[str, Any] = {**data, "boot": self.boot, "seq": self._seq}
        sealed["sig"] = base64.b64encode(self.identity.sign(_signed_bytes(topic, sealed))).decode("ascii")
        return json.dumps(sealed).encode()


class Verifier:
    """Judges incoming messages against the members' signing keys; counts what it refuses.

    Args:
        keys: ``name -> signing key (Z85) or None``; looked up for every message, so a
            consortium file reloaded while running takes effect at once.
    """

    def __init__(self, keys: Callable[[str], str | None]) -> None:
        self._keys = keys
        self._latest: dict[str, tuple[int, int, str]] = {}  # topic -> (boot, seq, sig) last accepted
        self._per_sender: Counter[tuple[str, str]] = Counter()

    def check(self, topic: str, name: str, data: Mapping[str, Any], *, live: bool, will: bool) -> str | None:
        """Why ``data`` (parsed from a message on ``topic`` about ``name``) is refused, or None.

        ``duplicate`` is the very message accepted last (a member re-announcing itself after
        someone overwrote its retained status): nothing to apply, nothing to count.

        Args:
            live: delivered as it was published (not replayed from the broker's store).
            will: it may be a Last Will (an ``offline`` status), whose time is its connect time.
        """
        if not all(key in data for key in _SIGNED_KEYS):
            return "unsigned"
        boot, seq, sig = data["boot"], data["seq"], data["sig"]
        if not (_counter(boot) and _counter(seq) and isinstance(sig, str)):
            return "malformed"
        key = self._keys(name)
        if not key:
            return "no-key"
        try:
            signature = base64.b64decode(sig, validate=True)
            signed = _signed_bytes(topic, data)
        except (binascii.Error, ValueError, TypeError):  # bad base64; NaN or odd values in the JSON
            return "forged"
        if not verify_signature(key, signed, signature):
            return "forged"
        previous = self._latest.get(topic)
        if previous is not None and (boot, seq, sig) == previous:
            return "duplicate"
        if previous is not None and (boot, seq) <= previous[:2]:
            return "replayed"
        if live and not will and not _fresh(data.get("time")):
            return "stale"
        self._latest[topic] = (boot, seq, sig)
        return None

    def log_refusal(self, name: str, reason: str, what: str) -> None:
        """Log a refused message sparsely."""
        self._per_sender[(name, reason)] += 1
        count = self._per_sender[(name, reason)]
        # the first, then at 10, 100, ...: a flood stays visible without filling the log
        level = logging.WARNING if count == 1 or math.log10(count).is_integer() else logging.DEBUG
        log.log(level, "refused %s about %r from the broker: %s (%d such so far)", what, name, _WHY[reason], count)


_WHY = {
    "unsigned": "not signed (a stranger, or a node of an older p2pfl)",
    "no-key": "consortium.toml lists no signing_key for this member",
    "forged": "the signature does not match the member's signing_key",
    "replayed": "not newer than what this member already said (a replay)",
    "stale": f"its time is more than {MAX_AGE:g} s old or {MAX_SKEW:g} s in the future (a replay, or a wrong clock)",
    "malformed": "not a valid message",
    "not-member": "the announced key is not the member's",
}


def _counter(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _fresh(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    now = time.time()
    return now - MAX_AGE <= value <= now + MAX_SKEW
