"""Member identity: an Ed25519 signing key derived from the member's Curve secret key.

CurveZMQ authenticates a link, but what it proves cannot be shown to a third party: a
member cannot prove to c what b told it. Statements that must travel further (a secure
aggregation receiver's dropout set, a presence announcement on an MQTT broker anyone may
read) are signed with Ed25519. The signing key is derived from the Curve secret key with
HKDF, so a member keeps one secret file; its public half is listed in ``consortium.toml``
beside the Curve key (``signing_key``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zmq.utils import z85

from p2pfl.errors import ConfigError

__all__ = ["Identity", "identity_from_curve", "new_identity", "verify_signature"]

_HKDF_SALT = b"p2pfl member identity"
_HKDF_INFO = b"p2pfl ed25519 signing key v1"
_KEY_CHARS = 40  # Z85 text of 32 bytes


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - the extra is part of every documented install
        raise ConfigError(
            "signing_key", "signing needs the 'cryptography' package: pip install 'p2pfl-gossip[secagg]'"
        ) from None
    return ed25519


@dataclass(frozen=True)
class Identity:
    """A member's signing key pair.

    Attributes:
        name: the member's name.
        public: the Ed25519 public key as Z85 text (40 characters).
    """

    name: str
    public: str
    _private: Any = field(repr=False, compare=False)

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature of ``data``."""
        return bytes(self._private.sign(data))


def _from_seed(name: str, seed: bytes) -> Identity:
    from cryptography.hazmat.primitives import serialization

    private = _ed25519().Ed25519PrivateKey.from_private_bytes(seed)
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Identity(name=name, public=z85.encode(raw).decode("ascii"), _private=private)


def identity_from_curve(name: str, curve_secret_z85: str) -> Identity:
    """The member's identity, derived from its Curve secret key (the same on every call)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    secret = z85.decode(curve_secret_z85.encode("ascii"))
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO).derive(secret)
    return _from_seed(name, seed)


def new_identity(name: str) -> Identity:
    """A fresh random identity (simulations without Curve keys)."""
    import os

    return _from_seed(name, os.urandom(32))


def verify_signature(public_z85: str, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public_z85``'s Ed25519 signature of ``data``; never raises
    for malformed keys or signatures (they come from the network): those are just False."""
    from cryptography.exceptions import InvalidSignature

    if not isinstance(public_z85, str) or len(public_z85) != _KEY_CHARS or len(signature) != 64:
        return False
    try:
        public = _ed25519().Ed25519PublicKey.from_public_bytes(z85.decode(public_z85.encode("ascii")))
        public.verify(signature, data)
    except (InvalidSignature, ValueError, UnicodeEncodeError):
        return False
    return True
