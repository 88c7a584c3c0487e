"""Consortium tooling: description validation, bundles from init, the public file, check."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest
import zmq

from p2pfl._toml import dumps
from p2pfl.consortium import (
    Consortium,
    Member,
    allow_list_loader,
    build_description_topology,
    check_bundles,
    init_consortium,
    load_consortium,
    load_consortium_topology,
    load_description,
    write_consortium,
)
from p2pfl.errors import ConfigError, TopologyError
from p2pfl.security.keys import fingerprint, generate_keypair, read_public_key, read_secret_key, write_keypair

NAMES = ["charite", "mayo", "ki.se"]

DESCRIPTION_TEXT = """\
name = "cancer-research"
topology = "ring"
mixing = "metropolis"
seed = 0
[training]
rounds = 40
local_epochs = 1
round_timeout = 60.0
start = "all"
learner = "p2pfl.examples.bundled:build_learner"
learner_args = { dataset = "digits", partition = "dirichlet:0.5", nodes = 3 }
[[members]]
name = "charite"
host = "10.0.0.7"
port = 7002
bind = "tcp://0.0.0.0:7002"
[[members]]
name = "mayo"
host = "10.0.0.8"
port = 7002
[members.training]
rounds = 20
learner_args = { partition = "iid" }
[[members]]
name = "ki.se"
host = "ki.example.org"
port = 7003
"""


def base_description() -> dict[str, Any]:
    return tomllib.loads(DESCRIPTION_TEXT)


def write_description(tmp_path: Path, values: dict[str, Any] | None = None, name: str = "desc.toml") -> Path:
    path = tmp_path / name
    path.write_text(dumps(values) if values is not None else DESCRIPTION_TEXT)
    return path


@pytest.fixture
def bundles(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    init_consortium(write_description(tmp_path), out)
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def rewrite_everywhere(out: Path, name: str, text: str) -> None:
    """Replace OUT/<name> and each bundle's copy, as a consistent re-distribution would."""
    for path in [out / name, *(out / m / name for m in NAMES)]:
        path.write_text(text)


# --------------------------------------------------------------------------- init


def test_init_writes_every_file_with_the_right_content_and_modes(bundles: Path) -> None:
    assert sorted(p.name for p in bundles.iterdir()) == sorted(
        [*NAMES, "consortium.toml", "topology.graphml"]
    )
    reference = (bundles / "consortium.toml").read_bytes()
    for index, name in enumerate(NAMES):
        bundle = bundles / name
        assert sorted(p.name for p in bundle.iterdir()) == [
            "consortium.toml",
            "keys",
            "node.toml",
            "state",
            "topology.graphml",
        ]
        assert sorted(p.name for p in (bundle / "keys").iterdir()) == [f"{name}.key", f"{name}.key_secret"]
        assert mode(bundle / "keys" / f"{name}.key_secret") == 0o600
        assert mode(bundle / "keys" / f"{name}.key") == 0o644
        assert mode(bundle / "keys") == 0o700
        assert (bundle / "consortium.toml").read_bytes() == reference
        assert (bundle / "topology.graphml").read_bytes() == (bundles / "topology.graphml").read_bytes()
        node = tomllib.loads((bundle / "node.toml").read_text())
        assert node["name"] == name
        assert node["consortium"] == "consortium.toml"
        assert node["secret_key"] == f"keys/{name}.key_secret"
        assert node["public_key"] == f"keys/{name}.key"
        assert node["learner"] == "p2pfl.examples.bundled:build_learner"
        assert node["learner_args"]["index"] == index
        assert node["state_dir"] == "state" and node["discovery"] == ""
        assert (node["local_epochs"], node["round_timeout"], node["start"]) == (1, 60.0, "all")
    charite = tomllib.loads((bundles / "charite" / "node.toml").read_text())
    mayo = tomllib.loads((bundles / "mayo" / "node.toml").read_text())
    ki = tomllib.loads((bundles / "ki.se" / "node.toml").read_text())
    assert charite["bind"] == "tcp://0.0.0.0:7002" and ki["bind"] == "tcp://0.0.0.0:7003"  # default bind
    assert (charite["rounds"], mayo["rounds"]) == (40, 20)  # a member's own table overrides
    assert mayo["learner_args"] == {"dataset": "digits", "partition": "iid", "nodes": 3, "index": 1}
    assert "learner_args = { " in (bundles / "mayo" / "node.toml").read_text()  # inline, as documented


