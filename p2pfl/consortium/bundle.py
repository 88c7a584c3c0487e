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

Each organisation receives only its own ``OUT/<member>`` directory. Re-running init
with ``force`` replaces only these files (see :func:`bundle_files`): anything else in a
bundle (the organisation's learner module, ``state/``, notes) is left alone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from p2pfl._files import write_atomically
from p2pfl._toml import dumps
from p2pfl.consortium.description import (
    Description,
    TrainingSettings,
    build_description_topology,
    load_description,
)
from p2pfl.deploy.consortium_file import Consortium, Member, write_consortium
from p2pfl.errors import ConfigError
from p2pfl.security.identity import identity_from_curve
from p2pfl.security.keys import (
    KeyPair,
    fingerprint,
    generate_keypair,
    read_public_key,
    read_secret_key,
    write_keypair,
)
from p2pfl.topology import write_topology_file

__all__ = [
    "CONSORTIUM_FILE",
    "InitResult",
    "KEYS_DIR",
    "NODE_FILE",
    "NODE_KEYS",
    "STATE_DIR",
    "TOPOLOGY_FILE",
    "bundle_files",
    "init_consortium",
    "node_document",
]

log = logging.getLogger(__name__)

CONSORTIUM_FILE = "consortium.toml"
TOPOLOGY_FILE = "topology.graphml"
NODE_FILE = "node.toml"
KEYS_DIR = "keys"
STATE_DIR = "state"
#: What init writes into every node.toml besides the [training] settings (in this order).
_BUNDLE_KEYS = ("name", "bind", "consortium", "secret_key", "public_key", "state_dir")
#: The keys init writes into every node.toml: :func:`node_document` builds its table
#: from this tuple, so the two cannot drift apart.
NODE_KEYS = (*_BUNDLE_KEYS, *(f.name for f in dataclasses.fields(TrainingSettings)))


@dataclass(frozen=True)
class InitResult(Sequence[Path]):
    """What init wrote: a sequence of the bundle directories (in member order), plus
    what a re-run (``force``) replaced or removed.

    Attributes:
        bundles: ``OUT/<member>`` for every member, in member order.
        replaced: files that existed and were overwritten.
        removed: files of former members' bundles that were deleted (their keys included).
        changed_settings: node.toml -> the keys whose old value differs from the new one
            or that the new file drops (a hand edit there is lost).
    """

    bundles: tuple[Path, ...]
    replaced: tuple[Path, ...] = ()
    removed: tuple[Path, ...] = ()
    changed_settings: dict[Path, tuple[str, ...]] = field(default_factory=dict)

    @overload
    def __getitem__(self, index: int) -> Path: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Path]: ...
    def __getitem__(self, index: int | slice) -> Path | Sequence[Path]:
        return self.bundles[index]

    def __len__(self) -> int:
        return len(self.bundles)

    def __iter__(self) -> Iterator[Path]:
        return iter(self.bundles)


def bundle_files(name: str) -> tuple[str, ...]:
    """The files init writes into member ``name``'s bundle (relative to it), and the only
    ones a forced re-run overwrites; ``state/`` is created when missing, never emptied."""
    return (NODE_FILE, CONSORTIUM_FILE, TOPOLOGY_FILE, f"{KEYS_DIR}/{name}.key", f"{KEYS_DIR}/{name}.key_secret")


def init_consortium(
    description_path: str | Path, out_dir: str | Path, *, force: bool = False, keep_keys: bool = False
) -> InitResult:
    """Write every member's bundle for the consortium described in ``description_path``.

    Everything is written to a staging folder inside ``out_dir`` first and moved into
    place only once complete, so a failure leaves an existing ``out_dir`` as it was.

    Args:
        description_path: the description TOML.
        out_dir: where the bundles go; created if missing.
        force: rewrite an ``out_dir`` that already holds files: only the files init
            writes (:func:`bundle_files`) are replaced, everything else in a bundle is
            left alone. A member no longer described loses those files, its key pair
            included (the new consortium.toml revokes it anyway); its other files stay.
        keep_keys: reuse each member's key pair found in ``out_dir`` (a member without
            one gets a new pair), so adding a member does not rotate everyone's keys.

    Returns:
        The bundle directories, in member order, with the files replaced or removed.

    Raises:
        ConfigError: invalid description, ``out_dir`` not empty without ``force``, or a
            kept secret key that cannot be used (e.g. readable by others).
        TopologyError: the topology cannot be built (e.g. disconnected).
    """
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
                signing_key=identity_from_curve(spec.name, pairs[spec.name].secret).public,
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
            write_atomically(bundle / NODE_FILE, dumps(node_document(description, index)), mode=0o644)
            # Exists up front so a read-only bundle mount can take a state volume on top.
            (bundle / STATE_DIR).mkdir(mode=0o700)
        _check_targets(out, description)
        result = _move_into_place(staging, out, description)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %d bundles for %s to %s", len(description.members), description.name, out)
    if result.replaced:
        log.info("replaced %s", ", ".join(str(p) for p in result.replaced))
    return result


