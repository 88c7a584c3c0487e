"""Signing keys in consortium.toml, and the broker configuration written from the bundles."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest

from p2pfl.consortium import check_bundles, init_consortium, load_consortium
from p2pfl.consortium.broker_config import mosquitto_hash, write_broker_config
from p2pfl.errors import ConfigError
from p2pfl.security import read_secret_key
from p2pfl.security.identity import identity_from_curve

DESCRIPTION = 'name = "demo"\ntopology = "ring"\n[training]\nlearner = "m:f"\n' + "".join(
    f'[[members]]\nname = "{n}"\nhost = "127.0.0.1"\nport = {7300 + i}\n' for i, n in enumerate(("a", "b", "c"))
)


@pytest.fixture
def bundles(tmp_path: Path) -> Path:
    (tmp_path / "desc.toml").write_text(DESCRIPTION)
    init_consortium(tmp_path / "desc.toml", tmp_path / "bundles")
    return tmp_path / "bundles"


def test_init_lists_each_members_signing_key_and_check_verifies_it(bundles: Path) -> None:
    consortium = load_consortium(bundles / "consortium.toml")
    for name in consortium.names:
        secret = read_secret_key(bundles / name / "keys" / f"{name}.key_secret").secret
        assert consortium.signing_keys()[name] == identity_from_curve(name, secret).public
    assert check_bundles(bundles) == []
    line = f'signing_key = "{consortium.signing_keys()["a"]}"\n'
    for file in bundles.rglob("consortium.toml"):  # as an older init wrote it, for member a
        file.write_text(file.read_text().replace(line, ""))
    problems = check_bundles(bundles)
    assert any("lists no signing_key for 'a'" in p for p in problems), problems


def test_a_signing_key_that_is_not_the_members_is_found(bundles: Path) -> None:
    keys = load_consortium(bundles / "consortium.toml").signing_keys()
    for file in bundles.rglob("consortium.toml"):  # a's and b's signing keys swapped
        swapped = file.read_text().replace(keys["a"], "X" * 40).replace(keys["b"], keys["a"])
        file.write_text(swapped.replace("X" * 40, keys["b"]))
    problems = check_bundles(bundles)
    assert any("signing_key listed for 'a'" in p and "not the one its secret key gives" in p for p in problems)


def test_old_files_without_signing_keys_still_load(bundles: Path) -> None:
    text = (bundles / "consortium.toml").read_text()
    old = "\n".join(line for line in text.splitlines() if not line.startswith("signing_key"))
    (bundles / "consortium.toml").write_text(old)
    assert load_consortium(bundles / "consortium.toml").signing_keys() == {}


def test_duplicate_signing_keys_are_refused(bundles: Path) -> None:
    keys = load_consortium(bundles / "consortium.toml").signing_keys()
    path = bundles / "consortium.toml"
    path.write_text(path.read_text().replace(keys["b"], keys["a"]))
    with pytest.raises(ConfigError, match=r"members\[1\].signing_key: 'b' has the same signing key"):
        load_consortium(path)


def test_mosquitto_hash_is_pbkdf2_sha512() -> None:
    salt = bytes(range(12))
    text = mosquitto_hash("secret", salt=salt, iterations=101)
    kind, iterations, salt64, digest = text.split("$")[1:]
    assert (kind, iterations, base64.b64decode(salt64)) == ("7", "101", salt)
    assert base64.b64decode(digest) == hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101)


def test_broker_config_writes_acl_passwords_and_keeps_existing_passwords(bundles: Path, tmp_path: Path) -> None:
    out = tmp_path / "broker"
    written = write_broker_config(bundles, out, port=18883, tls_hosts=("127.0.0.1", "broker.example"))
    assert written.users == ("a", "b", "c", "watch")
    acl = (out / "acl").read_text()
    assert "user b\ntopic write p2pfl/demo/nodes/b/#\ntopic read p2pfl/demo/nodes/#\n" in acl
    assert "user watch\ntopic read p2pfl/demo/nodes/#\n" in acl and acl.count("topic write") == 3
    conf = (out / "mosquitto.conf").read_text()
    for line in ("allow_anonymous false", f"password_file {out.resolve()}/passwords", "listener 18883",
                 f"acl_file {out.resolve()}/acl", f"cafile {out.resolve()}/certs/ca.crt"):
        assert line in conf.splitlines()
    password = bundles / "b" / "keys" / "mqtt.password"
    assert stat.S_IMODE(password.stat().st_mode) == 0o600
    assert (bundles / "b" / "keys" / "mqtt-ca.crt").read_bytes() == (out / "certs" / "ca.crt").read_bytes()
    assert stat.S_IMODE((out / "certs" / "server.key").stat().st_mode) == 0o600
    before = password.read_text()
    write_broker_config(bundles, out, port=18883)  # again, e.g. after a member was added
    assert password.read_text() == before
    users = [line.split(":")[0] for line in (out / "passwords").read_text().splitlines()]
    assert users == ["a", "b", "c", "watch"]
    assert check_bundles(bundles) == []  # the new files do not upset check
    with pytest.raises(ConfigError, match="--watcher: 'a' is a member's name"):
        write_broker_config(bundles, out, watcher="a")
