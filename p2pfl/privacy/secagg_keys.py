"""Secure aggregation's keys: long-term identities sign per-run ephemeral X25519 keys.

* A member's *identity* (Ed25519, :mod:`p2pfl.security.identity`) is long-term: a deployed
  member's derives from its Curve secret, the others' public halves come from
  ``consortium.toml``; a simulation gives every node a fresh one. It only signs.
* Each run (each process start, each :class:`~p2pfl.privacy.secagg.SecureAggregation`)
  generates an *ephemeral* X25519 key pair, advertised signed by the identity and never
  written anywhere: a later run, or the same node after a crash, has another one, so
  nothing derived from it repeats, and a stolen long-term key does not expose past masks.
* Each pair of members derives, from the X25519 agreement of their ephemeral keys, a mask
  seed and a share-encryption key with HKDF-SHA256 whose ``info`` holds both ephemeral
  public keys (the run identifier) and both names; a mask of a (round, receiver) is
  AES-256-CTR under HMAC-SHA256(mask seed, label | round | receiver).
* Self-mask shares travel AES-256-GCM encrypted under the share key, bound by their
  associated data to (receiver, round, sender, holder, key bundle).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgpack
import numpy as np

from p2pfl.errors import ConfigError
from p2pfl.security.identity import Identity, identity_from_curve, new_identity, verify_signature

__all__ = ["EphemeralKey", "SecAggKeys", "bundle_digest", "generate_keys", "prg", "set_statement"]

_PAIR_INFO = b"p2pfl secagg v2 pair"
_MASK_LABEL = b"p2pfl secagg v2 mask"
_KEY_LABEL = "p2pfl secagg v2 ephemeral key"
_BUNDLE_LABEL = "p2pfl secagg v2 key bundle"
_SET_LABEL = "p2pfl secagg v2 dropout set"
_SHARE_LABEL = "p2pfl secagg v2 share"
_ENDORSE_LABEL = b"p2pfl secagg v2 endorsement"
KEY_BYTES = 32
SIGNATURE_BYTES = 64
NONCE_BYTES = 12

_CRYPTO: tuple[Any, ...] | None = None


def _crypto() -> tuple[Any, ...]:
    global _CRYPTO
    if _CRYPTO is not None:
        return _CRYPTO
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "secure_aggregation", "needs the 'cryptography' package: pip install cryptography"
        ) from None
    _CRYPTO = (X25519PrivateKey, X25519PublicKey, HKDF, hashes, Cipher, algorithms, modes, AESGCM)
    return _CRYPTO


def prg(seed: bytes, round_: int, receiver: str, count: int, out: np.ndarray | None = None) -> np.ndarray:
    """``count`` pseudo-random uint64 from a 32-byte seed, for one (round, receiver):
    AES-256-CTR keystream under HMAC-SHA256(seed, label | round | receiver).

    ``out`` (uint64, at least ``count + 2`` long) is written to and a view returned."""
    *_, Cipher, algorithms, modes, _aead = _crypto()
    key = hmac.new(seed, _MASK_LABEL + round_.to_bytes(8, "little") + receiver.encode(), hashlib.sha256).digest()
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    if out is None:
        out = np.empty(count + 2, dtype=np.uint64)
    zeros = _zeros(8 * count)
    encryptor.update_into(zeros, memoryview(out.view(np.uint8)))  # type: ignore[arg-type]  # needs 15 spare bytes
    mask = out[:count]
    return mask if np.little_endian else mask.byteswap()  # the keystream is little-endian uint64


_ZEROS = memoryview(bytes(0))


def _zeros(nbytes: int) -> memoryview:
    global _ZEROS
    if len(_ZEROS) < nbytes:
        _ZEROS = memoryview(bytes(nbytes))
    return _ZEROS[:nbytes]


def _pack(*fields: Any) -> bytes:
    """Canonical bytes of a signed or hashed statement (msgpack of a list)."""
    return msgpack.packb(list(fields), use_bin_type=True)  # type: ignore[no-any-return]


def key_statement(name: str, public: bytes) -> bytes:
    """What a member signs to advertise its ephemeral key."""
    return _pack(_KEY_LABEL, name, public)


def bundle_digest(receiver: str, keys: Mapping[str, bytes]) -> bytes:
    """SHA-256 of a receiver's neighbourhood's ephemeral keys: who masked with which keys."""
    return hashlib.sha256(_pack(_BUNDLE_LABEL, receiver, sorted(keys.items()))).digest()


def set_statement(receiver: str, round_: int, digest: bytes, dropped: Iterable[str]) -> bytes:
    """What the receiver and its neighbours sign: its one dropout set of a round."""
    return _pack(_SET_LABEL, receiver, round_, digest, sorted(dropped))


def share_aad(receiver: str, round_: int, sender: str, holder: str, digest: bytes) -> bytes:
    """Associated data of an encrypted share: it opens only for this slot."""
    return _pack(_SHARE_LABEL, receiver, round_, sender, holder, digest)


class SecAggKeys:
    """A member's long-term identity and its view of the members' signing public keys.

    Args:
        name: this node's name.
        identity: its Ed25519 signing key.
        signing_key_of: a member's Ed25519 public key (Z85), or None if unknown; asked on
            each use, so a reloaded consortium file takes effect.
    """

    def __init__(self, name: str, identity: Identity, signing_key_of: Callable[[str], str | None]) -> None:
        self.name = name
        self.identity = identity
        self._signing_key_of = signing_key_of
        self._publics: dict[str, Any] = {}  # Z85 -> Ed25519PublicKey of keys that verified once

    def sign(self, data: bytes) -> bytes:
        return self.identity.sign(data)

    def verify(self, member: str, data: bytes, signature: Any) -> bool:
        """Whether ``signature`` (from the network: any type) is ``member``'s on ``data``."""
        key = self._signing_key_of(member)
        if key is None or not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
            return False
        public = self._publics.get(key)
        if public is None:  # decoding a key costs as much as a check: once per key
            if not verify_signature(key, data, signature):
                return False
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
            from zmq.utils import z85

            self._publics[key] = Ed25519PublicKey.from_public_bytes(z85.decode(key.encode("ascii")))
            return True
        from cryptography.exceptions import InvalidSignature

        try:
            public.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_curve(cls, name: str, secret_z85: str, signing_key_of: Callable[[str], str | None]) -> SecAggKeys:
        """A deployed member: its identity derives from its Curve secret key; the others'
        signing keys come from ``consortium.toml``."""
        return cls(name, identity_from_curve(name, secret_z85), signing_key_of)


