"""``init_consortium``: turn a description into one bundle per member.

Layout of ``OUT``::

    OUT/consortium.toml           public file (copy), also the allow-list
    OUT/topology.graphml          the graph it references
    OUT/<member>/node.toml        that member's node config
    OUT/<member>/consortium.toml  same public file
    OUT/<member>/topology.graphml same graph
    OUT/<member>/keys/<member>.key         public key (0644)
    OUT/<member>/keys/<member>.key_secret  secret key (0600), only in this bundle
    OUT/<member>/state/           empty; the node's checkpoints and metrics go here

Each organisation receives only its own ``OUT/<member>`` directory.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from p2pfl.consortium._parse import write_atomically
from p2pfl.consortium._toml import dumps
from p2pfl.consortium.description import Description, build_description_topology, load_description
from p2pfl.consortium.public import Consortium, Member, write_consortium
from p2pfl.errors import ConfigError

__all__ = [
    "CONSORTIUM_FILE",
    "KEYS_DIR",
    "NODE_FILE",
    "NODE_KEYS",
    "STATE_DIR",
    "TOPOLOGY_FILE",
    "init_consortium",
    "node_document",
]

log = logging.getLogger(__name__)

CONSORTIUM_FILE = "consortium.toml"
TOPOLOGY_FILE = "topology.graphml"
NODE_FILE = "node.toml"
KEYS_DIR = "keys"
STATE_DIR = "state"
#: The keys init writes into every node.toml (the fixed node.toml format).
NODE_KEYS = (
    "name",
    "bind",
    "consortium",
    "secret_key",
    "public_key",
    "learner",
    "learner_args",
    "rounds",
    "local_epochs",
    "round_timeout",
    "start",
    "state_dir",
    "discovery",
)


def init_consortium(
    description_path: str | Path, out_dir: str | Path, *, force: bool = False, keep_keys: bool = False
) -> list[Path]:
    """Write every member's bundle for the consortium described in ``description_path``.

    Everything is written to a staging folder inside ``out_dir`` first and moved into
    place only once complete, so a failure leaves an existing ``out_dir`` as it was.

    Args:
        description_path: the description TOML.
        out_dir: where the bundles go; created if missing.
        force: rewrite an ``out_dir`` that already holds files. Bundles of members no
            longer described are removed (their keys are revoked by the new
            consortium.toml anyway); other files in ``out_dir`` are left alone.
        keep_keys: reuse each member's key pair found in ``out_dir`` (a member without
            one gets a new pair), so adding a member does not rotate everyone's keys.

    Returns:
        The bundle directories, in member order.

    Raises:
        ConfigError: invalid description, ``out_dir`` not empty without ``force``, or a
            kept secret key that cannot be used (e.g. readable by others).
        TopologyError: the topology cannot be built (e.g. disconnected).
    """
    from p2pfl.security.keys import KeyPair, fingerprint, generate_keypair, write_keypair
    from p2pfl.topology import write_topology_file

    description = load_description(description_path)
    topology = build_description_topology(description)
    out = Path(out_dir)
    _check_out_dir(out, force=force, keep_keys=keep_keys)

    pairs: dict[str, KeyPair] = {}
    for spec in description.members:
        kept = _existing_keypair(out, spec.name) if keep_keys else None
        if kept is not None:
            log.info("%s: keeping key pair %s", spec.name, fingerprint(kept.public))
        pairs[spec.name] = kept or generate_keypair()
    consortium = Consortium(
        name=description.name,
        topology=TOPOLOGY_FILE,
        mixing=description.mixing,
        seed=description.seed,
        members=tuple(
            Member(
                name=spec.name,
                endpoint=spec.endpoint,
                public_key=pairs[spec.name].public,
                fingerprint=fingerprint(pairs[spec.name].public),
            )
            for spec in description.members
        ),
    )

    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".init-", dir=out))
    try:
        write_consortium(consortium, staging / CONSORTIUM_FILE)
        write_topology_file(topology.graph, staging / TOPOLOGY_FILE)
        for index, spec in enumerate(description.members):
            bundle = staging / spec.name
            bundle.mkdir(mode=0o755)
            shutil.copyfile(staging / CONSORTIUM_FILE, bundle / CONSORTIUM_FILE)
            shutil.copyfile(staging / TOPOLOGY_FILE, bundle / TOPOLOGY_FILE)
            write_keypair(bundle / KEYS_DIR, spec.name, pairs[spec.name])
            write_atomically(bundle / NODE_FILE, dumps(node_document(description, index)), 0o644)
            # Exists up front so a read-only bundle mount can take a state volume on top.
            (bundle / STATE_DIR).mkdir(mode=0o700)
        _move_into_place(staging, out, description)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %d bundles for %s to %s", len(description.members), description.name, out)
    return [out / spec.name for spec in description.members]


def node_document(description: Description, index: int) -> dict[str, Any]:
    """The node.toml contents of member ``index`` (paths relative to node.toml)."""
    spec = description.members[index]
    training = spec.training
    return {
        "name": spec.name,
        "bind": spec.bind,
        "consortium": CONSORTIUM_FILE,
        "secret_key": f"{KEYS_DIR}/{spec.name}.key_secret",
        "public_key": f"{KEYS_DIR}/{spec.name}.key",
        "learner": training.learner,
        "learner_args": {**training.learner_args, "index": index},
        "rounds": training.rounds,
        "local_epochs": training.local_epochs,
        "local_steps": training.local_steps,
        "round_timeout": training.round_timeout,
        "torch_threads": training.torch_threads,
        "start": training.start,
        "state_dir": STATE_DIR,
        "discovery": training.discovery,
        "secure_aggregation": training.secure_aggregation,
    }


def _check_out_dir(out: Path, *, force: bool, keep_keys: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} is a file; give a directory for the bundles")
    if out.is_dir() and any(out.iterdir()) and not force:
        flags = "--force --keep-keys" if keep_keys else "--force"
        hint = "" if keep_keys else " (add --keep-keys to keep the members' key pairs)"
        raise ConfigError(
            "out", f"{out} already holds files; re-run with {flags} to rewrite the bundles in it{hint}"
        )


def _existing_keypair(out: Path, name: str) -> Any:
    """The key pair in ``out/<name>/keys``, or None if that bundle has no secret key."""
    from p2pfl.security.keys import read_public_key, read_secret_key

    secret = out / name / KEYS_DIR / f"{name}.key_secret"
    if not secret.exists():
        log.info("%s: no key pair in %s, generating one", name, secret.parent)
        return None
    pair = read_secret_key(secret)  # refuses group/world-readable files and mismatched pairs
    public = secret.with_name(f"{name}.key")
    if public.exists() and read_public_key(public) != pair.public:
        raise ConfigError(
            str(public), f"does not belong to {secret.name}; delete both to get a new pair, or fix the files"
        )
    return pair


def _move_into_place(staging: Path, out: Path, description: Description) -> None:
    names = set(description.names)
    for old in sorted(out.iterdir()):
        # A directory with a node.toml is a bundle we wrote earlier for a member who is gone.
        if old.is_dir() and old.name not in names and (old / NODE_FILE).is_file() and old != staging:
            log.info("removing the bundle of former member %s", old.name)
            shutil.rmtree(old)
    for name in description.names:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            if (target / STATE_DIR).is_dir():
                # a node run straight from OUT keeps its checkpoints across re-inits
                (staging / name / STATE_DIR).rmdir()
                (target / STATE_DIR).rename(staging / name / STATE_DIR)
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        (staging / name).rename(target)
    for file in (TOPOLOGY_FILE, CONSORTIUM_FILE):  # consortium.toml last: it refers to the graph
        (staging / file).replace(out / file)
