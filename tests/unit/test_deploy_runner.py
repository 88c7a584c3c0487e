"""Pieces of the organisation node process that need no sockets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import UTC, datetime

import pytest

from p2pfl.consortium import load_consortium
from p2pfl.deploy import membership as deploy_membership
from p2pfl.deploy import runner
from p2pfl.deploy.config import load_node_config
from p2pfl.deploy.learner_loader import build_learner
from p2pfl.deploy.membership import NeighbourListSchedule, load_membership, watch_membership
from p2pfl.deploy.recorder import RoundRecorder, write_stats
from p2pfl.errors import ConfigError
from p2pfl.node.peers import StartCondition
from p2pfl.security import AllowList, generate_keypair, read_secret_key
from p2pfl.testing import tiny_learner


def test_start_conditions_parse_and_hold():
    assert StartCondition.parse("all").holds(present=2, neighbours=2)
    assert not StartCondition.parse("all").holds(present=1, neighbours=2)
    assert StartCondition.parse("min:1").holds(present=1, neighbours=3)
    assert StartCondition.parse("min:5").holds(present=3, neighbours=3)  # capped at the degree
    assert StartCondition.parse("none").holds(present=0, neighbours=4)
    at = StartCondition.parse("at:2030-01-01T00:00:00Z")
    assert not at.holds(0, 1, now=datetime(2029, 12, 31, tzinfo=UTC))
    assert at.holds(0, 1, now=datetime(2030, 1, 1, 0, 0, 1, tzinfo=UTC))
    for bad in ("some", "min:x", "at:yesterday", "all:3"):
        with pytest.raises(ConfigError) as info:
            StartCondition.parse(bad)
        assert info.value.field == "start"


def test_neighbour_list_schedule_weights_uniformly():
    plan = NeighbourListSchedule("a", ("c", "b")).plan("a", 7)
    assert plan.send_to == ("b", "c")
    assert dict(plan.weights) == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})


def test_round_recorder_writes_the_line_then_the_checkpoint_and_trims_on_resume(tmp_path):
    from p2pfl.deploy.checkpoint import load_checkpoint
    from p2pfl.node.node import RoundMetrics

    learner = tiny_learner(0)
    recorder = RoundRecorder(tmp_path, "a", learner)
    for round_ in range(3):
        recorder(RoundMetrics("a", round_, 0.5, 0.4, 0.9, 10, 10, 0.1, ("b",), ()))
    assert load_checkpoint(tmp_path, "a").round == 2
    recorder.trim(1)  # e.g. killed after writing round 2's line but before its checkpoint
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1]


def test_a_checkpoint_of_another_node_is_refused(tmp_path):
    from p2pfl.deploy.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path, "a", 3, tiny_learner(0))
    with pytest.raises(ConfigError, match="own state_dir"):
        load_checkpoint(tmp_path, "b")


def test_temporary_files_of_killed_saves_are_removed_at_start_unless_a_writer_holds_them(tmp_path):
    import fcntl

    from p2pfl.deploy.checkpoint import load_checkpoint, remove_stale_temp_files, save_checkpoint

    save_checkpoint(tmp_path, "a", 3, tiny_learner(0))
    stale = [tmp_path / ".checkpoint.pt.k1ll3d", tmp_path / ".final_model.pt.k1ll3d"]
    for path in stale:
        path.write_bytes(b"PK\x03\x04 half written")
    others = [tmp_path / ".hidden", tmp_path / "metrics.jsonl", tmp_path / "checkpoint.pt"]
    for path in others[:2]:
        path.write_text("keep")
    live = tmp_path / ".checkpoint.pt.writing"  # a save in progress holds its lock
    fd = os.open(live, os.O_CREAT | os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert load_checkpoint(tmp_path, "a").round == 3  # what a starting node calls
        assert not any(path.exists() for path in stale)
        assert all(path.exists() for path in [*others, live])
    finally:
        os.close(fd)  # the writer is gone: its file is garbage now
    assert remove_stale_temp_files(tmp_path) == [live]
    save_checkpoint(tmp_path, "a", 4, tiny_learner(0))  # saving leaves no temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "checkpoint.pt", "metrics.jsonl"]


async def test_membership_reloads_when_the_file_changes_and_on_sighup(tmp_path, monkeypatch):
    monkeypatch.setattr(deploy_membership, "RELOAD_POLL_SECONDS", 0.05)
    members = tmp_path / "members.json"
    keys = {name: generate_keypair().public for name in "abc"}
    members.write_text(json.dumps({n: keys[n] for n in "ab"}))
    allowlist = AllowList(lambda: json.loads(members.read_text()))
    changed = asyncio.Event()
    task = asyncio.create_task(watch_membership(allowlist, members, lambda names: changed.set()))
    try:
        await asyncio.sleep(0)  # let the task install its SIGHUP handler  # ok-sleep: one loop turn
        members.write_text(json.dumps(keys))  # "c" joins
        os.utime(members, (1, 1))  # a different mtime even on coarse clocks
        async with asyncio.timeout(10):
            await changed.wait()
        assert "c" in allowlist.names
        changed.clear()
        members.write_text(json.dumps({n: keys[n] for n in "ac"}))  # "b" revoked, same mtime
        os.utime(members, (1, 1))
        os.kill(os.getpid(), signal.SIGHUP)
        async with asyncio.timeout(10):
            await changed.wait()
        assert allowlist.names == {"a", "c"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_static_topology_file_is_relative_to_node_toml_not_the_working_directory(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "ab.edges").write_text("a b\n")
    (site / "node.toml").write_text(
        'name = "a"\nbind = "tcp://127.0.0.1:0"\nlearner = "mod:build"\ninsecure = true\n'
        'topology = "ab.edges"\n[peers]\nb = "tcp://127.0.0.1:7999"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config, base = load_node_config(site / "node.toml")
    membership = load_membership(config, base)
    assert membership.schedule.peers("a") == ("b",)


# --------------------------------------------------------------------------- the learner entry point


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An organisation's folder with node.toml's neighbour ``org_model.py`` (a fresh module
    name per test); the node runs from another working directory."""
    import sys
    import uuid

    folder = tmp_path / "site"
    folder.mkdir()
    module = f"org_model_{uuid.uuid4().hex}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", list(sys.path))  # build_learner makes the folder importable
    yield folder, module
    sys.modules.pop(module, None)


