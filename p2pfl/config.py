"""Typed configs from TOML files and ``key=value`` overrides.

TOML keys equal dataclass field names. An unknown key, a value of the wrong type or a
value the dataclass's own validation refuses raises :class:`~p2pfl.errors.ConfigError`
naming the key and what would be valid.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from p2pfl.errors import ConfigError
from p2pfl.settings import setting_of

C = TypeVar("C")


def config_from_mapping(cls: type[C], values: Mapping[str, Any], *, base: C | None = None) -> C:
    """Build ``cls`` from ``values`` (on top of ``base`` if given), checking every key.

    Raises:
        ConfigError: unknown key, wrong type, or a value the config's validation refuses.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    converted: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(key, f"unknown key{hint}; valid keys: {', '.join(sorted(fields))}")
        value = _coerce(name, value, hints[name])
        spec = setting_of(fields[name])
        converted[name] = spec.parse(value) if spec is not None and spec.parse is not None else value
    if base is not None:
        return dataclasses.replace(base, **converted)  # type: ignore[type-var]
    return cls(**converted)


def load_toml(
    cls: type[C], path: str | Path, *, base: C | None = None, overrides: Mapping[str, Any] | None = None
) -> C:
    """Read a TOML file into ``cls`` (``overrides`` win); errors name the file and the key."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("config", f"file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:  # a directory, no permission, not text
        raise ConfigError("config", f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    try:
        return config_from_mapping(cls, {**values, **(overrides or {})}, base=base)
    except ConfigError as exc:
        raise ConfigError(exc.field, f"{exc.args[0].split(': ', 1)[1]} (in {path})") from None


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["rounds=10", "lr=0.1"]`` into a mapping; values are parsed as TOML scalars."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(item, "an override must look like key=value, e.g. rounds=10")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # bare words are strings: topology=ring
        # TOML dates and times stay text: out=2024-05-01 names a directory
        values[key.strip()] = raw.strip() if isinstance(value, (datetime.date, datetime.time)) else value
    return values


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data (for saving next to results)."""
    return dataclasses.asdict(config)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    options = _union_members(hint)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) in (tuple, list) and isinstance(value, (list, tuple)):
            return tuple(value)
        if typing.get_origin(option) in (tuple, list) and typing.get_args(option)[:1] == (str,) \
                and isinstance(value, str):
            return (value,)  # one entry given as a plain string: fail = "node=3,round=10"
        if typing.get_origin(option) is dict and isinstance(value, dict):
            return dict(value)
    for option in options:  # strings from the command line: "10" for an int field
        if isinstance(value, str) and option in (int, float):
            try:
                return option(value)
            except ValueError:
                pass
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(name, f"expected {names}, got {value!r}")


def _union_members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)
