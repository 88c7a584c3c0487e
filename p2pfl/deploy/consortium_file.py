"""The public consortium file (``consortium.toml``): members, endpoints, public keys.

Every bundle carries the same copy. It is also the allow-list: a member is admitted
when it is listed here and revoked when it is removed, so nodes re-read it while they
run (see :func:`allow_list_loader`). It holds no secrets.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pfl._files import write_atomically
from p2pfl._toml import build, dumps, message, read_toml, table
from p2pfl.errors import ConfigError
from p2pfl.security.keys import fingerprint, validate_key
from p2pfl.topology import build_topology
from p2pfl.topology.mixing import resolve_mixing_method

__all__ = [
    "Consortium",
    "Member",
    "allow_list_loader",
    "load_consortium",
    "load_consortium_topology",
    "write_consortium",
]

#: What a consortium and a member may be called (the description is held to the same).
CONSORTIUM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
MEMBER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ENDPOINT = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]@]+):(\d+)")


@dataclass(frozen=True)
class Member:
    """One member as every other member sees it.

    Attributes:
        name: unique member name.
        endpoint: where the others connect, ``tcp://host:port``.
        public_key: its CurveZMQ public key (40 characters of Z85).
        fingerprint: short hash of the public key, for comparing keys by eye.
        signing_key: its Ed25519 public key (Z85), derived from its Curve secret key; it
            verifies what the member signs (presence on the MQTT broker). Empty in files
            written before signing existed: their members' announcements cannot be verified.
    """

    name: str = ""
    endpoint: str = ""
    public_key: str = ""
    fingerprint: str = ""
    signing_key: str = ""

    @property
    def host(self) -> str:
        """The host part of the endpoint (without IPv6 brackets)."""
        match = ENDPOINT.fullmatch(self.endpoint)
        return match.group(1).strip("[]") if match else ""

    @property
    def port(self) -> int:
        """The port part of the endpoint."""
        match = ENDPOINT.fullmatch(self.endpoint)
        return int(match.group(2)) if match else 0


@dataclass(frozen=True)
class Consortium:
    """The contents of consortium.toml.

    Attributes:
        name: the consortium's name.
        topology: the topology file, relative to consortium.toml.
        mixing: mixing-matrix method every node uses.
        seed: the seed the topology was generated with.
        members: the members; member ``i`` is node ``i`` of the topology.
    """

    name: str
    topology: str
    mixing: str
    seed: int
    members: tuple[Member, ...]

    @property
    def names(self) -> list[str]:
        """Member names in index order."""
        return [m.name for m in self.members]

    def member(self, name: str) -> Member:
        """The member called ``name``.

        Raises:
            ConfigError: no such member (field ``name``).
        """
        for member in self.members:
            if member.name == name:
                return member
        raise ConfigError(
            "name", f"{name!r} is not a member of {self.name}; members: {', '.join(self.names)}"
        )

    def allow_list(self) -> dict[str, str]:
        """Member name -> public key (Z85)."""
        return {m.name: m.public_key for m in self.members}

    def signing_keys(self) -> dict[str, str]:
        """Member name -> Ed25519 signing public key (Z85), for the members that list one."""
        return {m.name: m.signing_key for m in self.members if m.signing_key}


@dataclass(frozen=True)
class _Header:
    name: str = ""
    topology: str = ""
    mixing: str = "metropolis"
    seed: int = 0


def load_consortium(path: str | Path) -> Consortium:
    """Read and validate a consortium.toml.

    Checks every key, each public key's form and that each fingerprint belongs to its
    key, and that names and keys (signing keys too) are unique. ``signing_key`` is optional
    (files written before it existed); whoever verifies signatures must say so when it is missing. Duplicate endpoints are left to
    :func:`~p2pfl.consortium.check.check_bundles`, which reports rather than raises.

    Raises:
        ConfigError: naming the key at fault (``members[1].public_key``) and the file.
    """
    path = Path(path)
    values = read_toml(path, "consortium")
    try:
        return _parse(values)
    except ConfigError as exc:
        raise ConfigError(exc.field, f"{message(exc)} (in {path})") from None


def write_consortium(consortium: Consortium, path: str | Path) -> None:
    """Write ``consortium`` as TOML (mode 0644), replacing the file atomically."""
    document: dict[str, Any] = {
        "name": consortium.name,
        "topology": consortium.topology,
        "mixing": consortium.mixing,
        "seed": consortium.seed,
        "members": [
            {
                "name": m.name, "endpoint": m.endpoint, "public_key": m.public_key, "fingerprint": m.fingerprint,
                **({"signing_key": m.signing_key} if m.signing_key else {}),
            }
            for m in consortium.members
        ],
    }
    write_atomically(Path(path), dumps(document), mode=0o644)


def allow_list_loader(path: str | Path) -> Callable[[], dict[str, str]]:
    """A loader for :class:`p2pfl.security.allowlist.AllowList` reading consortium.toml.

    Each call re-reads the file, so re-distributing consortium.toml and reloading
    admits added members and revokes removed ones. A call on an invalid file raises
    ConfigError; ``AllowList.reload`` then keeps the list it had.
    """
    file = Path(path)

    def load() -> dict[str, str]:
        return load_consortium(file).allow_list()

    return load


def load_consortium_topology(path: str | Path) -> tuple[Consortium, Any]:
    """Read consortium.toml and build its topology, checking that nodes = members.

    Returns:
        (consortium, :class:`~p2pfl.topology.Topology`).

    Raises:
        ConfigError: the file is invalid, or the graph's node names differ from the members.
        TopologyError: the topology file is missing, unreadable or unusable (e.g. disconnected).
    """
    path = Path(path)
    consortium = load_consortium(path)
    file = Path(consortium.topology)
    file = file if file.is_absolute() else path.resolve().parent / file
    topology = build_topology(str(file), seed=consortium.seed, mixing=consortium.mixing)
    if topology.names != consortium.names:
        missing = [m for m in consortium.names if m not in topology.names]
        extra = [x for x in topology.names if x not in consortium.names]
        detail = (
            f"members not in the graph: {missing or 'none'}; graph nodes that are no member: {extra or 'none'}"
            if missing or extra
            else "same names, different order"
        )
        raise ConfigError(
            "topology", f"the nodes of {file} must be the members of {path} in the same order; {detail}"
        )
    return consortium, topology


# --- parsing -------------------------------------------------------------------------


def _parse(values: dict[str, Any]) -> Consortium:
    header = build(_Header, values, "", tables=("members",))
    if not CONSORTIUM_NAME.fullmatch(header.name):
        raise ConfigError("name", f"{header.name!r}: use letters, digits, '-' and '_'")
    if not header.topology:
        raise ConfigError("topology", "missing; give the topology file, relative to this file")
    try:
        resolve_mixing_method(header.mixing)
    except ValueError as exc:
        raise ConfigError("mixing", str(exc)) from None
    if header.seed < 0:
        raise ConfigError("seed", f"must be >= 0, got {header.seed}")
    raw_members = values.get("members")
    if not isinstance(raw_members, list) or len(raw_members) < 2:
        raise ConfigError("members", "a consortium needs at least 2 [[members]] entries")
    members: list[Member] = []
    names: dict[str, int] = {}
    keys: dict[str, int] = {}
    signing: dict[str, int] = {}
    for i, raw in enumerate(raw_members):
        where = f"members[{i}]"
        member = build(Member, table(raw, where), f"{where}.")
        if not MEMBER_NAME.fullmatch(member.name):
            raise ConfigError(f"{where}.name", f"{member.name!r}: use letters, digits, '-', '_' and '.'")
        if member.name in names:
            raise ConfigError(
                f"{where}.name", f"{member.name!r} is listed twice (members[{names[member.name]}])"
            )
        names[member.name] = i
        if not ENDPOINT.fullmatch(member.endpoint) or not 1 <= member.port <= 65535:
            raise ConfigError(f"{where}.endpoint", f"{member.endpoint!r} is not like tcp://10.0.0.7:7002")
        validate_key(member.public_key, f"{where}.public_key")
        if member.public_key in keys:
            # one key for two names: a node could not tell which member sent a message
            raise ConfigError(
                f"{where}.public_key",
                f"{member.name!r} has the same key as members[{keys[member.public_key]}]; "
                "every member needs its own key pair",
            )
        keys[member.public_key] = i
        expected = fingerprint(member.public_key)
        if member.fingerprint != expected:
            raise ConfigError(
                f"{where}.fingerprint",
                f"{member.fingerprint!r} does not belong to {member.name!r}'s public key (expected {expected}); "
                "the file was edited by hand: re-run 'p2pfl consortium init --force --keep-keys'",
            )
        if member.signing_key:
            validate_key(member.signing_key, f"{where}.signing_key")
            if member.signing_key in signing:
                raise ConfigError(
                    f"{where}.signing_key",
                    f"{member.name!r} has the same signing key as members[{signing[member.signing_key]}]; "
                    "re-run 'p2pfl consortium init --force --keep-keys'",
                )
            signing[member.signing_key] = i
        members.append(member)
    return Consortium(
        name=header.name,
        topology=header.topology,
        mixing=header.mixing,
        seed=header.seed,
        members=tuple(members),
    )
