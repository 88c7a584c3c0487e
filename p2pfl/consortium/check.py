"""``check_bundles``: find what would stop a consortium from working, before rollout.

Problems are returned, not raised, so one run lists all of them. Nothing here prints
or returns key material: key mismatches are reported by fingerprint.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from p2pfl._toml import read_toml
from p2pfl.consortium.bundle import CONSORTIUM_FILE, KEYS_DIR, NODE_FILE, NODE_KEYS
from p2pfl.deploy.config import load_node_config
from p2pfl.deploy.consortium_file import Consortium, Member, load_consortium, load_consortium_topology
from p2pfl.errors import P2PFLError
from p2pfl.privacy.neighbourhood import secure_neighbourhood_errors
from p2pfl.security.keys import fingerprint, read_public_key

__all__ = ["check_bundles"]


def check_bundles(out_dir: str | Path) -> list[str]:
    """Check the bundles written by ``init_consortium`` into ``out_dir``.

    Checks that ``out_dir/consortium.toml`` is valid, its topology connected and named
    after the members, endpoints unique, and for each member's bundle: node.toml has
    every field and names this member, consortium.toml and the topology file are
    identical to ``out_dir``'s, the secret key is mode 0600 and belongs to the public key
    listed for the member, and no other member's secret key is in it; and that every
    member whose node.toml turns on secure aggregation has enough neighbours for it.

    Returns:
        One line per problem, each starting with what it concerns; empty if all is well.
    """
    out = Path(out_dir)
    public = out / CONSORTIUM_FILE
    if not out.is_dir():
        return [f"{out}: not a directory of bundles"]
    try:
        consortium = load_consortium(public)
    except P2PFLError as exc:
        return [f"{public}: {exc}"]  # nothing else can be checked against an unreadable list
    problems: list[str] = []
    topology = None
    try:
        _, topology = load_consortium_topology(public)
    except P2PFLError as exc:  # disconnected, unreadable, or nodes != members
        problems.append(f"topology: {exc}")
    problems.extend(_duplicate_endpoints(consortium))
    reference = public.read_bytes()
    graph_file = out / consortium.topology
    graph = graph_file.read_bytes() if graph_file.is_file() else None
    for index, member in enumerate(consortium.members):
        problems.extend(
            f"{member.name}: {problem}"
            for problem in _check_bundle(out / member.name, index, member, consortium, reference, graph)
        )
    if topology is not None:
        problems.extend(_secure_aggregation_problems(out, consortium, topology))
    return problems


def _secure_aggregation_problems(out: Path, consortium: Consortium, topology: Any) -> list[str]:
    """The refusal each node with secure aggregation on would log at start."""
    secure = [m.name for m in consortium.members if _secure_aggregation_on(out / m.name / NODE_FILE)]
    from p2pfl.topology import StaticSchedule

    errors = secure_neighbourhood_errors(StaticSchedule(topology), secure)  # as each node builds it
    return [f"{name}: {out / name / NODE_FILE}: {error}" for name, error in errors.items()]


def _secure_aggregation_on(node_file: Path) -> bool:
    try:
        return read_toml(node_file, "node").get("secure_aggregation") is True
    except P2PFLError:  # an unreadable node.toml is reported by _check_bundle
        return False


def _duplicate_endpoints(consortium: Consortium) -> list[str]:
    problems: list[str] = []
    seen: dict[tuple[str, int], str] = {}
    for member in consortium.members:
        key = (member.host.lower(), member.port)
        if key in seen:
            problems.append(
                f"endpoints: {seen[key]} and {member.name} both use {member.endpoint}; "
                "give each member its own host:port"
            )
        else:
            seen[key] = member.name
    return problems


def _check_bundle(
    bundle: Path, index: int, member: Member, consortium: Consortium, reference: bytes, graph: bytes | None
) -> list[str]:
    if not bundle.is_dir():
        return [f"bundle {bundle} is missing"]
    node_file = bundle / NODE_FILE
    try:
        node = read_toml(node_file, "node")
    except P2PFLError as exc:
        return [str(exc)]
    problems: list[str] = []
    missing = [key for key in NODE_KEYS if key not in node]
    if missing:
        problems.append(f"{node_file} lacks {', '.join(missing)}")
    problems.extend(_check_node_loads(node_file))
    if node.get("name", member.name) != member.name:
        problems.append(f"{node_file} says name = {node.get('name')!r}, but this is {member.name!r}'s bundle")
    args = node.get("learner_args")
    if isinstance(args, dict) and args.get("index", index) != index:
        problems.append(
            f"{node_file}: learner_args.index is {args['index']!r}, but {member.name} is member {index}"
        )

    own_public = _resolve(bundle, node.get("consortium", CONSORTIUM_FILE))
    if not own_public.is_file():
        problems.append(f"{own_public} is missing")
    elif own_public.read_bytes() != reference:
        problems.append(
            f"{own_public} differs from the consortium's consortium.toml; copy the same file to every bundle"
        )
    own_graph = own_public.parent / consortium.topology
    if graph is not None and (not own_graph.is_file() or own_graph.read_bytes() != graph):
        problems.append(f"{own_graph} is missing or differs from the consortium's {consortium.topology}")

    secret = _resolve(bundle, node.get("secret_key", f"{KEYS_DIR}/{member.name}.key_secret"))
    public = _resolve(bundle, node.get("public_key", f"{KEYS_DIR}/{member.name}.key"))
    problems.extend(_check_keys(member, secret, public))
    strays = sorted(p for p in bundle.rglob("*.key_secret") if p.resolve() != secret.resolve())
    if strays:
        problems.append(
            f"holds other secret keys ({', '.join(str(p.relative_to(bundle)) for p in strays)}); "
            "a bundle must carry only its own member's secret key"
        )
    return problems


def _check_node_loads(node_file: Path) -> list[str]:
    """Whether the node would accept this node.toml (its own reader, its own checks)."""
    try:
        load_node_config(node_file)
    except P2PFLError as exc:
        return [f"{node_file}: {exc}"]
    return []


def _check_keys(member: Member, secret: Path, public: Path) -> list[str]:
    problems: list[str] = []
    if not secret.is_file():
        return [f"secret key {secret} is missing"]
    mode = stat.S_IMODE(secret.stat().st_mode)
    if mode & 0o077:
        problems.append(
            f"secret key {secret} has mode {mode:04o}; run 'chmod 600 {secret}' "
            "(and treat the key as leaked if others could read it)"
        )
    try:
        _, secret_key = zmq.auth.load_certificate(secret)
    except (OSError, ValueError) as exc:
        return [*problems, f"cannot read secret key {secret}: {exc}"]
    if not secret_key:
        return [*problems, f"{secret} holds no secret key"]
    derived = zmq.curve_public(secret_key).decode("ascii")
    if derived != member.public_key:
        problems.append(
            f"secret key {secret} does not match the public key listed in consortium.toml "
            f"(listed {member.fingerprint}, secret key gives {_fingerprint(derived)})"
        )
    problems.extend(_check_signing_key(member, secret_key.decode("ascii")))
    try:
        if read_public_key(public) != member.public_key:
            problems.append(
                f"public key {public} ({fingerprint(read_public_key(public))}) is not the one listed "
                f"in consortium.toml ({member.fingerprint})"
            )
    except P2PFLError as exc:
        problems.append(str(exc))
    return problems


def _check_signing_key(member: Member, secret_key: str) -> list[str]:
    from p2pfl.security.identity import identity_from_curve

    if not member.signing_key:
        return [
            f"consortium.toml lists no signing_key for {member.name!r}: its presence on an MQTT broker cannot "
            "be verified; run 'p2pfl consortium init DESCRIPTION --out DIR --force --keep-keys'"
        ]
    if identity_from_curve(member.name, secret_key).public != member.signing_key:
        return [
            f"the signing_key listed for {member.name!r} in consortium.toml is not the one its secret key "
            "gives; run 'p2pfl consortium init DESCRIPTION --out DIR --force --keep-keys'"
        ]
    return []


def _fingerprint(key: str) -> str:
    try:
        return fingerprint(key)
    except P2PFLError:
        return "an invalid key"


def _resolve(base: Path, value: Any) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else base / path