def test_public_file_lists_members_and_fingerprints_match_keys(bundles: Path) -> None:
    consortium = load_consortium(bundles / "consortium.toml")
    raw = tomllib.loads((bundles / "consortium.toml").read_text())
    assert set(raw) == {"name", "topology", "mixing", "seed", "members"}
    assert (consortium.name, consortium.topology, consortium.mixing, consortium.seed) == (
        "cancer-research",
        "topology.graphml",
        "metropolis",
        0,
    )
    assert consortium.names == NAMES
    assert [m.endpoint for m in consortium.members] == [
        "tcp://10.0.0.7:7002",
        "tcp://10.0.0.8:7002",
        "tcp://ki.example.org:7003",
    ]
    for member in consortium.members:
        keys = bundles / member.name / "keys"
        assert read_public_key(keys / f"{member.name}.key") == member.public_key
        assert read_secret_key(keys / f"{member.name}.key_secret").public == member.public_key
        assert member.fingerprint == fingerprint(member.public_key)
    assert len({m.public_key for m in consortium.members}) == 3
    secrets = [read_secret_key(bundles / n / "keys" / f"{n}.key_secret").secret for n in NAMES]
    for path in bundles.rglob("*.toml"):  # no secret key outside its own file
        assert not any(secret in path.read_text() for secret in secrets), path


def test_generator_topology_has_member_i_as_node_i(bundles: Path) -> None:
    consortium, topology = load_consortium_topology(bundles / "consortium.toml")
    assert topology.names == NAMES
    assert sorted(tuple(sorted(e)) for e in topology.graph.edges) == [(0, 1), (0, 2), (1, 2)]
    assert [topology.graph.nodes[i]["address"] for i in range(3)] == [m.endpoint for m in consortium.members]


def test_generator_node_count_comes_from_members(tmp_path: Path) -> None:
    values = base_description()
    values["members"].append({"name": "umc", "host": "10.0.0.9", "port": 7002})
    values["topology"] = "grid:2x2"
    topology = build_description_topology(load_description(write_description(tmp_path, values)))
    assert topology.n == 4 and topology.names == [*NAMES, "umc"]
    values["topology"] = "grid:3x3"
    with pytest.raises(TopologyError, match="9 nodes"):
        build_description_topology(load_description(write_description(tmp_path, values)))


def test_topology_file_is_reordered_to_the_members(tmp_path: Path) -> None:
    (tmp_path / "graphs").mkdir()
    (tmp_path / "graphs" / "line.txt").write_text("ki.se mayo\nmayo charite\n")  # a path, no ring
    values = base_description()
    values["topology"] = "graphs/line.txt"  # relative to the description file
    out = tmp_path / "out"
    init_consortium(write_description(tmp_path, values), out)
    _, topology = load_consortium_topology(out / "consortium.toml")
    assert topology.names == NAMES
    edges = {frozenset((topology.names[u], topology.names[v])) for u, v in topology.graph.edges}
    assert edges == {frozenset(("ki.se", "mayo")), frozenset(("mayo", "charite"))}
    assert check_bundles(out) == []


