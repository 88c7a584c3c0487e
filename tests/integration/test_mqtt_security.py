"""A locked-down broker (TLS, passwords, per-member ACLs) and signed presence on an open one,
against a real mosquitto: what a stranger on the broker can no longer do."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomqtt
import pytest
import zmq.asyncio

from p2pfl import StaticSchedule, build_topology
from p2pfl.consortium import init_consortium, load_consortium
from p2pfl.consortium.broker_config import write_broker_config
from p2pfl.discovery import MqttPresence, parse_broker_url, watch_consortium
from p2pfl.discovery.broker import BrokerLogin, BrokerRefused
from p2pfl.discovery.membership import progress_fields, status_fields, status_topic
from p2pfl.discovery.signing import Signer
from p2pfl.errors import ConfigError
from p2pfl.security import read_secret_key
from p2pfl.security.identity import Identity, identity_from_curve, new_identity
from p2pfl.simulation.pacing import PacedExecutor
from p2pfl.testing import tiny_node

if TYPE_CHECKING:
    from conftest import Mosquitto

REPO = Path(__file__).resolve().parents[2]
WAIT = 8.0
MEMBERS = ("alice", "bob", "carol")


async def until(node: MqttPresence, condition: Callable[[], bool], timeout: float = WAIT) -> None:
    changed = asyncio.Event()
    node.subscribe(changed.set)
    async with asyncio.timeout(timeout):
        while not condition():
            changed.clear()
            await changed.wait()


def state(node: MqttPresence, name: str) -> str | None:
    member = node.members().get(name)
    return member.state if member else None


# --------------------------------------------------------------------------- a locked-down broker


@dataclass
class Locked:
    """A consortium's bundles and its mosquitto, configured by ``consortium broker-config``."""

    url: str
    bundles: Path
    broker_dir: Path

    def login(self, name: str, **changes: str) -> BrokerLogin:
        keys = self.bundles / name / "keys"
        values = {"username": name, "password_file": str(keys / "mqtt.password"), "ca_file": str(keys / "mqtt-ca.crt")}
        return BrokerLogin(**{**values, **changes})

    def identity(self, name: str) -> Identity:
        return identity_from_curve(name, read_secret_key(self.bundles / name / "keys" / f"{name}.key_secret").secret)

    def presence(self, name: str, **options: Any) -> MqttPresence:
        keys = load_consortium(self.bundles / "consortium.toml").signing_keys()
        defaults: dict[str, Any] = {
            "login": self.login(name), "identity": self.identity(name), "signing_keys": keys.get,
            "connect_timeout": WAIT,
        }
        return MqttPresence(self.url, "demo", name, f"tcp://127.0.0.1:{7000 + len(name)}", f"fp-{name}",
                            lambda n, f: True, **{**defaults, **options})

    @asynccontextmanager
    async def raw(self, name: str) -> AsyncIterator[aiomqtt.Client]:
        host, port = parse_broker_url(self.url)
        async with aiomqtt.Client(host, port, **self.login(name).client_options(self.url)) as client:
            yield client


def start_locked_broker(broker: Mosquitto, tmp_path: Path, *, require_certificate: bool = False) -> Locked:
    url = f"mqtts://127.0.0.1:{broker.port}"
    members = "".join(f'[[members]]\nname = "{n}"\nhost = "127.0.0.1"\nport = {7400 + i}\n' for i, n in enumerate(MEMBERS))
    (tmp_path / "desc.toml").write_text(
        f'name = "demo"\ntopology = "complete"\n[training]\nlearner = "m:f"\ndiscovery = "{url}"\n'
        'discovery_password_file = "keys/mqtt.password"\ndiscovery_ca_file = "keys/mqtt-ca.crt"\n' + members
    )
    bundles = tmp_path / "bundles"
    init_consortium(tmp_path / "desc.toml", bundles)
    written = write_broker_config(bundles, tmp_path / "broker", port=broker.port, tls_hosts=("127.0.0.1", "localhost"))
    conf = written.config.read_text().replace(f"listener {broker.port}\n", f"listener {broker.port} 127.0.0.1\n")
    if require_certificate:
        conf = conf.replace("require_certificate false", "require_certificate true")
    if os.geteuid() == 0:  # mosquitto started as root drops to user "mosquitto", who cannot read our 0600 files
        conf += "user root\n"
    broker.config.write_text(conf)
    broker.start()
    return Locked(url, bundles, tmp_path / "broker")


