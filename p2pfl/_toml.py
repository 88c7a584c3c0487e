"""TOML files in and out: read one into checked dataclasses, write the ones we generate.

Reading: a missing or malformed file, an unknown key or a bad value raises
:class:`~p2pfl.errors.ConfigError` naming the dotted key at fault (``members[2].port``).

Writing: the standard library reads TOML but cannot write it, and the files we write
(``consortium init``'s) are simple (scalars, inline tables, one array of tables), so a
few lines beat a dependency.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from p2pfl.config import config_from_mapping
from p2pfl.errors import ConfigError

__all__ = ["build", "dumps", "message", "read_toml", "table"]

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


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dumps(document: Mapping[str, Any]) -> str:
    """Render ``document`` as TOML text.

    Mappings are written as inline tables (``learner_args = { index = 0 }``); a
    top-level value that is a list of mappings becomes an array of tables
    (``[[members]]``) after all other keys, as TOML requires.

    Raises:
        TypeError: a value TOML cannot hold (None, arbitrary objects).
    """
    lines: list[str] = []
    arrays: list[tuple[str, Sequence[Mapping[str, Any]]]] = []
    for key, value in document.items():
        if _is_table_array(value):
            arrays.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, rows in arrays:
        for row in rows:
            lines.append("")
            lines.append(f"[[{_key(key)}]]")
            lines.extend(f"{_key(k)} = {_value(v)}" for k, v in row.items())
    return "\n".join(lines) + "\n"


def _is_table_array(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) > 0
        and all(isinstance(item, Mapping) for item in value)
    )


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _value(value: Any) -> str:
    # bool before int: bool is a subclass of int
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are a subset of TOML basic-string escapes
        return json.dumps(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return (
            "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
        )
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"TOML cannot hold {type(value).__name__} values")
