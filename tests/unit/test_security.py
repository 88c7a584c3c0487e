"""Key files, fingerprints and the allow-list of p2pfl.security."""

from __future__ import annotations

import logging
import os
import stat

import pytest
import zmq

from p2pfl.errors import ConfigError, TransportError
from p2pfl.security import (
    AllowList,
    CurveSecurity,
    KeyPair,
    fingerprint,
    generate_keypair,
    keys_from_directory,
    read_public_key,
    read_secret_key,
    write_keypair,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_generated_pair_is_a_valid_curve_pair() -> None:
    pair = generate_keypair()
    assert len(pair.public) == len(pair.secret) == 40
    assert zmq.curve_public(pair.secret.encode()).decode() == pair.public
    assert generate_keypair().public != pair.public


def test_repr_and_str_never_show_the_secret() -> None:
    pair = generate_keypair()
    for text in (repr(pair), str(pair), repr([pair])):
        assert pair.secret not in text
        assert pair.public in text


def test_written_pair_reads_back_and_pyzmq_reads_our_files(tmp_path) -> None:
    pair = generate_keypair()
    public_path, secret_path = write_keypair(tmp_path, "org-a", pair)
    assert (public_path.name, secret_path.name) == ("org-a.key", "org-a.key_secret")
    assert read_public_key(public_path) == pair.public
    assert read_secret_key(secret_path) == pair
    # the czmq/pyzmq certificate layout: their loader reads our files
    assert zmq.auth.load_certificate(secret_path) == (pair.public.encode(), pair.secret.encode())
    assert zmq.auth.load_certificate(public_path) == (pair.public.encode(), None)
    assert pair.secret not in public_path.read_text()


def test_pyzmq_certificates_and_bare_keys_are_read(tmp_path) -> None:
    public_file, secret_file = zmq.auth.create_certificates(tmp_path, "peer")
    os.chmod(secret_file, 0o600)
    pair = read_secret_key(secret_file)
    assert read_public_key(public_file) == pair.public
    bare = tmp_path / "bare.key"
    bare.write_text(pair.public + "\n")
    assert read_public_key(bare) == pair.public


@posix_only
def test_file_modes_are_600_and_644_whatever_the_umask(tmp_path) -> None:
    old = os.umask(0)  # the most permissive umask must not widen the secret file
    try:
        public_path, secret_path = write_keypair(tmp_path / "keys", "n")
    finally:
        os.umask(old)
    assert _mode(secret_path) == 0o600
    assert _mode(public_path) == 0o644
    assert _mode(tmp_path / "keys") == 0o700
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["n.key", "n.key_secret"]  # no temp files


@posix_only
def test_a_secret_file_readable_by_others_is_refused_with_the_fix(tmp_path) -> None:
    _, secret_path = write_keypair(tmp_path, "n")
    os.chmod(secret_path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        read_secret_key(secret_path)
    assert str(secret_path) in str(info.value)
    os.chmod(secret_path, 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_secret_key(secret_path)
    os.chmod(secret_path, 0o600)
    read_secret_key(secret_path)


def test_existing_keys_are_not_overwritten_unless_asked(tmp_path) -> None:
    write_keypair(tmp_path, "n")
    with pytest.raises(ConfigError, match="overwrite"):
        write_keypair(tmp_path, "n")
    pair = generate_keypair()
    _, secret_path = write_keypair(tmp_path, "n", pair, overwrite=True)
    assert read_secret_key(secret_path) == pair
    with pytest.raises(ConfigError, match="plain file name"):
        write_keypair(tmp_path, "../escape")


def test_broken_or_mismatched_secret_files_are_refused_without_echoing_them(tmp_path) -> None:
    pair, other = generate_keypair(), generate_keypair()
    bad = tmp_path / "bad.key_secret"
    cases = {
        "no secret key": f'curve\n    public-key = "{pair.public}"\n',
        "40 characters": 'curve\n    secret-key = "tooshort"\n',
        "does not belong": f'curve\n    public-key = "{other.public}"\n    secret-key = "{pair.secret}"\n',
    }
    for message, text in cases.items():
        bad.write_text(text)
        os.chmod(bad, 0o600)
        with pytest.raises(ConfigError, match=message) as info:
            read_secret_key(bad)
        assert pair.secret not in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret_key(tmp_path / "missing.key_secret")


def test_fingerprint_is_stable_short_and_distinct() -> None:
    pair = generate_keypair()
    first = fingerprint(pair.public)
    assert first == fingerprint(pair.public.encode()) == fingerprint(KeyPair(pair.public, pair.secret).public)
    assert len(first) == 19 and first.count(":") == 3
    assert all(c in "0123456789abcdef:" for c in first)
    assert fingerprint(generate_keypair().public) != first
    # a known vector: the all-zero key (Z85 of 32 zero bytes)
    assert fingerprint("0" * 40) == "6668:7aad:f862:bd77"  # sha256 of 32 zero bytes
    with pytest.raises(ConfigError):
        fingerprint("not a key")


class _Source:
    """A loader whose answer the test changes between reloads."""

    def __init__(self, members):
        self.members = members
        self.fail = False

    def __call__(self):
        if self.fail:
            raise OSError("registry unreachable")
        return self.members


def test_allowlist_lookups_and_reload_reports_added_and_removed() -> None:
    keys = {name: generate_keypair().public for name in "abcd"}
    source = _Source({"a": keys["a"], "b": keys["b"]})
    allow = AllowList(source)
    assert allow.names == {"a", "b"} and len(allow) == 2 and "a" in allow
    assert allow.member_for_key(keys["a"]) == "a"
    assert allow.member_for_key(keys["a"].encode()) == "a"
    assert allow.member_for_key(keys["c"]) is None and allow.member_for_key(None) is None
    assert allow.key_for("b") == keys["b"] and allow.key_for("c") is None

    source.members = {"a": keys["a"], "c": keys["c"]}
    assert allow.reload() == ({"c"}, {"b"})
    assert allow.names == {"a", "c"}
    assert allow.member_for_key(keys["b"]) is None and allow.key_for("b") is None
    assert allow.reload() == (set(), set())
    # a changed key is both: the old key stops working, the new one starts
    source.members = {"a": keys["d"], "c": keys["c"]}
    assert allow.reload() == ({"a"}, {"a"})
    assert allow.member_for_key(keys["a"]) is None and allow.member_for_key(keys["d"]) == "a"


def test_a_failing_or_invalid_reload_keeps_the_old_list_and_logs(caplog) -> None:
    key = generate_keypair().public
    source = _Source({"a": key})
    allow = AllowList(source)
    source.fail = True
    with caplog.at_level(logging.ERROR, logger="p2pfl.security"):
        assert allow.reload() == (set(), set())
    assert "registry unreachable" in caplog.text
    assert allow.member_for_key(key) == "a"
    source.fail = False
    for invalid in ({"a": "short"}, {"a": key, "b": key}, {"": key}, ["a"]):
        source.members = invalid
        assert allow.reload() == (set(), set())
        assert allow.names == {"a"}


def test_a_first_load_that_fails_is_a_config_error() -> None:
    def broken():
        raise OSError("no such file")

    with pytest.raises(ConfigError, match="no such file"):
        AllowList(broken)
    with pytest.raises(ConfigError, match="share the key"):
        key = generate_keypair().public
        AllowList(lambda: {"a": key, "b": key})


def test_keys_from_directory_follows_the_key_files(tmp_path) -> None:
    pairs = {name: generate_keypair() for name in ("org-a", "org-b")}
    for name, pair in pairs.items():
        write_keypair(tmp_path, name, pair)
    allow = AllowList(lambda: keys_from_directory(tmp_path))
    assert allow.names == {"org-a", "org-b"}  # *.key_secret files are not members
    (tmp_path / "org-b.key").unlink()
    assert allow.reload() == (set(), {"org-b"})
    with pytest.raises(ConfigError, match="does not exist"):
        keys_from_directory(tmp_path / "nope")


def test_curve_security_needs_the_peer_on_the_allowlist() -> None:
    own, peer = generate_keypair(), generate_keypair()
    allow = AllowList(lambda: {"me": own.public, "peer": peer.public})
    security = CurveSecurity(own, allow)
    assert own.secret not in repr(security)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    try:
        security.configure_client(sock, "peer")
        assert sock.getsockopt(zmq.MECHANISM) == zmq.CURVE
        with pytest.raises(TransportError, match="allow-list"):
            security.configure_client(sock, "stranger")
    finally:
        sock.close(linger=0)
        context.term()
    assert security.member_for(peer.public) == "peer"
    assert security.member_for(None) is None and security.member_for("") is None