@pytest.fixture
def locked(own_mqtt_broker_stopped: Mosquitto, tmp_path: Path) -> Locked:
    return start_locked_broker(own_mqtt_broker_stopped, tmp_path)


@pytest.fixture
def own_mqtt_broker_stopped(tmp_path: Path) -> Iterator[Mosquitto]:
    from conftest import Mosquitto

    broker = Mosquitto(tmp_path)
    try:
        yield broker
    finally:
        broker.stop()


async def test_members_over_tls_with_passwords_see_each_others_signed_announcements(locked: Locked) -> None:
    async with locked.presence("alice") as alice, locked.presence("bob") as bob:
        await until(alice, lambda: state(alice, "bob") == "online")
        await bob.publish_progress(2, 0.75, 0.5)
        await until(alice, lambda: alice.members()["bob"].round == 2)
    assert not alice.refused and not bob.refused


async def test_a_member_cannot_publish_under_another_members_topic(locked: Locked) -> None:
    """The ACL: the broker drops bob's publications on alice's topics; alice never sees them."""
    async with locked.presence("alice") as alice, locked.raw("bob") as bob:
        bob_signer = Signer(locked.identity("bob"))
        for topic, fields in (
            (status_topic("demo", "alice"), status_fields("offline", "tcp://x:1", "fp-alice")),
            ("p2pfl/demo/nodes/alice/progress", progress_fields(9, 0.0, 9.0)),
        ):
            await bob.publish(topic, bob_signer.seal(topic, fields), qos=1, retain=True)
        # then something bob may say: the broker relays one connection's messages in order
        topic = status_topic("demo", "bob")
        await bob.publish(topic, bob_signer.seal(topic, status_fields("online", "tcp://b:1", "fp-bob")), qos=1)
        await until(alice, lambda: state(alice, "bob") == "online")
        assert state(alice, "alice") == "online" and alice.members()["alice"].round is None
        assert not alice.refused  # dropped by the broker: nothing even reached alice
        await bob.publish("p2pfl/other/nodes/bob/status", b"{}", qos=1)  # outside the consortium: dropped too


async def test_a_wrong_login_or_certificate_fails_at_once_with_one_line(locked: Locked, tmp_path: Path) -> None:
    cases = [
        (locked.login("alice", password_file=str(locked.bundles / "bob" / "keys" / "mqtt.password")),
         "refused user 'alice': bad user name or password, or not authorised"),
        (BrokerLogin(ca_file=str(locked.bundles / "alice" / "keys" / "mqtt-ca.crt")),
         "refused an anonymous client"),
        (locked.login("alice", ca_file=""), "TLS handshake with MQTT broker .* failed: .*CERTIFICATE_VERIFY_FAILED"),
    ]
    for login, message in cases:
        with pytest.raises(BrokerRefused, match=message):
            async with locked.presence("alice", login=login):
                pass
    with pytest.raises(ConfigError, match="discovery_ca_file: cannot read .*missing.crt"):
        locked.presence("alice", login=locked.login("alice", ca_file=str(tmp_path / "missing.crt")))
    # the CLI: exit code 5 (transport) and one line, no traceback
    code, _, err = await watch_cli("--broker", locked.url, "--consortium", "demo", "--once",
                                   "--username", "watch", "--password-file", str(locked.bundles / "alice" / "keys" / "mqtt.password"),
                                   "--ca-file", str(locked.bundles / "alice" / "keys" / "mqtt-ca.crt"))
    assert code == 5 and err.count("\n") == 1 and "refused user 'watch'" in err, err


async def watch_cli(*args: str) -> tuple[int, str, str]:
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pfl", "watch", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )
    async with asyncio.timeout(30):
        out, err = await cli.communicate()
    assert cli.returncode is not None
    return cli.returncode, out.decode(), err.decode()


async def test_watch_takes_the_login_from_node_toml_or_its_flags(locked: Locked) -> None:
    async with locked.presence("alice"):
        code, out, err = await watch_cli("--consortium", str(locked.bundles / "bob" / "node.toml"), "--once",
                                         "--timeout", "0.5")
        assert code == 0, err
        assert out.startswith(f"consortium demo on {locked.url}: 1 online, 1 known, signatures checked (0 refused)")
        code, out, err = await watch_cli(
            "--consortium", str(locked.bundles / "consortium.toml"), "--broker", locked.url, "--once", "--timeout", "0.5",
            "--username", "watch", "--password-file", str(locked.broker_dir / "watch.password"),
            "--ca-file", str(locked.broker_dir / "certs" / "ca.crt"),
        )
        assert code == 0 and "alice" in out and "online" in out, err