def test_topology_file_with_other_names_lists_the_mismatches(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("charite mayo\nmayo karolinska\n")
    values = base_description()
    values["topology"] = "t.txt"
    with pytest.raises(ConfigError) as info:
        build_description_topology(load_description(write_description(tmp_path, values)))
    assert info.value.field == "topology"
    assert "ki.se" in str(info.value) and "karolinska" in str(info.value)


def test_disconnected_topology_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("4\n0 1\n2 3\n")
    values = base_description()
    values["members"].append({"name": "x", "host": "10.0.0.10", "port": 7002})
    for i, member in enumerate(values["members"]):
        member["name"] = str(i)
    values["topology"] = "t.txt"
    with pytest.raises(TopologyError, match="connected"):
        init_consortium(write_description(tmp_path, values), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_member_with_its_own_learner_does_not_inherit_the_shared_arguments(tmp_path: Path) -> None:
    values = base_description()
    values["members"][2]["training"] = {"learner": "ki_models:build", "learner_args": {"path": "/data/x.csv"}}
    description = load_description(write_description(tmp_path, values))
    assert description.members[2].training.learner_args == {"path": "/data/x.csv"}
    assert description.members[0].training.learner_args == {
        "dataset": "digits",
        "partition": "dirichlet:0.5",
        "nodes": 3,
    }


def test_rerun_is_refused_without_force(tmp_path: Path, bundles: Path) -> None:
    before = (bundles / "consortium.toml").read_bytes()
    with pytest.raises(ConfigError) as info:
        init_consortium(write_description(tmp_path), bundles)
    assert info.value.field == "out" and "--force" in str(info.value)
    assert (bundles / "consortium.toml").read_bytes() == before


def test_force_rotates_keys_and_keep_keys_keeps_them(tmp_path: Path, bundles: Path) -> None:
    first = load_consortium(bundles / "consortium.toml")
    init_consortium(write_description(tmp_path), bundles, force=True)
    rotated = load_consortium(bundles / "consortium.toml")
    assert all(a.public_key != b.public_key for a, b in zip(first.members, rotated.members, strict=True))

    values = base_description()
    values["members"].append({"name": "umc", "host": "10.0.0.9", "port": 7002})
    del values["members"][1]  # mayo leaves
    init_consortium(write_description(tmp_path, values), bundles, force=True, keep_keys=True)
    kept = load_consortium(bundles / "consortium.toml")
    assert kept.names == ["charite", "ki.se", "umc"]
    assert kept.member("charite").public_key == rotated.member("charite").public_key
    assert kept.member("ki.se").public_key == rotated.member("ki.se").public_key
    assert kept.member("umc").public_key not in {m.public_key for m in rotated.members}
    assert not (bundles / "mayo").exists()  # a former member's bundle (and key) is gone
    assert tomllib.loads((bundles / "umc" / "node.toml").read_text())["learner_args"]["index"] == 2
    assert check_bundles(bundles) == []


def test_keep_keys_refuses_a_secret_key_readable_by_others(tmp_path: Path, bundles: Path) -> None:
    (bundles / "mayo" / "keys" / "mayo.key_secret").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        init_consortium(write_description(tmp_path), bundles, force=True, keep_keys=True)


def test_a_nodes_state_survives_reinit(tmp_path: Path, bundles: Path) -> None:
    (bundles / "mayo" / "state" / "metrics.jsonl").write_text("{}\n")
    init_consortium(write_description(tmp_path), bundles, force=True, keep_keys=True)
    assert (bundles / "mayo" / "state" / "metrics.jsonl").read_text() == "{}\n"


def test_force_replaces_only_the_files_init_writes(tmp_path: Path, bundles: Path) -> None:
    mayo = bundles / "mayo"
    (mayo / "hospital_fl.py").write_text("def build_learner(data_dir): ...\n")  # README: next to node.toml
    (mayo / "notes").mkdir()
    (mayo / "notes" / "contacts.txt").write_text("on call: 555-0100\n")
    (mayo / "keys" / "README").write_text("ask IT before rotating\n")
    node = mayo / "node.toml"
    node.write_text(node.read_text().replace("rounds = 20", "rounds = 7") + 'mode = "async"\n')  # hand edits
    result = init_consortium(write_description(tmp_path), bundles, force=True, keep_keys=True)
    assert list(result) == [bundles / n for n in NAMES] and len(result) == 3 and result[1] == mayo
    assert (mayo / "hospital_fl.py").read_text() == "def build_learner(data_dir): ...\n"
    assert (mayo / "notes" / "contacts.txt").read_text() == "on call: 555-0100\n"
    assert (mayo / "keys" / "README").exists()
    assert tomllib.loads(node.read_text())["rounds"] == 20  # --force: init's own files are rewritten
    assert result.changed_settings == {node: ("mode", "rounds")}  # ...and the lost edits are reported
    for name in NAMES:
        replaced = {p.relative_to(bundles / name).as_posix() for p in result.replaced if p.is_relative_to(bundles / name)}
        assert replaced == {"node.toml", "consortium.toml", "topology.graphml", f"keys/{name}.key",
                            f"keys/{name}.key_secret"}
    assert bundles / "consortium.toml" in result.replaced and bundles / "topology.graphml" in result.replaced
    assert check_bundles(bundles) == []


def test_a_former_members_bundle_loses_its_keys_but_not_its_other_files(tmp_path: Path, bundles: Path) -> None:
    (bundles / "mayo" / "hospital_fl.py").write_text("# mayo's code\n")
    values = base_description()
    values["members"].append({"name": "umc", "host": "10.0.0.9", "port": 7002})
    del values["members"][1]  # mayo leaves
    result = init_consortium(write_description(tmp_path, values), bundles, force=True, keep_keys=True)
    assert sorted(p.relative_to(bundles).as_posix() for p in bundles.joinpath("mayo").rglob("*")) == [
        "mayo/hospital_fl.py"
    ]
    assert {p.name for p in result.removed} == {
        "node.toml", "consortium.toml", "topology.graphml", "mayo.key", "mayo.key_secret"
    }
    assert check_bundles(bundles) == []


# --------------------------------------------------------------------------- description errors


def _set(path: str, value: Any) -> Any:
    def mutate(values: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = values
        for part in parents:
            target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return mutate


_DELETE = object()


@pytest.mark.parametrize(
    ("mutate", "field", "text"),
    [
        (_set("name", _DELETE), "name", "missing"),
        (_set("name", "cancer research"), "name", "letters"),
        (_set("topolgy", "ring"), "topolgy", "did you mean 'topology'"),
        (_set("mixing", "bogus"), "mixing", "metropolis"),
        (_set("seed", -1), "seed", ">= 0"),
        (_set("seed", "zero"), "seed", "expected int"),
        (_set("training.rounds", 0), "training.rounds", ">= 1"),
        (_set("training.local_epochs", 0), "training.local_epochs", ">= 1"),
        (_set("training.round_timeout", 0), "training.round_timeout", "> 0"),
        (_set("training.start", "soon"), "training.start", "min:N"),
        (_set("training.start", "at:tomorrow"), "training.start", "at:"),
        (_set("training.learner", "p2pfl.examples.bundled"), "training.learner", "module:function"),
        (_set("training.learner", _DELETE), "training.learner", "missing"),
        (_set("training.learner_args", {"index": 3}), "training.learner_args.index", "set by init"),
        (_set("training.learner_args", "digits"), "training.learner_args", "expected dict"),
        (_set("training.discovery", "10.0.0.1:1883"), "training.discovery", "mqtt://"),
        (_set("training.epochs", 1), "training.epochs", "unknown key"),
        (_set("members", [{"name": "a", "host": "h", "port": 1}]), "members", "at least 2"),
        (_set("members", _DELETE), "members", "[[members]]"),
        (_set("members.0.name", _DELETE), "members[0].name", "missing"),
        (_set("members.0.name", "../etc"), "members[0].name", "letters"),
        (_set("members.0.name", "consortium.toml"), "members[0].name", "consortium.toml"),
        (_set("members.1.name", "charite"), "members[1].name", "unique"),
        (_set("members.0.host", _DELETE), "members[0].host", "missing"),
        (_set("members.0.host", "10.0.0.7/24"), "members[0].host", "host"),
        (_set("members.0.port", 0), "members[0].port", "1..65535"),
        (_set("members.0.port", 70000), "members[0].port", "1..65535"),
        (_set("members.0.port", "7002x"), "members[0].port", "expected int"),
        (_set("members.0.bind", "0.0.0.0:7002"), "members[0].bind", "tcp://"),
        (_set("members.0.hots", "x"), "members[0].hots", "did you mean 'host'"),
        (_set("members.1.host", "10.0.0.7"), "members[1].port", "10.0.0.7:7002"),  # same endpoint
        (_set("members.1.training", {"rounds": 0}), "members[1].training.rounds", ">= 1"),
        (_set("members.2.training", {"start": "later"}), "members[2].training.start", "min:N"),
    ],
)
def test_every_description_error_names_its_field(tmp_path: Path, mutate: Any, field: str, text: str) -> None:
    values = base_description()
    mutate(values)
    path = write_description(tmp_path, values)
    with pytest.raises(ConfigError) as info:
        load_description(path)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert text in str(info.value)
    assert str(path) in str(info.value)


def test_description_file_problems_name_the_description(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_description(tmp_path / "nope.toml")
    assert info.value.field == "description"
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_description(tmp_path / "bad.toml")


def test_description_example_from_the_docs_is_valid(tmp_path: Path) -> None:
    description = load_description(write_description(tmp_path))
    assert description.names == NAMES
    assert [m.port for m in description.members] == [7002, 7002, 7003]
    assert description.members[1].training.rounds == 20


# --------------------------------------------------------------------------- public file


def _consortium() -> Consortium:
    members = []
    for i, name in enumerate(["a", "b"]):
        pair = generate_keypair()
        members.append(Member(name, f"tcp://10.0.0.{i}:7000", pair.public, fingerprint(pair.public)))
    return Consortium("c", "topology.graphml", "metropolis", 0, tuple(members))


def test_write_and_load_round_trip(tmp_path: Path) -> None:
    consortium = _consortium()
    write_consortium(consortium, tmp_path / "consortium.toml")
    assert load_consortium(tmp_path / "consortium.toml") == consortium
    assert mode(tmp_path / "consortium.toml") == 0o644


def test_a_hand_edited_fingerprint_or_shared_key_is_refused(tmp_path: Path) -> None:
    consortium = _consortium()
    a, b = consortium.members
    path = tmp_path / "consortium.toml"
    write_consortium(
        Consortium(
            "c", "t.graphml", "metropolis", 0, (a, Member("b", b.endpoint, b.public_key, a.fingerprint))
        ),
        path,
    )
    with pytest.raises(ConfigError) as info:
        load_consortium(path)
    assert info.value.field == "members[1].fingerprint"
    write_consortium(
        Consortium(
            "c", "t.graphml", "metropolis", 0, (a, Member("b", b.endpoint, a.public_key, a.fingerprint))
        ),
        path,
    )
    with pytest.raises(ConfigError) as info:
        load_consortium(path)
    assert info.value.field == "members[1].public_key"


def test_allow_list_loader_rereads_the_file(tmp_path: Path) -> None:
    from p2pfl.security.allowlist import AllowList

    consortium = _consortium()
    path = tmp_path / "consortium.toml"
    write_consortium(consortium, path)
    load = allow_list_loader(path)
    assert load() == {m.name: m.public_key for m in consortium.members}
    allow = AllowList(load)
    extra = generate_keypair()
    grown = Consortium(
        "c",
        "t.graphml",
        "metropolis",
        0,
        (*consortium.members, Member("z", "tcp://10.0.0.9:7000", extra.public, fingerprint(extra.public))),
    )
    write_consortium(grown, path)
    assert allow.reload() == ({"z"}, set())  # admitted by re-distributing the file
    write_consortium(Consortium("c", "t.graphml", "metropolis", 0, grown.members[1:]), path)
    assert allow.reload() == (set(), {"a"})  # revoked
    assert allow.member_for_key(consortium.members[0].public_key) is None


# --------------------------------------------------------------------------- check


def test_check_passes_fresh_bundles(bundles: Path) -> None:
    assert check_bundles(bundles) == []


def _wrong_key(out: Path) -> None:
    write_keypair(out / "mayo" / "keys", "mayo", overwrite=True)


def _loose_secret(out: Path) -> None:
    (out / "mayo" / "keys" / "mayo.key_secret").chmod(0o644)


def _duplicate_endpoint(out: Path) -> None:
    text = (out / "consortium.toml").read_text().replace("tcp://10.0.0.8:7002", "tcp://10.0.0.7:7002")
    rewrite_everywhere(out, "consortium.toml", text)


def _disconnected(out: Path) -> None:
    import networkx as nx

    from p2pfl.topology import write_topology_file

    graph = nx.Graph()
    graph.add_nodes_from((i, {"name": n}) for i, n in enumerate(NAMES))
    graph.add_edge(0, 1)
    for path in [out / "topology.graphml", *(out / m / "topology.graphml" for m in NAMES)]:
        write_topology_file(graph, path)


def _differing_public_file(out: Path) -> None:
    path = out / "ki.se" / "consortium.toml"
    path.write_text(path.read_text().replace("seed = 0", "seed = 1"))


def _missing_node_field(out: Path) -> None:
    path = out / "charite" / "node.toml"
    path.write_text(
        "\n".join(line for line in path.read_text().splitlines() if not line.startswith("rounds"))
    )


def _foreign_secret(out: Path) -> None:
    import shutil

    shutil.copy2(out / "charite" / "keys" / "charite.key_secret", out / "mayo" / "keys")


def _missing_bundle(out: Path) -> None:
    import shutil

    shutil.rmtree(out / "ki.se")


def _wrong_name(out: Path) -> None:
    path = out / "mayo" / "node.toml"
    path.write_text(path.read_text().replace('name = "mayo"', 'name = "charite"'))


@pytest.mark.parametrize(
    ("plant", "who", "text"),
    [
        (_wrong_key, "mayo", "does not match the public key listed"),
        (_loose_secret, "mayo", "mode 0644"),
        (_duplicate_endpoint, "endpoints", "both use tcp://10.0.0.7:7002"),
        (_disconnected, "topology", "connected"),
        (_differing_public_file, "ki.se", "differs"),
        (_missing_node_field, "charite", "lacks rounds"),
        (_foreign_secret, "mayo", "other secret keys"),
        (_missing_bundle, "ki.se", "missing"),
        (_wrong_name, "mayo", "name = 'charite'"),
    ],
)
def test_check_finds_each_planted_problem(bundles: Path, plant: Any, who: str, text: str) -> None:
    plant(bundles)
    problems = check_bundles(bundles)
    assert problems, "the planted problem went unnoticed"
    assert any(p.startswith(f"{who}: ") and text in p for p in problems), problems


def load_and_build(path: Path) -> Any:
    return build_description_topology(load_description(path))  # what `p2pfl consortium check DESC` runs


def _node_refusal(bundle: Path) -> str:
    """What ``p2pfl node`` says when it refuses to start secure aggregation in ``bundle``."""
    from p2pfl.deploy.config import load_node_config
    from p2pfl.deploy.membership import load_membership
    from p2pfl.deploy.runner import _secure_aggregation
    from p2pfl.security import AllowList

    config, base = load_node_config(bundle / "node.toml")
    membership = load_membership(config, base)
    assert membership.keys_loader is not None
    keypair = read_secret_key(base / config.secret_key)
    with pytest.raises(ConfigError) as info:
        _secure_aggregation(config, membership, AllowList(membership.keys_loader), keypair, 0)
    return str(info.value)


def test_check_reports_secure_aggregation_on_too_small_a_neighbourhood(bundles: Path) -> None:
    for name in ("charite", "ki.se"):  # on a ring of 3 everyone has 2 neighbours
        node = bundles / name / "node.toml"
        node.write_text(node.read_text().replace("secure_aggregation = false", "secure_aggregation = true"))
    problems = check_bundles(bundles)
    for name in ("charite", "ki.se"):
        refusal = _node_refusal(bundles / name)
        assert "at least 3 neighbours" in refusal
        assert f"{name}: {bundles / name / 'node.toml'}: {refusal}" in problems, problems
    assert not any(p.startswith("mayo: ") for p in problems)  # mayo does not use it


def test_init_refuses_secure_aggregation_that_no_node_could_start(tmp_path: Path) -> None:
    values = base_description()
    values["training"]["secure_aggregation"] = True
    with pytest.raises(ConfigError) as info:
        init_consortium(write_description(tmp_path, values), tmp_path / "out")
    assert info.value.field == "training.secure_aggregation"
    assert "needs at least 3 neighbours per receiver; 'charite' has 2" in str(info.value)
    assert "charite, mayo, ki.se" in str(info.value)
    assert not (tmp_path / "out").exists()
    one = base_description()
    one["members"][1]["training"]["secure_aggregation"] = True  # only mayo asks for it
    with pytest.raises(ConfigError) as info:
        load_and_build(write_description(tmp_path, one))
    assert info.value.field == "members[1].training.secure_aggregation"
    assert "'mayo' has 2" in str(info.value) and "too few neighbours: mayo." in str(info.value)
    values["topology"] = "complete"
    values["members"].append({"name": "umc", "host": "10.0.0.9", "port": 7002})
    values["training"]["learner_args"]["nodes"] = 4
    init_consortium(write_description(tmp_path, values), tmp_path / "out")  # 3 neighbours each: fine
    assert check_bundles(tmp_path / "out") == []


def test_check_reports_problems_without_key_material(bundles: Path) -> None:
    _wrong_key(bundles)
    secret = read_secret_key(bundles / "mayo" / "keys" / "mayo.key_secret").secret
    problems = check_bundles(bundles)
    assert problems and not any(secret in p for p in problems)
    assert zmq.curve_public(secret.encode()).decode() not in " ".join(problems)


def test_check_of_a_directory_without_a_consortium(tmp_path: Path) -> None:
    problems = check_bundles(tmp_path)
    assert len(problems) == 1 and "does not exist" in problems[0]


# --------------------------------------------------------------------------- TOML writer


def test_toml_writer_round_trips_what_init_writes() -> None:
    document = {
        "name": 'quote " and \\ backslash',
        "n": 3,
        "x": 0.1,
        "flag": True,
        "empty": {},
        "args": {"nested": {"a": [1, 2.5, "z"]}, "odd key": "ü\n"},
        "inf": float("inf"),
        "members": [{"name": "a", "port": 1}, {"name": "b", "port": 2}],
    }
    assert tomllib.loads(dumps(document)) == document
