"""Typed configs: ``config_from_mapping``, ``load_toml`` and ``parse_overrides``."""

from __future__ import annotations

import dataclasses

import pytest

from p2pfl.config import config_from_mapping, load_toml, parse_overrides, to_dict
from p2pfl.errors import ConfigError
from p2pfl.simulation.config import ExperimentConfig


def test_mapping_builds_the_config_and_keeps_other_defaults() -> None:
    config = config_from_mapping(ExperimentConfig, {"rounds": 5, "lr": 1, "topology": "star"})
    assert config.rounds == 5
    assert config.lr == 1.0 and isinstance(config.lr, float)  # an int is accepted for a float
    assert config.topology == "star"
    assert config == dataclasses.replace(ExperimentConfig(), rounds=5, lr=1.0, topology="star")


def test_mapping_on_top_of_a_base_keeps_the_base_values() -> None:
    base = ExperimentConfig(rounds=7, seed=3)
    config = config_from_mapping(ExperimentConfig, {"seed": 4}, base=base)
    assert (config.rounds, config.seed) == (7, 4)
    assert base.seed == 3  # frozen base untouched


def test_unknown_key_names_the_key_and_suggests_the_close_match() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(ExperimentConfig, {"roudns": 10})
    assert info.value.field == "roudns"
    message = str(info.value)
    assert "unknown key" in message
    assert "did you mean 'rounds'?" in message
    assert "valid keys:" in message and "batch_size" in message


