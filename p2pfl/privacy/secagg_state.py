"""Secure aggregation's bookkeeping: ephemeral keys seen and relayed, what a neighbour
signed and revealed for each (receiver, round), replies a receiver waits for.

Everything here comes from the network, so every field is checked before use, and
what is kept per (receiver, round) is forgotten a few rounds later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from p2pfl.errors import WireError
from p2pfl.node.arrivals import Arrivals
from p2pfl.privacy.secagg_keys import (
    SIGNATURE_BYTES,
    EphemeralKey,
    SecAggKeys,
    bundle_digest,
    key_statement,
    valid_public,
)
from p2pfl.wire import Message

KEEP_ROUNDS = 8  # per-(receiver, round) state older than this many rounds is dropped
MAX_BLOB = 256  # an encrypted share: nonce + 66 bytes + tag, with room to spare
MAX_ENTRIES = 4096  # names in one message's meta: more than any neighbourhood


def names_field(meta: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = meta.get(key)
    if not isinstance(value, list) or len(value) > MAX_ENTRIES or not all(isinstance(v, str) for v in value):
        raise WireError("bad_header", f"meta.{key} must be a list of names")
    if len(set(value)) != len(value):
        raise WireError("bad_header", f"meta.{key} names someone twice")
    return tuple(sorted(value))


def bytes_field(meta: Mapping[str, Any], key: str, size: int | None = None) -> bytes:
    value = meta.get(key)
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        raise WireError("bad_header", f"meta.{key} must be {size or 'some'} bytes")
    return value


def blobs_field(meta: Mapping[str, Any], key: str) -> dict[str, bytes]:
    value = meta.get(key)
    if (
        not isinstance(value, dict) or len(value) > MAX_ENTRIES
        or not all(isinstance(k, str) and isinstance(v, bytes) and len(v) <= MAX_BLOB for k, v in value.items())
    ):
        raise WireError("bad_header", f"meta.{key} must map names to short byte strings")
    return value


def signature_field(meta: Mapping[str, Any]) -> bytes:
    return bytes_field(meta, "sig", SIGNATURE_BYTES)


@dataclass(frozen=True)
class Bundle:
    """The ephemeral keys of a receiver's neighbourhood, as the receiver relayed them."""

    receiver: str
    keys: Mapping[str, bytes]  # neighbour -> ephemeral X25519 public key
    digest: bytes  # bundle_digest(receiver, keys): who masked with which keys

    @classmethod
    def of(cls, receiver: str, keys: Mapping[str, bytes]) -> Bundle:
        return cls(receiver, dict(keys), bundle_digest(receiver, keys))


