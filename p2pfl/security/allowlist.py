"""The allow-list: which members may connect, and by which public key.

The list is loaded through a callable so it can come from anywhere (a directory of
``*.key`` files, a config file, a consortium registry) and be reloaded while nodes run:
revoking a member is a reload without it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from p2pfl.errors import ConfigError
from p2pfl.security.keys import fingerprint, read_public_key, validate_key

__all__ = ["AllowList", "keys_from_directory"]

log = logging.getLogger(__name__)


class AllowList:
    """Member name <-> Curve public key, swapped atomically on reload.

    Readers (the ZAP handler, the node checking each message) see either the old or the
    new list, never a mix: each reload builds new maps and replaces both at once.

    Args:
        load: returns member name -> public key (Z85 text). Called now and on every
            :meth:`reload`.

    Raises:
        ConfigError: the first load fails or returns an invalid list (a node must not
            start with an allow-list it could not read).
    """

    def __init__(self, load: Callable[[], Mapping[str, str]]) -> None:
        self._load = load
        self._lock = threading.Lock()  # serialises reloads; lookups need no lock
        try:
            self._by_name, self._by_key = _validated(load())
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError("allow_list", f"cannot load the allow-list: {exc}") from exc
        log.info("allow-list loaded: %d members", len(self._by_name))

    def reload(self) -> tuple[set[str], set[str]]:
        """Load the list again and switch to it.

        A member whose key changed is reported as both removed and added (its old key
        no longer works, its new one does).

        Returns:
            (added names, removed names); both empty if the load failed, in which case
            the old list stays in force and the error is logged.
        """
        with self._lock:
            try:
                by_name, by_key = _validated(self._load())
            except Exception:
                log.exception("allow-list reload failed; keeping the current %d members", len(self._by_name))
                return set(), set()
            old = self._by_name
            added = {n for n, k in by_name.items() if old.get(n) != k}
            removed = {n for n, k in old.items() if by_name.get(n) != k}
            self._by_name, self._by_key = by_name, by_key  # readers see one or the other
        if added or removed:
            log.info(
                "allow-list reloaded: %d members; added %s; removed %s",
                len(by_name), sorted(added) or "none", sorted(removed) or "none",
            )
        return added, removed

    def member_for_key(self, public_key: str | bytes | None) -> str | None:
        """The member holding ``public_key`` (Z85), or None if it is not on the list."""
        if public_key is None:
            return None
        if isinstance(public_key, bytes):
            public_key = public_key.decode("ascii", "replace")
        return self._by_key.get(public_key)

    def key_for(self, name: str) -> str | None:
        """The public key of member ``name``, or None if it is not on the list."""
        return self._by_name.get(name)

    @property
    def names(self) -> frozenset[str]:
        """The current members."""
        return frozenset(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __repr__(self) -> str:
        return f"AllowList({len(self._by_name)} members)"


def keys_from_directory(directory: str | os.PathLike[str]) -> dict[str, str]:
    """Member name -> public key from the ``<name>.key`` files in ``directory``.

    The czmq/pyzmq convention; pass ``lambda: keys_from_directory(path)`` as the loader
    so a reload picks up added and deleted files.

    Raises:
        ConfigError: the directory is missing or a key file is invalid.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ConfigError(str(folder), "allow-list directory does not exist; create it with the members' .key files")
    return {path.stem: read_public_key(path) for path in sorted(folder.glob("*.key"))}


def _validated(members: Mapping[str, str]) -> tuple[Mapping[str, str], Mapping[str, str]]:
    if not isinstance(members, Mapping):
        raise ConfigError("allow_list", f"the loader must return a mapping name -> key, got {type(members).__name__}")
    by_name: dict[str, str] = {}
    by_key: dict[str, str] = {}
    for name, key in members.items():
        if not isinstance(name, str) or not name:
            raise ConfigError("allow_list", f"member names must be non-empty strings, got {name!r}")
        key = validate_key(key, f"allow_list[{name!r}]")
        if key in by_key:
            # one key, two names: the node could not tell which member sent a message
            raise ConfigError(
                "allow_list",
                f"members {by_key[key]!r} and {name!r} share the key {fingerprint(key)}; give each its own",
            )
        by_name[name] = key
        by_key[key] = name
    return MappingProxyType(by_name), MappingProxyType(by_key)