def org_config(folder, learner, **learner_args):
    from p2pfl.deploy.config import OrgNodeConfig

    config = OrgNodeConfig(
        name="a", bind="tcp://127.0.0.1:0", peers={"b": "tcp://127.0.0.1:1"}, insecure=True,
        learner=learner, learner_args=learner_args,
    )
    return config, folder


LEARNERS = """\
from p2pfl.testing import tiny_learner

def readme_style(data_dir):
    return tiny_learner(0)

def with_index(data_dir, index):
    return tiny_learner(index)

def with_kwargs(**settings):
    assert settings["index"] == 2
    return tiny_learner(0)

def positional_only(data_dir, /):
    return tiny_learner(0)

def missing_file(data_dir):
    open(data_dir + "/train.csv")
"""


@pytest.mark.parametrize("function", ["readme_style", "with_index", "with_kwargs"])
def test_index_from_init_is_passed_only_to_learners_that_take_it(site, function):
    folder, module = site
    (folder / f"{module}.py").write_text(LEARNERS)
    learner = build_learner(*org_config(folder, f"{module}:{function}", data_dir="/data", index=2))
    assert learner.get_weights()


@pytest.mark.parametrize(
    ("args", "function", "words"),
    [
        ({"data_dir": "/d", "datadir": "/d", "index": 0}, "readme_style", ["does not take datadir", "(data_dir)"]),
        ({"index": 0}, "readme_style", ["requires data_dir", "learner_args has nothing"]),
        ({"data_dir": "/d"}, "with_index", ["requires index", "(data_dir, index)"]),
        ({"data_dir": "/d"}, "positional_only", ["does not take data_dir", "requires data_dir"]),
    ],
)
def test_learner_args_that_do_not_fit_the_function_name_it_and_the_arguments(site, args, function, words):
    folder, module = site
    (folder / f"{module}.py").write_text(LEARNERS)
    with pytest.raises(ConfigError) as info:
        build_learner(*org_config(folder, f"{module}:{function}", **args))
    assert info.value.field == "learner_args"
    assert f"{module}:{function}" in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_a_learner_that_raises_is_a_config_error_naming_it_with_the_cause_kept(site):
    folder, module = site
    (folder / f"{module}.py").write_text(LEARNERS)
    with pytest.raises(ConfigError) as info:
        build_learner(*org_config(folder, f"{module}:missing_file", data_dir="/nonexistent", index=0))
    assert info.value.field == "learner"
    assert f"{module}:missing_file(...) failed: FileNotFoundError: " in str(info.value)
    assert "/nonexistent/train.csv" in str(info.value)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_a_learner_module_that_cannot_be_imported_says_where_to_put_it(site):
    folder, module = site
    with pytest.raises(ConfigError) as info:
        build_learner(*org_config(folder, f"{module}.model:build"))
    assert info.value.field == "learner"
    assert "next to node.toml" in str(info.value) and str(folder) in str(info.value)
    assert "PYTHONPATH" in str(info.value)
    # the module exists but its own import fails: that failure, not "put it next to node.toml"
    (folder / f"{module}.py").write_text("import a_dependency_nobody_installed\n")
    with pytest.raises(ConfigError) as info:
        build_learner(*org_config(folder, f"{module}:build"))
    assert f"importing {module} failed: ModuleNotFoundError" in str(info.value)
    assert "a_dependency_nobody_installed" in str(info.value)


