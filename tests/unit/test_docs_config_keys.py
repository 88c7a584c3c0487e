"""docs/reference/config.md documents every settings key with the schema's default.

The page has one ``| key | default | meaning |`` table per config: the experiment file
(:class:`ExperimentConfig`), ``node.toml`` (:class:`OrgNodeConfig`) and the consortium
description's ``[training]`` (:class:`TrainingSettings`). Each table must list every
field of its config, no other key, and give the default the config really has, so the
page cannot drift from ``p2pfl/settings/``.

A default cell is accepted when it is

- ``required``, for a field without a default or whose default the schema refuses
  (``learner = ""`` is "missing");
- the default as ``--help`` shows it (:func:`p2pfl.settings.describe`), e.g. ``no files``;
- a TOML value equal to the field's default, e.g. ``"ring"``, ``60.0``, ``[]``.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from p2pfl.consortium.description import TrainingSettings
from p2pfl.deploy.config import OrgNodeConfig
from p2pfl.errors import ConfigError
from p2pfl.settings import describe, setting_of
from p2pfl.simulation.config import ExperimentConfig

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "config.md"

#: heading (as written after the #'s) -> the config its key table documents
TABLES: dict[str, type] = {
    "Experiment keys (`p2pfl simulate`)": ExperimentConfig,
    "node.toml": OrgNodeConfig,
    "`[training]`": TrainingSettings,
}

_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*$", re.M)
_TABLE_HEAD = re.compile(r"^\|\s*key\s*\|\s*default\s*\|\s*meaning\s*\|\s*$")
_SHOWN = re.compile(r"\((?:default: (.*)|required)\)$")


def _cells(line: str) -> list[str]:
    # a table row: | a | b | c |; cells hold no "|" on this page
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def key_table(text: str, heading: str) -> dict[str, str]:
    """The ``| key | default | meaning |`` table under ``heading``: key -> default cell."""
    sections = {m.group(1): m.end() for m in _HEADING.finditer(text)}
    assert heading in sections, f"config.md has no heading {heading!r}"
    start = sections[heading]
    following = [pos for pos in (m.start() for m in _HEADING.finditer(text)) if pos > start]
    body = text[start : min(following, default=len(text))].splitlines()
    head = next((i for i, line in enumerate(body) if _TABLE_HEAD.match(line)), None)
    assert head is not None, f"no | key | default | meaning | table under {heading!r}"
    rows: dict[str, str] = {}
    for line in body[head + 2 :]:  # past the |---| line
        if not line.startswith("|"):
            break
        key, default, _meaning = _cells(line)
        match = re.fullmatch(r"`([a-z_]+)`", key)
        assert match, f"{heading}: a key cell must be one `key`, got {key!r}"
        assert match.group(1) not in rows, f"{heading}: {key} documented twice"
        rows[match.group(1)] = default
    return rows


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _refused(field: dataclasses.Field[Any], value: Any) -> bool:
    spec = setting_of(field)
    assert spec is not None
    try:
        return spec.problem(value) is not None
    except ConfigError:
        return True


def _as_toml(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def documented_default_matches(config: type, field: dataclasses.Field[Any], cell: str) -> bool:
    cell = cell.replace("`", "").strip()
    default = _default(field)
    if default is dataclasses.MISSING or _refused(field, default):
        return cell == "required"
    shown = _SHOWN.search(describe(config, field.name))
    if shown is not None and cell == shown.group(1):
        return True
    try:
        value = tomllib.loads(f"v = {cell}")["v"]
    except tomllib.TOMLDecodeError:
        return False
    default = _as_toml(default)
    if isinstance(value, bool) or isinstance(default, bool):  # true is not 1
        return value is default
    if isinstance(value, (int, float)) and isinstance(default, (int, float)):
        return value == default  # 60 documents 60.0
    return type(value) is type(default) and value == default


TEXT = PAGE.read_text(encoding="utf-8")


@pytest.mark.parametrize("heading", TABLES, ids=[c.__name__ for c in TABLES.values()])
def test_every_key_is_documented_and_no_other(heading: str) -> None:
    config = TABLES[heading]
    documented = set(key_table(TEXT, heading))
    fields = {f.name for f in dataclasses.fields(config) if setting_of(f) is not None}
    assert fields == {f.name for f in dataclasses.fields(config)}, "every config field comes from the schema"
    assert not fields - documented, f"{config.__name__} keys missing from config.md: {sorted(fields - documented)}"
    assert not documented - fields, f"config.md documents unknown {config.__name__} keys: {sorted(documented - fields)}"


@pytest.mark.parametrize("heading", TABLES, ids=[c.__name__ for c in TABLES.values()])
def test_documented_defaults_are_the_schemas(heading: str) -> None:
    config = TABLES[heading]
    table = key_table(TEXT, heading)
    wrong = [
        f"{field.name}: documented {table[field.name]!r}, schema {describe(config, field.name)!r}"
        for field in dataclasses.fields(config)
        if field.name in table and not documented_default_matches(config, field, table[field.name])
    ]
    assert not wrong, f"config.md ({heading}) defaults differ from p2pfl/settings:\n" + "\n".join(wrong)


def test_the_check_catches_a_wrong_default() -> None:
    field = next(f for f in dataclasses.fields(ExperimentConfig) if f.name == "round_timeout")
    assert documented_default_matches(ExperimentConfig, field, "`60.0`")
    assert documented_default_matches(ExperimentConfig, field, "60")
    assert not documented_default_matches(ExperimentConfig, field, "`30.0`")
    assert not documented_default_matches(ExperimentConfig, field, "required")
    learner = next(f for f in dataclasses.fields(OrgNodeConfig) if f.name == "learner")
    assert documented_default_matches(OrgNodeConfig, learner, "required")
    assert not documented_default_matches(OrgNodeConfig, learner, '`""`')