def node_document(description: Description, index: int) -> dict[str, Any]:
    """The node.toml contents of member ``index`` (paths relative to node.toml): its own
    keys, then every ``[training]`` setting (:data:`NODE_KEYS`, in that order)."""
    spec = description.members[index]
    values = {
        "name": spec.name,
        "bind": spec.bind,
        "consortium": CONSORTIUM_FILE,
        "secret_key": f"{KEYS_DIR}/{spec.name}.key_secret",
        "public_key": f"{KEYS_DIR}/{spec.name}.key",
        "state_dir": STATE_DIR,
        **dataclasses.asdict(spec.training),
    }
    values["learner_args"] = {**spec.training.learner_args, "index": index}
    return {key: values[key] for key in NODE_KEYS}


def _check_out_dir(out: Path, *, force: bool, keep_keys: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} is a file; give a directory for the bundles")
    if out.is_dir() and any(out.iterdir()) and not force:
        flags = "--force --keep-keys" if keep_keys else "--force"
        hint = "" if keep_keys else " (add --keep-keys to keep the members' key pairs)"
        raise ConfigError(
            "out", f"{out} already holds files; re-run with {flags} to rewrite the bundles in it{hint}"
        )


def _existing_keypair(out: Path, name: str) -> KeyPair | None:
    """The key pair in ``out/<name>/keys``, or None if that bundle has no secret key."""
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


def _check_targets(out: Path, description: Description) -> None:
    """Refuse before moving anything when a folder sits where init writes a file."""
    targets = [out / TOPOLOGY_FILE, out / CONSORTIUM_FILE]
    for name in description.names:
        if (out / name).is_dir():
            targets.extend(out / name / file for file in bundle_files(name))
    for target in targets:
        if target.is_dir() and not target.is_symlink():
            raise ConfigError("out", f"{target} is a directory where init writes a file: move it away and re-run")


def _move_into_place(staging: Path, out: Path, description: Description) -> InitResult:
    replaced: list[Path] = []
    changed: dict[Path, tuple[str, ...]] = {}
    removed = _remove_former_members(out, set(description.names), staging)
    for name in description.names:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            _update_bundle(staging / name, target, bundle_files(name), replaced, changed)
            continue
        if target.exists() or target.is_symlink():  # a file or a link where the bundle goes
            target.unlink()
            replaced.append(target)
        (staging / name).rename(target)
    for file in (TOPOLOGY_FILE, CONSORTIUM_FILE):  # consortium.toml last: it refers to the graph
        if (out / file).exists():
            replaced.append(out / file)
        (staging / file).replace(out / file)
    return InitResult(tuple(out / n for n in description.names), tuple(replaced), tuple(removed), changed)


def _update_bundle(
    new: Path, target: Path, files: Sequence[str], replaced: list[Path], changed: dict[Path, tuple[str, ...]]
) -> None:
    """Move init's own files from ``new`` over those in ``target``; nothing else is touched."""
    for relative in files:
        source, destination = new / relative, target / relative
        if not destination.parent.exists():
            destination.parent.mkdir(mode=0o700)  # keys/: only the owner may list it
        if destination.exists() or destination.is_symlink():
            replaced.append(destination)
            if relative == NODE_FILE:
                differing = _changed_settings(destination, source)
                if differing:
                    changed[destination] = differing
                    log.warning(
                        "%s replaced: the new file changes %s (a hand edit there is lost; "
                        "put lasting settings in the description)", destination, ", ".join(differing),
                    )
        os.replace(source, destination)
    # Exists up front so a read-only bundle mount can take a state volume on top.
    (target / STATE_DIR).mkdir(mode=0o700, exist_ok=True)


def _changed_settings(old: Path, new: Path) -> tuple[str, ...]:
    """The node.toml keys whose value ``new`` changes or drops (all of them if ``old`` is unreadable)."""
    fresh = tomllib.loads(new.read_text())
    try:
        before = tomllib.loads(old.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ("(unreadable file)",)
    return tuple(sorted(key for key in before.keys() | fresh.keys() if before.get(key) != fresh.get(key)))


def _remove_former_members(out: Path, names: set[str], staging: Path) -> list[Path]:
    """Delete init's files from the bundles of members no longer described.

    A directory with a node.toml is a bundle init wrote for a member who is gone; its
    key pair goes, other files stay (the folder goes too once nothing else is left).
    """
    removed: list[Path] = []
    for old in sorted(out.iterdir()):
        if old == staging or old.name in names or not old.is_dir() or not (old / NODE_FILE).is_file():
            continue
        for relative in bundle_files(old.name):
            path = old / relative
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed.append(path)
        for folder in (old / KEYS_DIR, old / STATE_DIR, old):  # only if empty: never others' files
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        kept = " (other files in it were left)" if old.exists() else ""
        log.info("removed the bundle of former member %s%s", old.name, kept)
    return removed