def generate_keys(names: Iterable[str]) -> dict[str, SecAggKeys]:
    """Fresh identities for every member, each knowing everyone's public key (simulation)."""
    identities = {name: new_identity(name) for name in names}
    publics = {name: identity.public for name, identity in identities.items()}
    return {name: SecAggKeys(name, identity, publics.get) for name, identity in identities.items()}


class EphemeralKey:
    """One run's X25519 key pair, its signed advertisement and the pair keys derived from it.

    Args:
        keys: the member's identity, which signs the advertisement.
    """

    def __init__(self, keys: SecAggKeys) -> None:
        from cryptography.hazmat.primitives import serialization

        private_cls, *_ = _crypto()
        self.name = keys.name
        self._private = private_cls.generate()
        self.public: bytes = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.signature = keys.sign(key_statement(self.name, self.public))
        self._pairs: dict[tuple[str, bytes], tuple[bytes, Any, bytes]] = {}

    def _pair(self, peer: str, peer_public: bytes) -> tuple[bytes, Any, bytes]:
        """(mask seed, AES-GCM, MAC key) shared with ``peer``'s ephemeral key; both ends
        derive the same."""
        cached = self._pairs.get((peer, peer_public))
        if cached is None:
            _, public_cls, hkdf_cls, hashes, *_, aesgcm_cls = _crypto()
            shared = self._private.exchange(public_cls.from_public_bytes(peer_public))
            (low, low_key), (high, high_key) = sorted(((self.name, self.public), (peer, peer_public)))
            info = _PAIR_INFO + low_key + high_key + _pack(low, high)
            material = hkdf_cls(algorithm=hashes.SHA256(), length=96, salt=None, info=info).derive(shared)
            cached = (material[:32], aesgcm_cls(material[32:64]), material[64:])
            self._pairs[(peer, peer_public)] = cached
        return cached

    def mask_seed(self, peer: str, peer_public: bytes) -> bytes:
        return self._pair(peer, peer_public)[0]

    def endorse(self, peer: str, peer_public: bytes, statement: bytes) -> bytes:
        """HMAC-SHA256 tag that only ``peer`` (and we) can make: our endorsement, for it."""
        return hmac.new(self._pair(peer, peer_public)[2], _ENDORSE_LABEL + statement, hashlib.sha256).digest()

    def check_endorsement(self, peer: str, peer_public: bytes, statement: bytes, tag: Any) -> bool:
        return isinstance(tag, bytes) and hmac.compare_digest(self.endorse(peer, peer_public, statement), tag)

    def encrypt(self, peer: str, peer_public: bytes, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._pair(peer, peer_public)[1].encrypt(nonce, plaintext, aad)  # type: ignore[no-any-return]

    def decrypt(self, peer: str, peer_public: bytes, blob: bytes, aad: bytes) -> bytes | None:
        """The plaintext, or None when ``blob`` was not made for this slot (or was altered)."""
        from cryptography.exceptions import InvalidTag

        try:
            return self._pair(peer, peer_public)[1].decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)  # type: ignore[no-any-return]
        except (InvalidTag, ValueError):
            return None

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Drop pair keys of peers ``keep`` refuses (bounded memory under key churn)."""
        for pair in [p for p in self._pairs if not keep(p[0])]:
            del self._pairs[pair]


def valid_public(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == KEY_BYTES