def test_a_checkpoint_of_a_different_model_is_a_config_error(tmp_path):
    from p2pfl.deploy.checkpoint import load_checkpoint, restore_learner, save_checkpoint

    save_checkpoint(tmp_path, "a", 3, tiny_learner(0, features=4))
    saved = load_checkpoint(tmp_path, "a")
    with pytest.raises(ConfigError) as info:
        restore_learner(tiny_learner(0, features=5), saved.learner, source=tmp_path / "checkpoint.pt")
    text = str(info.value)
    assert info.value.field == "state_dir"
    assert f"{tmp_path / 'checkpoint.pt'} was written for a different model (" in text
    assert "size mismatch" in text and "\n" not in text
    assert f"move {tmp_path} away to start afresh, or restore the old model" in text


# --------------------------------------------------------------------------- MQTT presence


class RecordingPresence:
    """Stands in for MqttPresence: records what the node would announce."""

    announced: list[str] = []
    options: list[dict] = []

    def __init__(self, broker, consortium, name, endpoint, fingerprint, is_member, **options):
        RecordingPresence.announced.append(endpoint)
        RecordingPresence.options.append(options)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return None


async def test_discovery_announces_the_consortium_endpoint_not_the_bind_address(tmp_path, monkeypatch):
    import contextlib
    import dataclasses

    import p2pfl.discovery
    from p2pfl.consortium import init_consortium

    (tmp_path / "desc.toml").write_text(
        'name = "c"\ntopology = "ring"\n[training]\nlearner = "m:f"\n'
        + "".join(f'[[members]]\nname = "{n}"\nhost = "{n}.example.org"\nport = 7202\n' for n in "abc")
    )
    init_consortium(tmp_path / "desc.toml", tmp_path / "out")
    config, base = load_node_config(tmp_path / "out" / "a" / "node.toml", discovery="mqtt://broker:1883")
    assert config.bind == "tcp://0.0.0.0:7202"
    membership = load_membership(config, base)
    assert membership.own_endpoint == "tcp://a.example.org:7202"
    assert "a" not in membership.endpoints  # never dialled as a peer
    monkeypatch.setattr(p2pfl.discovery, "MqttPresence", RecordingPresence)
    monkeypatch.setattr(RecordingPresence, "announced", [])
    monkeypatch.setattr(RecordingPresence, "options", [])
    keypair = read_secret_key(tmp_path / "out" / "a" / "keys" / "a.key_secret")
    async with contextlib.AsyncExitStack() as stack:
        await runner._presence(config, membership, None, None, stack, base, keypair)
        static = dataclasses.replace(membership, own_endpoint=None, watch_file=None)  # no consortium file
        await runner._presence(config, static, None, None, stack, base, None)
    assert RecordingPresence.announced == ["tcp://a.example.org:7202", "tcp://0.0.0.0:7202"]
    signed, unsigned = RecordingPresence.options
    # a member signs with the key consortium.toml lists for it, and checks the others' signatures
    listed = load_consortium(tmp_path / "out" / "a" / "consortium.toml").signing_keys()
    assert signed["identity"].public == listed["a"] and signed["signing_keys"]("b") == listed["b"]
    assert unsigned["identity"] is None and unsigned["signing_keys"] is None


def test_stats_json_written_from_two_threads_at_once_stays_whole(tmp_path):
    """The worker writes it after each round while the loop writes it on the way out."""
    import threading

    from p2pfl.node.records import NodeStats

    stats = NodeStats(messages_accepted=3)
    stats.rejected["stale_round"] = 1
    errors = []

    def write_many():
        try:
            for _ in range(300):
                write_stats(tmp_path, stats)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write_many) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert json.loads((tmp_path / "stats.json").read_text())["rejected"] == {"stale_round": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]
