"""``p2pfl watch`` without a broker: its help, --consortium files, the change log."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from p2pfl.cli.main import build_parser
from p2pfl.cli.watch import DEFAULT_BROKER, ChangeLog, resolve_consortium
from p2pfl.discovery import VISIBLE_STATES, MemberStatus
from p2pfl.errors import ConfigError


def test_help_explains_every_state(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["watch", "--help"])
    text = capsys.readouterr().out
    for state in VISIBLE_STATES:
        assert f"\n  {state} " in text, state
    assert "consortium.toml" in text


def test_consortium_is_a_name_or_a_file(tmp_path: Path) -> None:
    assert resolve_consortium("walkthrough", None) == ("walkthrough", DEFAULT_BROKER)
    assert resolve_consortium("walkthrough", "mqtt://b:1") == ("walkthrough", "mqtt://b:1")
    bundle = tmp_path / "charite"
    bundle.mkdir()
    (bundle / "consortium.toml").write_text('name = "curve"\ntopology = "t.graphml"\n')
    assert resolve_consortium(str(bundle / "consortium.toml"), None) == ("curve", DEFAULT_BROKER)
    (bundle / "node.toml").write_text(
        'name = "charite"\nbind = "tcp://0.0.0.0:1"\nconsortium = "consortium.toml"\ndiscovery = "mqtt://h:2"\n'
    )
    for file in ("consortium.toml", "node.toml"):  # the broker from the bundle's node.toml
        assert resolve_consortium(str(bundle / file), None) == ("curve", "mqtt://h:2")
        assert resolve_consortium(str(bundle / file), "mqtt://mine:3") == ("curve", "mqtt://mine:3")
    (tmp_path / "desc.toml").write_text('name = "curve"\n[training]\ndiscovery = "mqtt://d:4"\n')
    assert resolve_consortium(str(tmp_path / "desc.toml"), None) == ("curve", "mqtt://d:4")
    (tmp_path / "other.toml").write_text('rounds = 3\n')
    with pytest.raises(ConfigError, match="--consortium: .*other.toml names no consortium"):
        resolve_consortium(str(tmp_path / "other.toml"), None)
    with pytest.raises(ConfigError, match="--consortium: file .* does not exist"):
        resolve_consortium("missing.toml", None)


def member(state: str, round: int | None, accuracy: float | None = None) -> MemberStatus:
    return MemberStatus("charite", state, "tcp://h:1", "fp", round, accuracy, updated=0.0)


def test_change_log_writes_only_what_changed() -> None:
    out = io.StringIO()
    log = ChangeLog(out)
    for snapshot in (
        {"charite": member("online", None)},
        {"charite": member("online", 5, 0.91)},
        {"charite": member("online", 5, 0.91)},  # e.g. re-announced after a reconnection
        {"charite": member("finished", 5, 0.91)},
        {},
    ):
        log.update(snapshot)
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [
        "charite online", "charite online round 5 accuracy 0.9100", "charite finished round 5 accuracy 0.9100",
        "charite removed",
    ]
