"""Signed presence, without a broker: what a member signs, what a receiver refuses and why."""

from __future__ import annotations

import base64
import json
import time

import pytest

from p2pfl.discovery.broker import BrokerLogin, parse_broker_url
from p2pfl.discovery.membership import Membership, progress_fields, status_fields, status_topic
from p2pfl.discovery.signing import MAX_AGE, Signer, Verifier
from p2pfl.errors import ConfigError
from p2pfl.security.identity import new_identity

C = "demo"
ALICE, BOB, MALLORY = new_identity("alice"), new_identity("bob"), new_identity("mallory")
KEYS = {"alice": ALICE.public, "bob": BOB.public}


def membership() -> Membership:
    return Membership(C, verifier=Verifier(KEYS.get))


def online(signer: Signer, name: str = "bob", **fields: object) -> bytes:
    return signer.seal(status_topic(C, name), {**status_fields("online", "tcp://h:1", "fp"), **fields})


def offline(signer: Signer, name: str = "bob") -> bytes:
    return signer.seal(status_topic(C, name), status_fields("offline", "tcp://h:1", "fp"))


def test_a_signed_status_is_accepted_and_a_newer_one_replaces_it() -> None:
    view, bob = membership(), Signer(BOB)
    assert view.handle(status_topic(C, "bob"), online(bob), retained=True)
    assert view.handle(status_topic(C, "bob"), offline(bob), retained=False)
    assert view.state_of("bob") == "offline" and not view.refused
    message = json.loads(online(bob))
    assert message["v"] == 1 and {"boot", "seq", "sig"} <= set(message)  # old readers ignore the extra keys


def test_unsigned_forged_and_keyless_statuses_are_refused_and_counted() -> None:
    view = membership()
    topic = status_topic(C, "bob")
    view.handle(topic, online(Signer(BOB)), retained=True)
    view.handle(topic, json.dumps(status_fields("offline", "tcp://h:1", "fp")).encode(), retained=False)
    view.handle(topic, offline(Signer(MALLORY)), retained=False)  # bob's name, mallory's key
    tampered = json.loads(offline(Signer(BOB)))
    tampered["endpoint"] = "tcp://evil:1"  # a valid signature over other content
    view.handle(topic, json.dumps(tampered).encode(), retained=False)
    view.handle(status_topic(C, "carol"), online(Signer(new_identity("carol")), "carol"), retained=False)
    assert view.state_of("bob") == "online" and view.state_of("carol") is None
    assert view.refused == {"unsigned": 1, "forged": 2, "no-key": 1}


def test_a_status_signed_for_one_topic_is_refused_on_another() -> None:
    view, alice = membership(), Signer(ALICE)
    view.handle(status_topic(C, "bob"), online(Signer(BOB)), retained=True)
    # alice's own genuine offline, replayed as bob's
    view.handle(status_topic(C, "bob"), offline(alice, "alice"), retained=False)
    assert view.state_of("bob") == "online" and view.refused == {"forged": 1}


def test_replayed_and_stale_statuses_are_refused() -> None:
    view, earlier = membership(), Signer(BOB)
    topic = status_topic(C, "bob")
    old_goodbye = earlier.seal(topic, status_fields("left", "tcp://h:1", "fp", reason="stopped"))
    restarted = Signer(BOB)  # a later process: a later boot
    assert restarted.boot > earlier.boot
    current = online(restarted)
    view.handle(topic, current, retained=True)
    view.handle(topic, old_goodbye, retained=False)  # the member's own words, from an earlier run
    view.handle(topic, current, retained=False)  # the very message again: a re-announcement, no count
    stale = Signer(BOB).seal(topic, status_fields("left", "tcp://h:1", "fp", at=time.time() - MAX_AGE - 60))
    view.handle(topic, stale, retained=False)
    future = Signer(BOB).seal(topic, status_fields("left", "tcp://h:1", "fp", at=time.time() + 3600))
    view.handle(topic, future, retained=False)
    assert view.state_of("bob") == "online"
    assert view.refused == {"replayed": 1, "stale": 2}


