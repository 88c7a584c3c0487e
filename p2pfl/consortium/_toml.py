"""A small TOML writer for the files ``p2pfl consortium init`` produces.

The standard library reads TOML but cannot write it, and the files we write are
simple (scalars, inline tables, one array of tables), so a few lines beat a dependency.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["dumps"]

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
