"""Secure aggregation's keys: each pair of members derives a shared seed, and from it masks.

X25519 key agreement run through HKDF gives each pair ``(j, k)`` a 32-byte seed; the
mask of a (round, receiver) is AES-256 in counter mode under a key derived from it with
HMAC-SHA256 (see :mod:`p2pfl.privacy.secagg` for how masks are used).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable

import numpy as np

from p2pfl.errors import ConfigError, NodeError

_HKDF_INFO = b"p2pfl secagg v1 pairwise mask seed"
_MASK_LABEL = b"p2pfl secagg v1 mask"


_CRYPTO: tuple | None = None  # type: ignore[type-arg]


def _crypto():  # type: ignore[no-untyped-def]
    global _CRYPTO
    if _CRYPTO is not None:
        return _CRYPTO
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "secure_aggregation", "needs the 'cryptography' package: pip install cryptography"
        ) from None
    _CRYPTO = (X25519PrivateKey, X25519PublicKey, HKDF, hashes, Cipher, algorithms, modes)
    return _CRYPTO


def prg(seed: bytes, round_: int, receiver: str, count: int, out: np.ndarray | None = None) -> np.ndarray:
    """``count`` pseudo-random uint64 from a pair's seed, for one (round, receiver):
    AES-256-CTR keystream under HMAC-SHA256(seed, label | round | receiver).

    ``out`` (uint64, at least ``count + 2`` long) is written to and a view returned."""
    *_, Cipher, algorithms, modes = _crypto()
    key = hmac.new(seed, _MASK_LABEL + round_.to_bytes(8, "little") + receiver.encode(), hashlib.sha256).digest()
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    if out is None:
        out = np.empty(count + 2, dtype=np.uint64)
    zeros = _zeros(8 * count)
    written = encryptor.update_into(zeros, memoryview(out.view(np.uint8)))  # type: ignore[arg-type]  # needs 15 spare bytes
    assert written == 8 * count
    mask = out[:count]
    return mask if np.little_endian else mask.byteswap()  # the keystream is little-endian uint64


_ZEROS = memoryview(bytes(0))


def _zeros(nbytes: int) -> memoryview:
    global _ZEROS
    if len(_ZEROS) < nbytes:
        _ZEROS = memoryview(bytes(nbytes))
    return _ZEROS[:nbytes]


class SecAggKeys:
    """A node's X25519 key and its view of the others' public keys.

    Args:
        name: this node's name.
        secret: its 32-byte X25519 secret, raw or Z85 text (a CurveZMQ secret key is one).
        public_key_of: a member's public key (raw or Z85), or None if unknown; asked on
            each use, so a reloaded allow-list takes effect (seeds are cached per key).
    """

    def __init__(self, name: str, secret: bytes | str, public_key_of: Callable[[str], bytes | str | None]) -> None:
        private_cls, *_ = _crypto()
        self.name = name
        self._private = private_cls.from_private_bytes(_raw_key(secret, "secret key"))
        self._public_key_of = public_key_of
        self._seeds: dict[tuple[str, bytes], bytes] = {}

    @property
    def public_key(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def seed(self, peer: str) -> bytes:
        """The 32-byte seed this node shares with ``peer`` (both derive the same)."""
        _, public_cls, hkdf_cls, hashes, *_ = _crypto()
        key = self._public_key_of(peer)
        if key is None:
            raise NodeError(f"secure aggregation: no public key for {peer!r}")
        raw = _raw_key(key, f"public key of {peer!r}")
        cached = self._seeds.get((peer, raw))
        if cached is None:
            shared = self._private.exchange(public_cls.from_public_bytes(raw))
            low, high = sorted((self.name, peer))
            info = _HKDF_INFO + b"\x00" + low.encode() + b"\x00" + high.encode()
            cached = hkdf_cls(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)
            self._seeds[(peer, raw)] = cached
        return cached

    @classmethod
    def from_curve(cls, name: str, secret_z85: str, public_key_of: Callable[[str], str | None]) -> SecAggKeys:
        """From a CurveZMQ key pair and an allow-list lookup (Curve keys are X25519 keys)."""
        return cls(name, secret_z85, public_key_of)


def generate_keys(names: Iterable[str]) -> dict[str, SecAggKeys]:
    """Fresh X25519 keys for every member, each knowing everyone's public key (simulation)."""
    private_cls, *_ = _crypto()
    secrets = {name: private_cls.generate().private_bytes_raw() for name in names}
    keys: dict[str, SecAggKeys] = {}
    publics: dict[str, bytes] = {}
    for name, secret in secrets.items():
        keys[name] = SecAggKeys(name, secret, publics.get)
        publics[name] = keys[name].public_key
    return keys


def _raw_key(key: bytes | str, what: str) -> bytes:
    if isinstance(key, bytes) and len(key) == 32:
        return key
    from zmq.utils import z85

    text = key.encode("ascii") if isinstance(key, str) else key
    try:
        raw = z85.decode(text)
    except Exception:
        raise NodeError(f"secure aggregation: {what} is neither 32 raw bytes nor Z85 text") from None
    if len(raw) != 32:
        raise NodeError(f"secure aggregation: {what} decodes to {len(raw)} bytes, not 32")
    return raw
