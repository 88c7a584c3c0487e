"""The one settings schema: every config takes a key with the same default and checks."""

from __future__ import annotations

import ast
import dataclasses
import tomllib
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from p2pfl.cli.main import build_parser
from p2pfl.config import config_from_mapping, load_toml
from p2pfl.consortium import TrainingSettings, init_consortium
from p2pfl.consortium.bundle import NODE_KEYS
from p2pfl.deploy.config import OrgNodeConfig
from p2pfl.errors import ConfigError
from p2pfl.node.peers import StartCondition
from p2pfl.node.records import NodeConfig
from p2pfl.settings import SETTINGS, describe, parse_start, setting_of, validate
from p2pfl.simulation.config import ExperimentConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = (ExperimentConfig, OrgNodeConfig, TrainingSettings, NodeConfig)
#: What each config needs beyond defaults to be valid at all.
REQUIRED: dict[type, dict[str, Any]] = {
    ExperimentConfig: {},
    OrgNodeConfig: {"name": "a", "bind": "tcp://127.0.0.1:1", "peers": {"b": "tcp://x:1"}, "learner": "m:f",
                    "insecure": True},
    TrainingSettings: {"learner": "m:f"},
    NodeConfig: {"name": "a", "rounds": 3},
}
#: The only defaults that differ from the schema's, each for a stated reason (see the configs).
DIFFERING = {
    (ExperimentConfig, "torch_threads"): 1,  # simulated nodes share the cores
    (OrgNodeConfig, "topology"): "",  # "" = the consortium file's topology
}


def settings_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if setting_of(f) is not None]


def build(cls: type, **values: Any) -> Any:
    return cls(**{**REQUIRED[cls], **values})


def test_settings_package_imports_nothing_but_the_standard_library_and_errors() -> None:
    ours = set()
    for path in (ROOT / "p2pfl" / "settings").glob("*.py"):
        tree = ast.parse(path.read_text())
        ours |= {
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        }
    assert {m for m in ours if m and m.startswith("p2pfl") and not m.startswith("p2pfl.settings")} == {"p2pfl.errors"}


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_each_config_field_is_the_schema_setting_of_its_name_with_its_type(cls: type) -> None:
    hints = typing.get_type_hints(cls)
    fields = settings_fields(cls)
    assert len(fields) >= 5
    for field in fields:
        spec = setting_of(field)
        assert spec is not None and spec.key == field.name
        assert hints[field.name] == spec.type, field.name


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_a_key_has_the_schema_default_everywhere(cls: type) -> None:
    config = build(cls)
    for field in settings_fields(cls):
        if field.name in REQUIRED[cls]:
            continue
        expected = DIFFERING.get((cls, field.name), SETTINGS[field.name].default)
        assert getattr(config, field.name) == expected, field.name


def test_round_timeout_is_60_seconds_in_every_config() -> None:
    assert {build(cls).round_timeout for cls in CONFIGS} == {60.0}


@pytest.mark.parametrize(
    ("key", "bad", "text"),
    [
        ("rounds", 0, "must be >= 1, got 0"),
        ("local_epochs", 0, "must be >= 1, got 0"),
        ("local_steps", -1, "must be >= 0 (0 = use local_epochs), got -1"),
        ("round_timeout", 0.0, "must be > 0 seconds, got 0.0"),
        ("round_timeout", float("nan"), "must be > 0 seconds, got nan"),
        ("torch_threads", -1, "must be >= 0 (0 = torch's default), got -1"),
        ("mode", "eventually", "must be one of sync, async, got 'eventually'"),
        ("staleness", -0.5, "must be >= 0 (0 = no staleness discount), got -0.5"),
        ("start", "soon", "'soon' is not a start condition: use all, none, min:N or at:"),
        ("discovery", "10.0.0.1:1883", "'10.0.0.1:1883': use mqtt://host:port, mqtts://host:port (TLS) or leave it empty"),
        ("learner", "no_colon", "'no_colon' is not module:function"),
        ("seed", -1, "must be >= 0 and <= 4294967295, got -1"),
    ],
)
def test_a_bad_value_is_refused_with_the_same_message_by_every_config_that_has_the_key(
    key: str, bad: Any, text: str
) -> None:
    having = [cls for cls in CONFIGS if key in {f.name for f in settings_fields(cls)}]
    assert having
    for cls in having:
        with pytest.raises(ConfigError) as info:
            build(cls, **{key: bad})
        assert info.value.field == key, cls
        assert str(info.value).startswith(f"{key}: {text}"), (cls, str(info.value))


