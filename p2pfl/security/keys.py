"""CurveZMQ key pairs: generate, store, load and show them safely.

Keys are Z85 text (40 characters for 32 bytes), the form ZeroMQ's socket options take.
Files use the ZPL certificate layout of czmq/pyzmq (``<name>.key`` public,
``<name>.key_secret`` secret), so ``zmq.auth.load_certificate`` and our readers accept
each other's files; a file holding just the bare Z85 key is accepted too.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from zmq.utils import z85

from p2pfl._files import write_atomically
from p2pfl.errors import ConfigError

__all__ = [
    "KeyPair",
    "fingerprint",
    "generate_keypair",
    "read_public_key",
    "read_secret_key",
    "validate_key",
    "write_keypair",
]

_KEY_CHARS = 40  # Z85 text of a 32-byte Curve25519 key

_PUBLIC_BANNER = """#   ZeroMQ CURVE Public Certificate (written by p2pfl)
#   Give this file to the other members; it is safe to publish.

"""
_SECRET_BANNER = """#   ZeroMQ CURVE **Secret** Certificate (written by p2pfl)
#   Never share this file or loosen its permissions (it must stay mode 600).

"""


@dataclass(frozen=True)
class KeyPair:
    """A node's Curve key pair as Z85 text.

    Attributes:
        public: the public key; peers put it on their allow-list.
        secret: the secret key; hidden from ``repr`` so it never lands in a log line.
    """

    public: str
    secret: str = field(repr=False)


def generate_keypair() -> KeyPair:
    """A fresh random Curve25519 key pair."""
    public, secret = zmq.curve_keypair()
    return KeyPair(public=public.decode("ascii"), secret=secret.decode("ascii"))


def validate_key(key: str | bytes, what: str = "public key") -> str:
    """Return ``key`` as Z85 text after checking it is a well-formed 32-byte key.

    Raises:
        ConfigError: it is not 40 characters of Z85.
    """
    text = key.decode("ascii", "replace") if isinstance(key, bytes) else key
    if not isinstance(text, str) or len(text) != _KEY_CHARS:
        raise ConfigError(what, f"a Curve key is {_KEY_CHARS} characters of Z85 text, got {_describe(text)}")
    try:
        raw = z85.decode(text.encode("ascii"))
    except Exception:  # z85 raises KeyError/ValueError/UnicodeError on foreign characters
        raise ConfigError(what, "a Curve key is Z85 text; this one has characters outside Z85") from None
    if len(raw) != 32:
        raise ConfigError(what, f"a Curve key decodes to 32 bytes, this one to {len(raw)}")
    return text


def fingerprint(public_key: str | bytes) -> str:
    """A short, stable, human-comparable id of a public key, e.g. ``ab12:cd34:ef56:7890``.

    The first 64 bits of the SHA-256 of the raw key: enough to compare keys by eye or
    over the phone, and safe to log (unlike the key itself, it is not usable on the wire).
    """
    raw = z85.decode(validate_key(public_key).encode("ascii"))
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return ":".join(digest[i : i + 4] for i in range(0, 16, 4))


def write_keypair(
    directory: str | os.PathLike[str], name: str, keypair: KeyPair | None = None, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``<name>.key`` (public, mode 644) and ``<name>.key_secret`` (mode 600).

    Args:
        directory: where to write (created, mode 700, if missing).
        name: file stem, usually the node's name.
        keypair: the pair to store; a fresh one if ``None``.
        overwrite: replace existing files; off by default because a replaced secret
            key locks the node out of every peer that allow-listed the old one.

    Returns:
        (public file, secret file).

    Raises:
        ConfigError: the files exist and ``overwrite`` is off, or ``name`` is not a
            plain file name.
    """
    if not name or Path(name).name != name or name in (".", ".."):
        raise ConfigError("name", f"key name {name!r} must be a plain file name (no directories)")
    keypair = keypair or generate_keypair()
    validate_key(keypair.public)
    validate_key(keypair.secret, "secret key")
    folder = Path(directory)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_path = folder / f"{name}.key"
    secret_path = folder / f"{name}.key_secret"
    if not overwrite:
        for path in (public_path, secret_path):
            if path.exists():
                raise ConfigError(
                    str(path), "exists; pass overwrite=True (or delete it) to replace this key pair"
                )
    public_text = f'{_PUBLIC_BANNER}metadata\ncurve\n    public-key = "{keypair.public}"\n'
    secret_text = (
        f'{_SECRET_BANNER}metadata\ncurve\n    public-key = "{keypair.public}"\n'
        f'    secret-key = "{keypair.secret}"\n'
    )
    # Secret first: a crash in between leaves a usable secret and no stray public key.
    write_atomically(secret_path, secret_text, mode=0o600)  # never readable by others, not even briefly
    write_atomically(public_path, public_text, mode=0o644)
    return public_path, secret_path


def read_public_key(path: str | os.PathLike[str]) -> str:
    """The public key (Z85) stored in a certificate or bare-key file.

    Raises:
        ConfigError: the file cannot be read or holds no valid public key.
    """
    fields = _read_fields(Path(path))
    key = fields.get("public-key") or fields.get("")
    if key is None:
        raise ConfigError(str(path), "holds no public key (expected a 'public-key = \"...\"' line)")
    return validate_key(key, f"{path}: public key")


def read_secret_key(path: str | os.PathLike[str]) -> KeyPair:
    """Load a secret key file and return the full key pair.

    The public key is derived from the secret one (and must match the file's
    ``public-key`` line, when it has one), so a mismatched pair cannot be loaded.

    Raises:
        ConfigError: the file is readable by group or others (fix: ``chmod 600``), holds
            no valid secret key, or its public key does not belong to its secret key.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read secret key file: {exc.strerror}") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            str(path),
            f"secret key file has mode {stat.S_IMODE(mode):o}, open to group/others; "
            f"run 'chmod 600 {path}' and consider the key leaked if others could read it",
        )
    fields = _read_fields(path)
    secret = fields.get("secret-key") or (fields.get("") if "public-key" not in fields else None)
    if secret is None:
        raise ConfigError(str(path), "holds no secret key (expected a 'secret-key = \"...\"' line)")
    secret = validate_key(secret, f"{path}: secret key")
    public = zmq.curve_public(secret.encode("ascii")).decode("ascii")
    stated = fields.get("public-key")
    if stated is not None and stated != public:
        raise ConfigError(
            str(path), "its public-key line does not belong to its secret key; regenerate the pair"
        )
    return KeyPair(public=public, secret=secret)


def _read_fields(path: Path) -> dict[str, str]:
    """``public-key``/``secret-key`` values of a ZPL certificate; key ``""`` for a bare key."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise ConfigError(str(path), f"cannot read key file: {reason}") from None
    fields: dict[str, str] = {}
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and name.strip() in ("public-key", "secret-key"):
            fields[name.strip()] = value.strip().strip("'\" \t")
    if not fields and len(lines) == 1:
        fields[""] = lines[0]
    return fields


def _describe(value: object) -> str:
    # never echo the value: it may be a secret key
    if isinstance(value, str):
        return f"{len(value)} characters"
    return type(value).__name__
