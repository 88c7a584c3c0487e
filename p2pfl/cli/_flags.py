"""Command-line flags generated from the settings schema (:mod:`p2pfl.settings`)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from p2pfl.settings import describe


def add_setting_flags(
    parser: argparse.ArgumentParser, config_class: type, keys: Iterable[str] | None = None,
    *, defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """Add ``--key`` (``_`` as ``-``) for each setting of ``config_class``; returns the dests.

    Help and the default shown come from the schema. A flag's own default is None (so
    the caller can tell "not given" from "given"), unless ``defaults`` names one. A bool
    becomes ``--key/--no-key``; a tuple a repeatable flag.
    """
    defaults = defaults or {}
    hints = typing.get_type_hints(config_class)
    names = list(keys) if keys is not None else [f.name for f in dataclasses.fields(config_class)]
    for key in names:
        kind = _without_none(hints[key])
        shown = {"default": defaults[key]} if key in defaults else {}
        text = describe(config_class, key, **shown).replace("%", "%%")  # argparse formats help with %
        flag = "--" + key.replace("_", "-")
        default = defaults.get(key)
        if kind is bool:
            parser.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, dest=key, action="append", default=default, help=text)
        else:
            parser.add_argument(flag, dest=key, type=kind, default=default, help=text)
    return names


def _without_none(hint: Any) -> Any:
    """``int`` for ``int | None``; other types as they are."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(t for t in typing.get_args(hint) if t is not type(None))
    return hint