def test_unknown_key_without_a_close_match_lists_valid_keys_only() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(ExperimentConfig, {"zzzzzz": 1})
    assert info.value.field == "zzzzzz"
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rounds", "ten"),
        ("rounds", 2.5),
        ("rounds", True),  # a bool is not an int here
        ("lr", "fast"),
        ("topology", 3),
        ("nodes", [1, 2]),
    ],
)
def test_wrong_type_names_the_field(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(ExperimentConfig, {key: value})
    assert info.value.field == key
    assert "expected" in str(info.value)
    assert repr(value) in str(info.value)


def test_numeric_strings_are_accepted_for_numeric_fields() -> None:
    config = config_from_mapping(ExperimentConfig, {"rounds": "12", "lr": "0.5", "nodes": "8"})
    assert (config.rounds, config.lr, config.nodes) == (12, 0.5, 8)


def test_dash_in_keys_equals_underscore() -> None:
    dashed = config_from_mapping(ExperimentConfig, {"local-steps": 3, "batch-size": 4, "round-timeout": 5})
    plain = config_from_mapping(ExperimentConfig, {"local_steps": 3, "batch_size": 4, "round_timeout": 5})
    assert dashed == plain
    assert (dashed.local_steps, dashed.batch_size, dashed.round_timeout) == (3, 4, 5.0)


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("rounds", 0),
        ("local_epochs", 0),
        ("batch_size", 0),
        ("nodes", 0),
        ("local_steps", -1),
        ("fanout", -1),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("lr", float("inf")),
        ("seed", -1),
        ("seed", 2**32),
        ("mixing", "foo"),
        ("device", "tpu"),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("weight_decay", -0.1),
        ("transport", "udp"),
        ("round_timeout", 0.0),
        ("test_fraction", 0.0),
        ("test_fraction", 1.0),
    ],
)
def test_each_validation_names_its_field(field: str, bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        ExperimentConfig(**{field: bad})
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    # the same check fires through the mapping path
    with pytest.raises(ConfigError) as info:
        config_from_mapping(ExperimentConfig, {field: bad})
    assert info.value.field == field


def test_boundary_values_are_accepted() -> None:
    config = ExperimentConfig(
        rounds=1, local_epochs=1, batch_size=1, nodes=1, local_steps=0, fanout=0,
        momentum=0.0, weight_decay=0.0, transport="tcp", test_fraction=0.5,
    )
    assert to_dict(config)["transport"] == "tcp"
    assert set(to_dict(config)) == {f.name for f in dataclasses.fields(ExperimentConfig)}


def test_overrides_parse_scalars() -> None:
    values = parse_overrides(
        ["topology=ring", "lr=0.1", "nodes=8", "out=runs/a b", " seed = 3 ", "flag=true", "partition=shards:2"]
    )
    assert values == {
        "topology": "ring",
        "lr": 0.1,
        "nodes": 8,
        "out": "runs/a b",
        "seed": 3,
        "flag": True,
        "partition": "shards:2",
    }
    assert isinstance(values["nodes"], int) and isinstance(values["lr"], float)
    assert parse_overrides(['topology="torus:4x4"'])["topology"] == "torus:4x4"
    # TOML would read these as a date and a time; on the command line they are text
    assert parse_overrides(["out=2024-05-01", "out2=12:30:00"]) == {"out": "2024-05-01", "out2": "12:30:00"}
    assert config_from_mapping(ExperimentConfig, parse_overrides(["out=2024-05-01"])).out == "2024-05-01"


def test_overrides_feed_the_config() -> None:
    config = config_from_mapping(ExperimentConfig, parse_overrides(["topology=ring", "lr=0.1", "nodes=8"]))
    assert (config.topology, config.lr, config.nodes) == ("ring", 0.1, 8)


@pytest.mark.parametrize("item", ["rounds", "=5", " =5"])
def test_bad_override_form_errors(item: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_overrides([item])
    assert info.value.field == item
    assert "key=value" in str(info.value)


def test_load_toml_reads_a_file(tmp_path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text('rounds = 9\nlr = 0.2\ntopology = "torus:3x3"\nlocal-steps = 4\n')
    config = load_toml(ExperimentConfig, path)
    assert (config.rounds, config.lr, config.topology, config.local_steps) == (9, 0.2, "torus:3x3", 4)
    on_base = load_toml(ExperimentConfig, path, base=ExperimentConfig(seed=5))
    assert (on_base.seed, on_base.rounds) == (5, 9)


def test_toml_unknown_key_names_the_key_and_the_file(tmp_path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text("roudns = 3\n")
    with pytest.raises(ConfigError) as info:
        load_toml(ExperimentConfig, path)
    assert info.value.field == "roudns"
    assert "did you mean 'rounds'?" in str(info.value)
    assert str(path) in str(info.value)


def test_toml_wrong_type_names_the_field_and_the_file(tmp_path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text('rounds = "ten"\n')
    with pytest.raises(ConfigError) as info:
        load_toml(ExperimentConfig, path)
    assert info.value.field == "rounds"
    assert "'ten'" in str(info.value) and str(path) in str(info.value)


def test_toml_validation_error_names_the_field_and_the_file(tmp_path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text("momentum = 1.5\n")
    with pytest.raises(ConfigError) as info:
        load_toml(ExperimentConfig, path)
    assert info.value.field == "momentum"
    assert "[0, 1)" in str(info.value) and str(path) in str(info.value)


def test_invalid_toml_names_the_file(tmp_path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("rounds = = 3\n")
    with pytest.raises(ConfigError) as info:
        load_toml(ExperimentConfig, path)
    assert info.value.field == "config"
    assert str(path) in str(info.value) and "not valid TOML" in str(info.value)


def test_missing_toml_names_the_file(tmp_path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_toml(ExperimentConfig, path)
    assert info.value.field == "config"
    assert str(path) in str(info.value) and "does not exist" in str(info.value)


@pytest.mark.parametrize("kind", ["directory", "binary"])
def test_unreadable_toml_is_a_config_error(tmp_path, kind: str) -> None:
    path = tmp_path / "exp.toml"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"\xff\xfe\x00rounds")
    with pytest.raises(ConfigError) as info:
        load_toml(ExperimentConfig, path)
    assert info.value.field == "config"
    assert str(path) in str(info.value)


def test_cuda_is_refused_with_the_fix_when_torch_cannot_use_it() -> None:
    import torch

    if torch.cuda.is_available():  # a GPU machine: the config is fine
        assert ExperimentConfig(device="cuda").device == "cuda"
    else:
        with pytest.raises(ConfigError, match='device: .*use device = "cpu"'):
            ExperimentConfig(device="cuda")


def test_a_single_crash_may_be_given_as_a_plain_string() -> None:
    config = config_from_mapping(ExperimentConfig, parse_overrides(["fail=node=1,round=2", "nodes=4"]))
    assert config.fail == ("node=1,round=2",)