def test_a_last_will_is_judged_by_order_not_age() -> None:
    """A Will's text (its time too) is fixed at connect; it fires much later, live."""
    view, bob = membership(), Signer(BOB)
    topic = status_topic(C, "bob")
    first = online(bob)
    will = bob.seal(topic, status_fields("offline", "tcp://h:1", "fp", at=time.time() - 10 * MAX_AGE))
    view.handle(topic, first, retained=True)
    assert view.handle(topic, will, retained=False)
    assert view.state_of("bob") == "offline" and not view.refused
    # a later session's "online" is newer; the stale Will of the earlier session, replayed, is not
    assert view.handle(topic, online(bob), retained=False)
    assert not view.handle(topic, will, retained=False) and view.refused == {"replayed": 1}


def test_progress_is_signed_and_checked_like_statuses() -> None:
    view, bob = membership(), Signer(BOB)
    view.handle(status_topic(C, "bob"), online(bob), retained=True)
    topic = f"p2pfl/{C}/nodes/bob/progress"
    assert view.handle(topic, bob.seal(topic, progress_fields(3, 0.9, 0.1)), retained=False)
    forged = Signer(MALLORY).seal(topic, progress_fields(4, 0.1, 9.0))
    assert not view.handle(topic, forged, retained=False)
    assert not view.handle(topic, json.dumps(progress_fields(5, 0.1, 9.0)).encode(), retained=False)
    assert view.members()["bob"].round == 3 and view.refused == {"forged": 1, "unsigned": 1}


@pytest.mark.parametrize("change", [
    {"sig": "not base64!"}, {"sig": base64.b64encode(b"x" * 64).decode()}, {"seq": -1}, {"boot": "now"},
    {"seq": True},
])
def test_malformed_signature_fields_are_refused(change: dict[str, object]) -> None:
    view = membership()
    message = {**json.loads(online(Signer(BOB))), **change}
    assert not view.handle(status_topic(C, "bob"), json.dumps(message).encode(), retained=True)
    assert sum(view.refused.values()) == 1 and view.state_of("bob") is None


def test_without_keys_unsigned_statuses_are_accepted_as_before() -> None:
    view = Membership(C)
    assert view.handle(status_topic(C, "bob"), json.dumps(status_fields("online", "e", "f")).encode(), True)
    assert view.state_of("bob") == "online"


def test_broker_urls_and_login_files(tmp_path) -> None:
    assert parse_broker_url("mqtts://broker.example") == ("broker.example", 8883)
    assert parse_broker_url("mqtt://broker.example") == ("broker.example", 1883)
    with pytest.raises(ConfigError, match="holds credentials: give discovery_username"):
        parse_broker_url("mqtt://user:secret@broker.example")
    password = tmp_path / "mqtt.password"
    password.write_text("s3cret\n")
    password.chmod(0o644)
    with pytest.raises(ConfigError, match=r"discovery_password_file: .* open to group/others; run 'chmod 600"):
        BrokerLogin("alice", str(password)).client_options("mqtt://b")
    password.chmod(0o600)
    assert BrokerLogin("alice", str(password)).client_options("mqtt://b") == {"username": "alice", "password": "s3cret"}
    for login, message in [
        (BrokerLogin("alice", str(tmp_path / "none")), "discovery_password_file: cannot read .*none: No such file"),
        (BrokerLogin(password_file=str(password)), "discovery_username: a password needs a user name"),
        (BrokerLogin(ca_file=str(tmp_path / "ca.crt")), "discovery_ca_file: cannot read .*ca.crt"),
    ]:
        with pytest.raises(ConfigError, match=message):
            login.client_options("mqtts://b")
    with pytest.raises(ConfigError, match="discovery_ca_file: TLS files need an mqtts:// broker"):
        BrokerLogin(ca_file=str(password)).client_options("mqtt://b")
    with pytest.raises(ConfigError, match="discovery_ca_file: .* holds no usable CA certificate"):
        BrokerLogin(ca_file=str(password)).client_options("mqtts://b")