class KeyDirectory:
    """Ephemeral keys: as a receiver, its neighbours' signed adverts (which it relays to
    them all, since they need not be linked to each other); as a sender, each receiver's
    relayed bundle, every key in it checked against its owner's signing key."""

    def __init__(self, keys: SecAggKeys, own: EphemeralKey) -> None:
        self._keys = keys
        self._own = own
        self._adverts: dict[str, tuple[bytes, bytes]] = {}  # neighbour -> (public, signature)
        self._bundles: dict[str, dict[str, bytes]] = {}  # receiver -> relayed keys
        self._verified: set[tuple[str, bytes, bytes]] = set()
        self.arrived = Arrivals()

    def advert(self) -> dict[str, Any]:
        return {"key": self._own.public, "sig": self._own.signature}

    def _check(self, name: str, public: Any, signature: Any) -> tuple[bytes, bytes]:
        """``(public, signature)`` once the signature is checked (verifications are cached:
        relays repeat the same keys)."""
        if not (valid_public(public) and isinstance(signature, bytes)):
            raise WireError("bad_header", f"ephemeral key of {name!r}: 32 bytes and a signature")
        if (name, public, signature) not in self._verified:
            if not self._keys.verify(name, key_statement(name, public), signature):
                raise WireError("bad_key_signature", f"ephemeral key of {name!r} is not signed by its identity")
            if len(self._verified) > MAX_ENTRIES:
                self._verified.clear()
            self._verified.add((name, public, signature))
        return public, signature

    def offer_advert(self, sender: str, meta: Mapping[str, Any]) -> bool:
        """Keep ``sender``'s advertised key; whether it is new or changed (a restart)."""
        public, signature = self._check(sender, meta.get("key"), meta.get("sig"))
        changed = self._adverts.get(sender, (None,))[0] != public
        self._adverts[sender] = (public, signature)
        return changed

    def relay(self, names: Iterable[str]) -> dict[str, Any] | None:
        """The meta relaying every named neighbour's signed key, or None while one is missing."""
        entries = []
        for name in sorted(names):
            if name not in self._adverts:
                return None
            entries.append([name, *self._adverts[name]])
        return {"keys": entries}

    def own_bundle(self, receiver: str, names: Iterable[str]) -> Bundle | None:
        """As a receiver: the keys its neighbours masked with, if it has them all."""
        keys = {}
        for name in names:
            if name not in self._adverts:
                return None
            keys[name] = self._adverts[name][0]
        return Bundle.of(receiver, keys)

    def offer_relay(self, receiver: str, meta: Mapping[str, Any]) -> None:
        entries = meta.get("keys")
        if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
            raise WireError("bad_header", "meta.keys must list [name, key, signature]")
        keys = {}
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)):
                raise WireError("bad_header", "meta.keys must list [name, key, signature]")
            keys[entry[0]] = self._check(*entry)[0]
        self._bundles[receiver] = keys
        self.arrived.notify()

    def bundle_for(self, receiver: str, names: Iterable[str]) -> Bundle | None:
        """As a sender: the receiver's relayed keys of ``names``, if complete and holding
        this run's own key (an older one means the receiver has not heard of our restart)."""
        relayed = self._bundles.get(receiver)
        if relayed is None or relayed.get(self._own.name) != self._own.public:
            return None
        keys = {}
        for name in names:
            if name not in relayed:
                return None
            keys[name] = relayed[name]
        return Bundle.of(receiver, keys)

    def forget(self, peer: str) -> None:
        """``peer`` restarted: it forgot our key and lost its own."""
        self._bundles.pop(peer, None)
        self._adverts.pop(peer, None)


@dataclass
class Helping:
    """A neighbour's part in one receiver's unmasking of one round."""

    bundle: Bundle  # the keys it masked its model for the receiver with
    statement: bytes | None = None  # the one dropout set it endorsed
    dropped: tuple[str, ...] = ()
    sealed: dict[str, bytes] = field(default_factory=dict)  # senders' shares, sealed for it
    answered: bool = False


class HelperBook:
    """What this node did as a neighbour of each receiver, per round."""

    def __init__(self) -> None:
        self._slots: dict[tuple[str, int], Helping] = {}

    def sent(self, receiver: str, round_: int, bundle: Bundle) -> None:
        self._slots[(receiver, round_)] = Helping(bundle)
        for old in [key for key in self._slots if key[1] < round_ - KEEP_ROUNDS]:
            del self._slots[old]

    def slot(self, receiver: str, round_: int) -> Helping:
        slot = self._slots.get((receiver, round_))
        if slot is None:
            raise WireError("set_refused", f"{receiver} asks about round {round_}; we sent it no model then")
        return slot


class Replies:
    """The replies of one kind a receiver asked for in its current round."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._round: int | None = None
        self._expected: set[str] = set()
        self._got: dict[str, Message] = {}
        self._arrived = Arrivals()

    def offer(self, message: Message) -> None:
        if message.round != self._round or message.sender not in self._expected or message.sender in self._got:
            raise WireError(f"unexpected_{self._what}",
                            f"{self._what} from {message.sender} for round {message.round} not asked for")
        self._got[message.sender] = message
        self._arrived.notify()

    def open(self, round_: int, expected: Iterable[str]) -> None:
        """Expect replies of ``round_`` from ``expected`` (call before asking)."""
        self._round, self._expected, self._got = round_, set(expected), {}

    async def gather(self, timeout: float) -> dict[str, Message]:
        """Wait for every expected reply, or ``timeout``; then close."""
        await self._arrived.until(lambda: self._expected <= self._got.keys(), timeout)
        got = dict(self._got)
        self._round, self._expected, self._got = None, set(), {}
        return got