def test_a_value_of_the_wrong_kind_names_the_key_instead_of_a_type_error() -> None:
    with pytest.raises(ConfigError, match="^rounds: expected a number, got 'x'"):
        NodeConfig(name="a", rounds="x")  # type: ignore[arg-type]


def test_secure_aggregation_needs_sync_in_every_config_with_a_mode() -> None:
    messages = set()
    for cls in (ExperimentConfig, OrgNodeConfig):
        values = {"secret_key": "a.key_secret", "insecure": False} if cls is OrgNodeConfig else {}
        with pytest.raises(ConfigError) as info:
            build(cls, secure_aggregation=True, mode="async", **values)
        assert info.value.field == "secure_aggregation"
        messages.add(str(info.value))
    assert messages == {'secure_aggregation: needs the round barrier: use mode = "sync"'}


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"dp": "sample"}, "target_epsilon"),
        ({"noise": 1.0}, "noise"),
        ({"dp": "update", "noise": 1.0, "target_epsilon": 2.0}, "noise"),
        ({"attackers": 1}, "attack"),
        ({"attack": "nan"}, "attackers"),
        ({"slow_nodes": 1}, "slowdown"),
        ({"curve": True}, "curve"),
        ({"secure_aggregation": True, "aggregator": "median"}, "secure_aggregation"),
        ({"secure_aggregation": True, "fanout": 2}, "secure_aggregation"),
    ],
)
def test_rules_over_several_keys_name_the_key_to_change(values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ExperimentConfig(**values)
    assert info.value.field == key


def test_an_unknown_key_is_named_with_a_suggestion_in_every_flat_config(tmp_path: Path) -> None:
    node = tmp_path / "node.toml"
    node.write_text('name = "a"\nbind = "tcp://x:1"\nlearner = "m:f"\ninsecure = true\nround_timout = 5\n'
                    '[peers]\nb = "tcp://x:2"\n')
    with pytest.raises(ConfigError, match="did you mean 'round_timeout'") as info:
        load_toml(OrgNodeConfig, node)
    assert info.value.field == "round_timout"
    for cls in (ExperimentConfig, TrainingSettings):
        with pytest.raises(ConfigError, match="did you mean 'local_steps'") as info:
            config_from_mapping(cls, {"local_step": 3})
        assert info.value.field == "local_step"


def test_validate_checks_any_dataclass_declared_from_the_schema() -> None:
    from p2pfl.settings import setting

    @dataclasses.dataclass(frozen=True)
    class Mine:
        rounds: int = setting("rounds")
        other: int = -5  # not a setting: not checked

        def __post_init__(self) -> None:
            validate(self)

    assert Mine().rounds == 40
    with pytest.raises(ConfigError, match="^rounds: must be >= 1"):
        Mine(rounds=0)


def test_start_grammar_lives_in_the_schema_and_start_condition_uses_it() -> None:
    assert parse_start("all") == ("all", 0, None)
    assert parse_start(" min:2 ") == ("min", 2, None)
    assert parse_start("at:2026-12-01T10:00:00") == ("at", 0, datetime(2026, 12, 1, 10, tzinfo=UTC))
    assert StartCondition.parse("min:3") == StartCondition("min", count=3)
    assert str(StartCondition.parse("at:2026-12-01T10:00:00Z")) == "at:2026-12-01T10:00:00+00:00"
    for bad in ("soon", "min:-1", "min:", "at:tomorrow", "all:1"):
        with pytest.raises(ConfigError) as info:
            StartCondition.parse(bad)
        assert info.value.field == "start"


# --------------------------------------------------------------------------- CLI


def subparser(command: str) -> Any:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    return commands.choices[command]  # type: ignore[attr-defined]


def flag_help(command: str, flag: str) -> str:
    action = next(a for a in subparser(command)._actions if flag in a.option_strings)
    return str(action.help)


def test_every_experiment_key_is_a_simulate_flag_with_the_schema_help_and_its_default() -> None:
    for field in dataclasses.fields(ExperimentConfig):
        flag = "--" + field.name.replace("_", "-")
        text = flag_help("simulate", flag)
        assert text == describe(ExperimentConfig, field.name)
        assert text.startswith(SETTINGS[field.name].help)
        assert "(default: " in text
    assert flag_help("simulate", "--round-timeout").endswith("(default: 60.0)")
    assert flag_help("simulate", "--torch-threads").endswith("(default: 1)")  # the simulation's own
    assert flag_help("simulate", "--dp").endswith("(default: off)")
    assert "(default: 16, or the topology file's count)" in flag_help("simulate", "--nodes")
    assert "--secure-aggregation" in subparser("simulate").format_help()


def test_data_and_node_flags_take_their_help_from_the_schema() -> None:
    for flag in ("--dataset", "--partition", "--seed", "--test-fraction", "--nodes"):
        key = flag[2:].replace("-", "_")
        assert flag_help("data", flag).startswith(SETTINGS[key].help)
        assert "(default: " in flag_help("data", flag)
    assert flag_help("data", "--nodes").endswith("(default: 16)")
    assert SETTINGS["start"].help in flag_help("node", "--start")
    assert SETTINGS["insecure"].help == flag_help("node", "--insecure")


def resolve(*argv: str) -> ExperimentConfig:
    from p2pfl.cli.simulate import resolve_config

    return resolve_config(build_parser().parse_args(["simulate", *argv]))


def test_simulate_precedence_is_defaults_then_file_then_flags_then_overrides(tmp_path: Path) -> None:
    file = tmp_path / "exp.toml"
    file.write_text("rounds = 7\nlr = 0.2\nseed = 3\npin_cpu = false\n")
    config = resolve("--config", str(file), "--rounds", "9", "--seed", "4", "seed=5")
    assert (config.lr, config.rounds, config.seed, config.pin_cpu) == (0.2, 9, 5, False)
    assert config.batch_size == ExperimentConfig().batch_size
    assert resolve("--no-pin-cpu").pin_cpu is False and resolve().pin_cpu is True
    assert resolve("--secure-aggregation", "--topology", "complete").secure_aggregation is True
    churn = resolve("--nodes", "4", "--fail", "node=1,round=1", "--fail", "node=2,round=1")
    assert churn.fail == ("node=1,round=1", "node=2,round=1")


def test_a_bad_flag_value_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        resolve("--momentum", "1.5")
    assert info.value.field == "momentum" and "[0, 1)" in str(info.value)


# --------------------------------------------------------------------------- node.toml from init


def test_node_keys_are_exactly_what_init_writes(tmp_path: Path) -> None:
    description = tmp_path / "desc.toml"
    description.write_text(
        'name = "c"\ntopology = "line"\n[training]\nlearner = "m:f"\n'
        '[[members]]\nname = "a"\nhost = "h1"\nport = 1\n[[members]]\nname = "b"\nhost = "h2"\nport = 2\n'
    )
    out = tmp_path / "out"
    init_consortium(description, out)
    for name in ("a", "b"):
        written = tomllib.loads((out / name / "node.toml").read_text())
        assert tuple(written) == NODE_KEYS
        assert set(TrainingSettings.__dataclass_fields__) <= set(written)  # every [training] key reaches it
        load_toml(OrgNodeConfig, out / name / "node.toml")  # and the node reads every one of them


# --------------------------------------------------------------------------- secure aggregation's neighbourhood


def test_too_few_neighbours_is_one_refusal_in_the_simulation_the_node_and_the_consortium_tools() -> None:
    from p2pfl.deploy.config import require_secure_neighbourhood
    from p2pfl.privacy.neighbourhood import secure_neighbourhood_errors
    from p2pfl.simulation.setup import check_secure_neighbourhoods
    from p2pfl.topology import StaticSchedule, build_topology

    ring = StaticSchedule(build_topology("ring", 4))
    errors = secure_neighbourhood_errors(ring, ["0", "2"])
    assert list(errors) == ["0", "2"]
    refusal = str(errors["0"])
    assert refusal.startswith("secure_aggregation: secure aggregation needs at least 3 neighbours per receiver")
    with pytest.raises(ConfigError) as node:
        require_secure_neighbourhood(ring.plan("0", 0))
    assert str(node.value) == refusal
    with pytest.raises(ConfigError) as simulation:
        check_secure_neighbourhoods(ring, ["0", "1", "2", "3"])
    assert str(simulation.value).startswith(refusal + '; use e.g. topology = "random-regular:4"')
    complete = StaticSchedule(build_topology("complete", 4))
    assert secure_neighbourhood_errors(complete, ["0", "1", "2", "3"]) == {}
