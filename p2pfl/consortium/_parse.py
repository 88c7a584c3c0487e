"""Shared parsing helpers: TOML files into checked dataclasses, errors naming dotted keys."""

from __future__ import annotations

import dataclasses
import difflib
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from p2pfl.config import config_from_mapping
from p2pfl.errors import ConfigError

C = TypeVar("C")


def read_toml(path: Path, field: str) -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable or malformed file raises ConfigError(field)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(field, f"file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:  # a directory, no permission, not text
        raise ConfigError(field, f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(field, f"{path} is not valid TOML: {exc}") from None


def build(cls: type[C], values: Any, prefix: str, *, tables: tuple[str, ...] = ()) -> C:
    """``config_from_mapping`` with keys reported as ``prefix + key``; keys in ``tables`` are skipped.

    Unknown keys are checked here, not by ``config_from_mapping``, so that the list of
    valid keys it prints includes the sub-tables.
    """
    values = table(values, prefix.rstrip(".") or "file")
    known = [f.name for f in dataclasses.fields(cls)] + list(tables)  # type: ignore[arg-type]
    for key in values:
        if key.replace("-", "_") not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{prefix}{key}", f"unknown key{hint}; valid keys: {', '.join(sorted(known))}")
    try:
        return config_from_mapping(cls, {k: v for k, v in values.items() if k not in tables})
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc.field}", message(exc)) from None


def table(value: Any, where: str) -> dict[str, Any]:
    """``value`` if it is a TOML table, else ConfigError(where)."""
    if not isinstance(value, dict):
        raise ConfigError(where, f"must be a table, got {type(value).__name__}")
    return value


def message(exc: ConfigError) -> str:
    """The message of ``exc`` without its ``field: `` prefix."""
    return str(exc)[len(exc.field) + 2 :]


def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` through a temporary file renamed into place.

    Running nodes re-read consortium.toml when it changes; a rename means they see the
    old file or the new one, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