async def test_a_client_certificate_the_broker_requires(own_mqtt_broker_stopped: Mosquitto, tmp_path: Path) -> None:
    locked = start_locked_broker(own_mqtt_broker_stopped, tmp_path, require_certificate=True)
    cert, key = client_certificate(locked.broker_dir / "certs", tmp_path / "client")
    async with locked.presence("alice", login=locked.login("alice", cert_file=str(cert), key_file=str(key))) as alice:
        await until(alice, lambda: state(alice, "alice") == "online")
    with pytest.raises((BrokerRefused, ssl.SSLError, OSError, aiomqtt.MqttError, Exception)):
        async with locked.presence("alice", connect_timeout=1.0):
            pass


def client_certificate(ca_dir: Path, out: Path) -> tuple[Path, Path]:
    """A client certificate signed by the CA that broker-config made."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    out.mkdir()
    (out / "client.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "client.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return out / "client.crt", out / "client.key"


# --------------------------------------------------------------------------- a stranger on an open broker


IDENTITIES = {name: new_identity(name) for name in (*MEMBERS, "mallory")}
KEYS = {name: IDENTITIES[name].public for name in MEMBERS}


def signed_presence(broker: str, consortium: str, name: str, **options: Any) -> MqttPresence:
    return MqttPresence(broker, consortium, name, f"tcp://127.0.0.1:{7000 + len(name)}", f"fp-{name}",
                        lambda n, f: True, identity=IDENTITIES[name], signing_keys=KEYS.get, **options)


@pytest.fixture
def consortium() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


async def test_spoofed_forged_and_replayed_statuses_are_refused_and_counted(mqtt_broker: str, consortium: str) -> None:
    host, port = parse_broker_url(mqtt_broker)
    status, progress = status_topic(consortium, "bob"), f"p2pfl/{consortium}/nodes/bob/progress"
    genuine: list[bytes] = []
    async with aiomqtt.Client(host, port) as recorder:  # anyone may read an open broker: record bob
        await recorder.subscribe(status, qos=1)
        async with signed_presence(mqtt_broker, consortium, "bob"):
            pass  # bob says "online", then "stopped"
        async with asyncio.timeout(WAIT):
            async for message in recorder.messages:
                genuine.append(bytes(message.payload))  # type: ignore[arg-type]
                if b'"stopped"' in genuine[-1]:
                    break
    async with signed_presence(mqtt_broker, consortium, "alice") as alice, \
            signed_presence(mqtt_broker, consortium, "bob") as bob, aiomqtt.Client(host, port) as stranger:
        await until(alice, lambda: state(alice, "bob") == "online")
        mallory = Signer(IDENTITIES["mallory"])
        for payload in (
            status_payload_unsigned("offline"),                                          # unsigned
            mallory.seal(status, status_fields("offline", "tcp://evil:1", "fp-bob")),    # forged
            genuine[-1],                                                                  # replayed "stopped"
        ):
            await stranger.publish(status, payload, qos=1, retain=True)
        for payload in (b'{"v": 1, "round": 99, "accuracy": 0.1, "loss": 9}', mallory.seal(progress, progress_fields(99, 0.1, 9))):
            await stranger.publish(progress, payload, qos=1, retain=True)
        # then carol's genuine status, on the same connection: alice has judged the rest once she sees it
        carol = status_topic(consortium, "carol")
        await stranger.publish(carol, Signer(IDENTITIES["carol"]).seal(carol, status_fields("online", "c", "fp-carol")), qos=1)
        await until(alice, lambda: state(alice, "carol") == "online")
        assert state(alice, "bob") == "online" and not alice.is_offline("bob")
        assert alice.members()["bob"].round is None
        assert alice.refused == {"unsigned": 2, "forged": 2, "replayed": 1}
        # bob saw its status overwritten and announced itself again: a late watcher sees it online
        async with aclosing(watch_consortium(mqtt_broker, consortium, signing_keys=KEYS)) as snapshots:
            async with asyncio.timeout(WAIT):
                async for snapshot in snapshots:
                    if "bob" in snapshot and snapshot["bob"].state == "online":
                        break
        assert bob.refused["unsigned"] >= 1


def status_payload_unsigned(state_: str) -> bytes:
    return json.dumps(status_fields(state_, "tcp://evil:1", "fp-bob")).encode()


NUMBERED = {str(i): new_identity(str(i)) for i in range(3)}


def numbered_presence(broker: str, consortium: str, name: str) -> MqttPresence:
    keys = {n: i.public for n, i in NUMBERED.items()}
    return MqttPresence(broker, consortium, name, f"tcp://127.0.0.1:{7100 + int(name)}", f"fp-{name}",
                        lambda n, f: True, identity=NUMBERED[name], signing_keys=keys.get)


class Flapper:
    """A stranger publishing retained offline/online for ``victim``, unsigned and forged, every
    time a round ends (an observer of a node), until stopped. (As fast as it can would starve
    aiomqtt's event loop in this one process, which tests nothing.) Stopped between publications,
    never cancelled in the middle of one, so that its client disconnects cleanly."""

    def __init__(self, host: str, port: int, consortium: str, victim: str) -> None:
        self.host, self.port, self.topic = host, port, status_topic(consortium, victim)
        self.sent = 0
        self.tick = asyncio.Event()
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True
        self.tick.set()

    def on_round_end(self, metrics: Any, weights: Any) -> None:
        self.tick.set()

    async def run(self) -> None:
        mallory = Signer(IDENTITIES["mallory"])
        async with aiomqtt.Client(self.host, self.port) as stranger:
            while not self.stopped:
                for state_ in ("offline", "online", "offline"):
                    fields = status_fields(state_, "e", "fp-1")
                    await stranger.publish(self.topic, json.dumps(fields).encode(), qos=1, retain=True)
                    await stranger.publish(self.topic, mallory.seal(self.topic, fields), qos=1, retain=True)
                    self.sent += 1
                await self.tick.wait()
                self.tick.clear()


async def test_a_stranger_flapping_a_members_status_makes_no_node_drop_a_round(
    mqtt_broker: str, consortium: str
) -> None:
    """Finding 4 of issue 13: retained online/offline flaps for one member from a stranger made
    its neighbours average without it. Signed presence refuses them; with a 600 s deadline, a
    neighbour skipped would show as missing from a round."""
    rounds = 8
    names = ("0", "1", "2")
    host, port = parse_broker_url(mqtt_broker)
    schedule = StaticSchedule(build_topology("complete", 3))
    context = zmq.asyncio.Context()
    said_offline: list[str] = []
    flapper = Flapper(host, port, consortium, "1")
    flapping: asyncio.Task[None] | None = None  # while it runs, nobody may be said offline
    try:
        with ThreadPoolExecutor(1) as worker:
            async with contextlib.AsyncExitStack() as stack:
                presences = [await stack.enter_async_context(numbered_presence(mqtt_broker, consortium, n))
                             for n in names]
                for presence in presences:
                    await until(presence, lambda p=presence: all(state(p, n) == "online" for n in names))
                    presence.subscribe(lambda p=presence: said_offline.extend(
                        n for n in names if p.is_offline(n) and flapping is not None and not flapping.done()))
                nodes = [
                    await stack.enter_async_context(tiny_node(
                        context, name, schedule=schedule, rounds=rounds, round_timeout=600.0,
                        executor=PacedExecutor(worker, asyncio.get_running_loop(), factor=1, step_seconds=0.05),
                        presence=presence, observer=flapper if name == "0" else None,
                    ))
                    for name, presence in zip(names, presences, strict=True)
                ]
                for node in nodes:
                    for other in nodes:
                        if other is not node:
                            node.add_peer(other.name, other.endpoint)
                flapping = asyncio.create_task(flapper.run())
                try:
                    histories = await asyncio.wait_for(asyncio.gather(*(node.run() for node in nodes)), 60)
                finally:
                    flapper.stop()
                    await asyncio.wait_for(flapping, WAIT)
    finally:
        context.term()
    assert flapper.sent >= 3 * (rounds - 1), "the stranger did not flap every round"
    for history in (histories[0], histories[2]):
        assert [m.round for m in history] == list(range(rounds))
        assert all("1" in m.received_from for m in history), [m.received_from for m in history]
    assert not said_offline  # while the stranger flapped; members leave (say "finished") after it
    for presence in presences:
        assert presence.refused["unsigned"] >= 2 and presence.refused["forged"] >= 2, presence.refused
