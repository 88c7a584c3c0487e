"""The consortium description: the TOML file people write, read and validated.

A description names the consortium, its topology and its members (where each one is
reached) plus the training settings every member's ``node.toml`` gets. Every problem
raises :class:`~p2pfl.errors.ConfigError` whose field is the dotted key at fault, e.g.
``members[2].port`` or ``training.start``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p2pfl._toml import build, message, read_toml, table
from p2pfl.deploy.consortium_file import CONSORTIUM_NAME, MEMBER_NAME
from p2pfl.errors import ConfigError
from p2pfl.privacy.neighbourhood import secure_neighbourhood_errors
from p2pfl.settings import setting, validate

__all__ = [
    "Description",
    "MemberSpec",
    "RESERVED_NAMES",
    "TrainingSettings",
    "build_description_topology",
    "endpoint_for",
    "load_description",
    "parse_description",
]

#: Names a member cannot take: its bundle directory would collide with these files in OUT.
RESERVED_NAMES = frozenset({"consortium.toml", "topology.graphml"})


@dataclass(frozen=True)
class TrainingSettings:
    """What every member's node.toml gets from ``[training]`` (keys = node.toml keys, with
    the defaults, bounds and help text of :mod:`p2pfl.settings`)."""

    rounds: int = setting("rounds")
    local_epochs: int = setting("local_epochs")
    local_steps: int = setting("local_steps")
    round_timeout: float = setting("round_timeout")
    torch_threads: int = setting("torch_threads")
    start: str = setting("start")
    learner: str = setting("learner")
    learner_args: dict[str, Any] = setting("learner_args")  # init adds index (passed if taken)
    metrics: tuple[str, ...] = setting("metrics")
    discovery: str = setting("discovery")
    discovery_username: str = setting("discovery_username")
    discovery_password_file: str = setting("discovery_password_file")
    discovery_ca_file: str = setting("discovery_ca_file")
    discovery_cert_file: str = setting("discovery_cert_file")
    discovery_key_file: str = setting("discovery_key_file")
    compress: str = setting("compress")
    gossip: str = setting("gossip")
    secure_aggregation: bool = setting("secure_aggregation")

    def __post_init__(self) -> None:
        validate(self)
        if "index" in self.learner_args:
            raise ConfigError(
                "learner_args.index",
                "is set by init to each member's position; remove it from the description",
            )


@dataclass(frozen=True)
class _MemberFields:
    """The scalar keys of one ``[[members]]`` entry (``training`` is a sub-table)."""

    name: str = ""
    host: str = ""
    port: int = 0
    bind: str = ""


@dataclass(frozen=True)
class MemberSpec:
    """One organisation as described.

    Attributes:
        name: unique member name; also its bundle directory and systemd instance name.
        host: where the others reach it (DNS name or IP address).
        port: TCP port it listens on.
        bind: the endpoint it binds (default ``tcp://0.0.0.0:<port>``).
        training: its settings: ``[training]`` overridden by its own ``[members.training]``.
    """

    name: str
    host: str
    port: int
    bind: str
    training: TrainingSettings

    @property
    def endpoint(self) -> str:
        """Where the other members connect: ``tcp://host:port``."""
        return endpoint_for(self.host, self.port)


@dataclass(frozen=True)
class Description:
    """A validated consortium description.

    Attributes:
        name: the consortium's name.
        topology: generator spec, or a topology file path as written in the description.
        mixing: mixing-matrix method (``metropolis``, ``max-degree``, ``file``).
        seed: seed for random topology generators.
        training: the shared ``[training]`` settings.
        members: the members in file order; member ``i`` is graph node ``i``.
        directory: folder of the description file; relative topology paths start here.
    """

    name: str
    topology: str
    mixing: str
    seed: int
    training: TrainingSettings
    members: tuple[MemberSpec, ...]
    directory: Path = field(default=Path("."), compare=False)

    @property
    def names(self) -> list[str]:
        """Member names in index order."""
        return [m.name for m in self.members]

    def topology_file(self) -> Path | None:
        """The topology file, resolved against the description's folder; None for a generator."""
        from p2pfl.topology.files import looks_like_path

        if not looks_like_path(self.topology):
            return None
        path = Path(self.topology).expanduser()
        return path if path.is_absolute() else self.directory / path


@dataclass(frozen=True)
class _Header:
    name: str = ""
    topology: str = setting("topology")
    mixing: str = setting("mixing")
    seed: int = setting("seed")

    def __post_init__(self) -> None:
        validate(self)


def endpoint_for(host: str, port: int) -> str:
    """``tcp://host:port``, bracketing IPv6 addresses as ZeroMQ expects."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"tcp://{shown}:{port}"


def load_description(path: str | Path) -> Description:
    """Read and validate a description file.

    Raises:
        ConfigError: the file is missing or not TOML (field ``description``), or any
            value is invalid (field = the dotted key at fault).
    """
    path = Path(path)
    values = read_toml(path, "description")
    try:
        return parse_description(values, directory=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(exc.field, f"{message(exc)} (in {path})") from None


def parse_description(values: Mapping[str, Any], *, directory: Path = Path(".")) -> Description:
    """Validate a description given as parsed TOML.

    Args:
        values: the parsed file.
        directory: where relative topology paths start.

    Raises:
        ConfigError: naming the dotted key at fault and what would be valid.
    """
    header = build(_Header, values, "", tables=("training", "members"))
    if not header.name:
        raise ConfigError("name", "missing; give the consortium a name (letters, digits, - and _)")
    if not CONSORTIUM_NAME.fullmatch(header.name):
        raise ConfigError(
            "name", f"{header.name!r}: use ASCII letters, digits, '-' and '_', starting with a letter or digit"
        )
    from p2pfl.topology.mixing import resolve_mixing_method

    try:
        resolve_mixing_method(header.mixing)
    except ValueError as exc:  # TopologyError is a ValueError
        raise ConfigError("mixing", str(exc)) from None

    raw_training = table(values.get("training", {}), "training")
    training = build(TrainingSettings, raw_training, "training.")
    raw_members = values.get("members")
    if not isinstance(raw_members, list) or not all(isinstance(m, dict) for m in raw_members):
        raise ConfigError("members", "missing; add one [[members]] table per organisation (at least 2)")
    if len(raw_members) < 2:
        raise ConfigError("members", f"a consortium needs at least 2 members, got {len(raw_members)}")
    members = tuple(_member(i, raw, raw_training) for i, raw in enumerate(raw_members))
    _check_unique(members)
    return Description(
        name=header.name,
        topology=header.topology,
        mixing=header.mixing,
        seed=header.seed,
        training=training,
        members=members,
        directory=directory,
    )


def build_description_topology(description: Description) -> Any:
    """The topology the description asks for, with member ``i`` as graph node ``i``.

    Nodes carry the member's ``name`` and ``address`` (its endpoint). A generator gets
    ``nodes = len(members)``; a topology file must name exactly the members (its node
    order does not matter, the graph is re-ordered to the members' order).

    Returns:
        A :class:`~p2pfl.topology.Topology`.

    Raises:
        TopologyError: the spec, file or graph is unusable (e.g. disconnected).
        ConfigError: a topology file's node names differ from the member names, or a
            member with secure aggregation has too few neighbours (its node would refuse
            to start).
    """
    import networkx as nx

    from p2pfl.topology import Topology, build_topology

    n = len(description.members)
    file = description.topology_file()
    spec = str(file) if file is not None else description.topology
    built = build_topology(
        spec, None if file is not None else n, seed=description.seed, mixing=description.mixing
    )
    names = description.names
    if file is not None:
        missing = [m for m in names if m not in built.names]
        extra = [x for x in built.names if x not in names]
        if missing or extra:
            raise ConfigError(
                "topology",
                f"the node names of {file} must be exactly the member names; "
                f"members not in the file: {missing or 'none'}; file nodes that are no member: {extra or 'none'}",
            )
        order = [built.index_of(m) for m in names]  # file index of member i
    else:  # build_topology already refused a generator whose size differs (torus:3x3 for 8)
        order = list(range(n))
    graph = nx.Graph()
    for i, member in enumerate(description.members):
        attrs = dict(built.graph.nodes[order[i]])
        attrs.update(name=member.name, address=member.endpoint)
        graph.add_node(i, **attrs)
    position = {old: new for new, old in enumerate(order)}
    for u, v, data in built.graph.edges(data=True):
        graph.add_edge(position[u], position[v], **data)
    # Re-ordering nodes permutes the mixing matrix the same way; no need to recompute it.
    mixing = np.asarray(built.mixing)[np.ix_(order, order)]
    topology = Topology(graph=graph, mixing=mixing, spec=description.topology, mixing_method=built.mixing_method)
    _check_secure_aggregation(description, topology)
    return topology


def _check_secure_aggregation(description: Description, topology: Any) -> None:
    """Refuse what every such node would refuse at start, naming all the members concerned."""
    from p2pfl.topology import StaticSchedule

    secure = [m.name for m in description.members if m.training.secure_aggregation]
    errors = secure_neighbourhood_errors(StaticSchedule(topology), secure)  # the schedule a node builds
    if not errors:
        return
    first = next(iter(errors))
    where = (
        "training.secure_aggregation" if description.training.secure_aggregation
        else f"members[{description.names.index(first)}].training.secure_aggregation"
    )
    raise ConfigError(
        where, f"{message(errors[first])}; members with too few neighbours: {', '.join(errors)}. "
        "Give each at least 3 neighbours (e.g. topology = \"complete\") or turn secure_aggregation off",
    )


# --- helpers -------------------------------------------------------------------------


def _member(i: int, raw: Mapping[str, Any], raw_training: Mapping[str, Any]) -> MemberSpec:
    where = f"members[{i}]"
    fields = build(_MemberFields, raw, f"{where}.", tables=("training",))
    for key in ("name", "host"):
        if not getattr(fields, key):
            raise ConfigError(f"{where}.{key}", f"missing; every [[members]] entry needs a {key}")
    if not MEMBER_NAME.fullmatch(fields.name) or fields.name in RESERVED_NAMES:
        raise ConfigError(
            f"{where}.name",
            f"{fields.name!r}: use ASCII letters, digits, '-', '_' and '.', starting with a letter or digit "
            f"(and not {' or '.join(sorted(RESERVED_NAMES))})",
        )
    who = f"member {fields.name!r}"
    if not fields.host.strip("[]") or re.search(r"[\s/@]", fields.host):
        raise ConfigError(f"{where}.host", f"{who}: {fields.host!r} is not a host name or IP address")
    if not 1 <= fields.port <= 65535:
        raise ConfigError(f"{where}.port", f"{who}: must be a TCP port 1..65535, got {fields.port}")
    bind = fields.bind or f"tcp://0.0.0.0:{fields.port}"
    if not re.fullmatch(r"tcp://\S+:(\d+|\*)", bind):
        raise ConfigError(
            f"{where}.bind", f"{who}: {bind!r} is not an endpoint like tcp://0.0.0.0:{fields.port}"
        )
    own = table(raw.get("training", {}), f"{where}.training")
    merged = {**raw_training, **own}
    if "learner" not in own:
        # Same learner: the member tweaks some of its arguments. Its own learner: the
        # shared arguments were meant for another function, so only its own apply.
        merged["learner_args"] = {
            **table(raw_training.get("learner_args", {}), "training.learner_args"),
            **table(own.get("learner_args", {}), f"{where}.training.learner_args"),
        }
    else:
        merged["learner_args"] = own.get("learner_args", {})
    training = build(TrainingSettings, merged, f"{where}.training.")
    return MemberSpec(name=fields.name, host=fields.host, port=fields.port, bind=bind, training=training)


def _check_unique(members: tuple[MemberSpec, ...]) -> None:
    seen_names: dict[str, int] = {}
    seen_endpoints: dict[tuple[str, int], int] = {}
    for i, member in enumerate(members):
        if member.name in seen_names:
            raise ConfigError(
                f"members[{i}].name",
                f"{member.name!r} is already the name of members[{seen_names[member.name]}]; "
                "member names must be unique",
            )
        seen_names[member.name] = i
        key = (member.host.lower().strip("[]"), member.port)
        if key in seen_endpoints:
            other = members[seen_endpoints[key]].name
            raise ConfigError(
                f"members[{i}].port",
                f"{member.name!r} and {other!r} both use {member.endpoint}; "
                "give each member its own host:port",
            )
        seen_endpoints[key] = i
