"""MQTT discovery against a real mosquitto broker (started by the ``mqtt_broker`` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import aiomqtt
import pytest

from p2pfl.discovery import MemberStatus, MqttPresence, parse_broker_url, watch_consortium
from p2pfl.errors import ConfigError, TransportError
from p2pfl.security import read_secret_key
from p2pfl.security.identity import identity_from_curve

if TYPE_CHECKING:
    from conftest import Mosquitto  # the fixture's class; pytest puts this folder on sys.path

REPO = Path(__file__).resolve().parents[2]
WAIT = 8.0  # seconds any one expected broker event may take before the test fails

FINGERPRINTS = {"alice": "fp-alice", "bob": "fp-bob", "victim": "fp-victim"}


def known(name: str, fingerprint: str) -> bool:
    return FINGERPRINTS.get(name) == fingerprint


@pytest.fixture
def consortium() -> str:
    # Retained messages outlive a test on the shared broker: every test gets its own topics.
    return f"test-{uuid.uuid4().hex[:10]}"


def presence(broker: str, consortium: str, name: str, **kwargs: object) -> MqttPresence:
    return MqttPresence(
        broker, consortium, name, f"tcp://127.0.0.1:{5000 + len(name)}",
        FINGERPRINTS.get(name, f"fp-{name}"), known, **kwargs,  # type: ignore[arg-type]
    )


async def until(node: MqttPresence, condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait for ``condition`` to hold, re-checking after each membership change."""
    changed = asyncio.Event()
    node.subscribe(changed.set)
    async with asyncio.timeout(timeout):
        while not condition():
            changed.clear()  # no await since the check: no change can slip between them
            await changed.wait()


def state(node: MqttPresence, name: str) -> str | None:
    member = node.members().get(name)
    return member.state if member else None


@asynccontextmanager
async def raw_client(broker: str) -> AsyncIterator[aiomqtt.Client]:
    host, port = parse_broker_url(broker)
    async with aiomqtt.Client(host, port) as client:
        yield client


async def test_two_presences_see_each_other(mqtt_broker: str, consortium: str) -> None:
    async with presence(mqtt_broker, consortium, "alice") as alice:
        async with presence(mqtt_broker, consortium, "bob") as bob:
            await until(alice, lambda: state(alice, "bob") == "online")
            await until(bob, lambda: state(bob, "alice") == "online")
            seen = alice.members()["bob"]
            assert seen.endpoint == bob.endpoint and seen.fingerprint == "fp-bob"
            assert bob.members()["alice"].endpoint == alice.endpoint
            assert bob.members()["alice"].fingerprint == "fp-alice"
            assert set(alice.members()) == {"alice", "bob"}
            assert not alice.is_offline("bob") and not alice.is_offline("never-heard-of")


async def test_non_members_and_malformed_payloads_are_ignored(
    mqtt_broker: str, consortium: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"p2pfl/{consortium}/nodes"
    async with presence(mqtt_broker, consortium, "alice") as alice:
        async with raw_client(mqtt_broker) as raw:
            # an outsider, bob's name with someone else's key, then garbage of every kind
            await raw.publish(f"{prefix}/mallory/status", b'{"state": "online", "fingerprint": "fp-m"}', qos=1)
            await raw.publish(f"{prefix}/bob/status", b'{"state": "offline", "fingerprint": "fp-evil"}', qos=1)
            for payload in (b"not json", b"[1, 2]", b'{"state": "sleeping"}', b'{"state": "online", "endpoint": 5}'):
                await raw.publish(f"{prefix}/alice/status", payload, qos=1)
            await raw.publish(f"{prefix}/alice/progress", b'{"round": "three"}', qos=1)
            async with presence(mqtt_broker, consortium, "bob"):
                # the broker relays one connection's messages in order: bob's "online" comes last
                await until(alice, lambda: state(alice, "bob") == "online")
        assert set(alice.members()) == {"alice", "bob"}
        assert alice.members()["alice"].state == "online" and alice.members()["alice"].round is None
        assert not alice.is_offline("mallory")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("not a member" in w for w in warnings) == 2  # mallory once, the fake bob once
    assert sum("malformed" in w for w in warnings) == 5


async def test_graceful_exit_says_stopped_or_finished_with_the_last_round(mqtt_broker: str, consortium: str) -> None:
    async with presence(mqtt_broker, consortium, "alice") as alice:
        changes: list[str | None] = []
        alice.subscribe(lambda: changes.append(state(alice, "bob")))
        async with presence(mqtt_broker, consortium, "bob") as bob:
            await until(alice, lambda: state(alice, "bob") == "online")
            await bob.publish_progress(3, 0.5, 1.0)
        await until(alice, lambda: alice.is_offline("bob"))
        assert state(alice, "bob") == "stopped" and alice.members()["bob"].round == 3
        assert not alice.has_finished("bob")  # stopped mid-run: it may come back
        async with presence(mqtt_broker, consortium, "bob") as bob:
            await until(alice, lambda: state(alice, "bob") == "online")
            bob.finish(9)  # its last progress report was lost: the goodbye still names round 9
        await until(alice, lambda: state(alice, "bob") == "finished")
        assert alice.is_offline("bob") and alice.members()["bob"].round == 9
        assert alice.has_finished("bob")  # a resumed neighbour of bob's stops instead of waiting
        assert "offline" not in changes  # the Will was discarded, not fired
    # retained: a late watcher still learns how both left
    async with aclosing(watch_consortium(mqtt_broker, consortium)) as snapshots:
        async with asyncio.timeout(WAIT):
            async for snapshot in snapshots:
                if {n: m.state for n, m in snapshot.items()} == {"alice": "stopped", "bob": "finished"}:
                    break


async def test_a_node_failing_with_an_error_says_offline(mqtt_broker: str, consortium: str) -> None:
    async with presence(mqtt_broker, consortium, "alice") as alice:
        with pytest.raises(RuntimeError):
            async with presence(mqtt_broker, consortium, "bob"):
                await until(alice, lambda: state(alice, "bob") == "online")
                raise RuntimeError("the learner broke")
        await until(alice, lambda: alice.is_offline("bob"))
        assert state(alice, "bob") == "offline"


async def test_status_of_older_and_newer_formats(
    mqtt_broker: str, consortium: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A goodbye without a reason (older nodes) shows as left; a newer format version is dropped."""
    prefix = f"p2pfl/{consortium}/nodes"
    async with presence(mqtt_broker, consortium, "alice") as alice, raw_client(mqtt_broker) as raw:
        await raw.publish(f"{prefix}/bob/status", b'{"state": "online", "fingerprint": "fp-bob"}', qos=1)
        await until(alice, lambda: state(alice, "bob") == "online")
        await raw.publish(f"{prefix}/bob/status", b'{"v": 2, "state": "left", "fingerprint": "fp-bob"}', qos=1)
        await raw.publish(f"{prefix}/bob/status", b'{"state": "left", "fingerprint": "fp-bob"}', qos=1)
        await until(alice, lambda: state(alice, "bob") != "online")
        assert state(alice, "bob") == "left" and alice.is_offline("bob")
        await raw.publish(f"{prefix}/bob/status", b'{"state": "left", "reason": "evicted", "fingerprint": "fp-bob",'
                          b' "round": 4}', qos=1)
        await until(alice, lambda: alice.members()["bob"].round == 4)
        assert state(alice, "bob") == "left"  # a reason from a newer version: still gone
    assert any("format version 2 is newer" in r.getMessage() for r in caplog.records)


VICTIM = """
import asyncio, sys
from p2pfl.discovery import MqttPresence

async def main():
    async with MqttPresence(sys.argv[1], sys.argv[2], "victim", "tcp://127.0.0.1:9", "fp-victim",
                            lambda name, fingerprint: True, keepalive=1):
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.slow  # a node process killed or stopped
@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
async def test_last_will_marks_a_vanished_node_offline(mqtt_broker: str, consortium: str, how: str) -> None:
    """SIGKILL closes the socket, so the Will fires at once; SIGSTOP leaves it open, so only the
    keepalive (1.5 x 1 s of silence) reveals that the node is gone, which mosquitto 2.0 checks
    every 5 s or so: allow for that."""
    async with presence(mqtt_broker, consortium, "alice") as alice:
        victim = await asyncio.create_subprocess_exec(
            sys.executable, "-c", VICTIM, mqtt_broker, consortium,
            stdout=asyncio.subprocess.PIPE, cwd=REPO,
        )
        try:
            assert victim.stdout is not None
            async with asyncio.timeout(WAIT):
                assert await victim.stdout.readline() == b"ready\n"
            await until(alice, lambda: state(alice, "victim") == "online")
            victim.send_signal(getattr(signal, how))
            await until(alice, lambda: alice.is_offline("victim"), timeout=WAIT if how == "SIGKILL" else 15)
            assert state(alice, "victim") == "offline"
            assert alice.members()["victim"].endpoint == "tcp://127.0.0.1:9"
        finally:
            with contextlib.suppress(ProcessLookupError):  # already reaped after SIGKILL
                victim.kill()  # also ends a stopped process
            await victim.wait()


async def test_progress_shows_in_watch_snapshots(mqtt_broker: str, consortium: str) -> None:
    async with aclosing(watch_consortium(mqtt_broker, consortium)) as snapshots:
        first = await anext(snapshots)
        assert first == {}
        async with presence(mqtt_broker, consortium, "alice") as alice:
            await alice.publish_progress(3, 0.875, 0.42)
            async with asyncio.timeout(WAIT):
                async for snapshot in snapshots:
                    member = snapshot.get("alice")
                    if member is not None and member.round == 3:
                        break
    assert isinstance(member, MemberStatus)
    assert member.state == "online" and member.accuracy == pytest.approx(0.875)
    assert member.fingerprint == "fp-alice" and member.endpoint == alice.endpoint


async def test_cli_watch_once_prints_the_table(mqtt_broker: str, consortium: str) -> None:
    async with presence(mqtt_broker, consortium, "alice") as alice, presence(mqtt_broker, consortium, "bob"):
        await alice.publish_progress(7, 0.5, 1.25)
    async with presence(mqtt_broker, consortium, "alice"):
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "p2pfl", "watch", "--broker", mqtt_broker,
            "--consortium", consortium, "--once", "--timeout", "1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        )
        async with asyncio.timeout(30):
            out, err = await cli.communicate()
    assert cli.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].startswith(f"consortium {consortium} on {mqtt_broker}: 1 online, 2 known")
    assert lines[1].split() == ["NAME", "STATE", "ROUND", "ACCURACY", "ENDPOINT", "FINGERPRINT", "UPDATED"]
    alice_row, bob_row = lines[2].split(), lines[3].split()
    assert alice_row[:6] == ["alice", "online", "7", "0.5000", "tcp://127.0.0.1:5005", "fp-alice"]
    assert bob_row[:6] == ["bob", "stopped", "-", "-", "tcp://127.0.0.1:5003", "fp-bob"]


async def watch_cli(*args: str) -> tuple[int, str, str]:
    """Run ``p2pfl watch ARGS`` to its end; its exit code, stdout and stderr."""
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pfl", "watch", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )
    async with asyncio.timeout(30):
        out, err = await cli.communicate()
    assert cli.returncode is not None
    return cli.returncode, out.decode(), err.decode()


def _sigint_as_from_a_terminal() -> None:
    """In the child: SIGINT neither ignored nor blocked, whatever the test runner inherited
    (a shell's background job ignores it; the full suite once left it so for the watcher)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


async def test_cli_watch_piped_prints_one_line_per_change(mqtt_broker: str, consortium: str) -> None:
    lines = []
    async with presence(mqtt_broker, consortium, "alice"):
        pass  # a retained "stopped" for the watcher to start with
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pfl", "watch", "--broker", mqtt_broker, "--consortium", consortium,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        preexec_fn=_sigint_as_from_a_terminal,
    )
    try:
        assert cli.stdout is not None
        async with asyncio.timeout(30):
            lines.append((await cli.stdout.readline()).decode())  # the retained status: it is watching now
        async with presence(mqtt_broker, consortium, "alice") as alice:
            for round_ in range(3):
                await alice.publish_progress(round_, 0.5 + round_ / 10, 1.0)
            await alice.publish_progress(2, 0.7, 0.9)  # same round and accuracy: no line
            alice.finish(2)
        async with asyncio.timeout(30):
            while "finished" not in lines[-1]:
                lines.append((await cli.stdout.readline()).decode())
        cli.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            rest, _ = await cli.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            cli.kill()
        await cli.wait()
    assert rest == b""  # nothing more: no table, no repeated line
    assert [line.split()[1:] for line in lines] == [
        ["alice", "stopped"],
        ["alice", "online"],
        ["alice", "online", "round", "0", "accuracy", "0.5000"],
        ["alice", "online", "round", "1", "accuracy", "0.6000"],
        ["alice", "online", "round", "2", "accuracy", "0.7000"],
        ["alice", "finished", "round", "2", "accuracy", "0.7000"],
    ], lines
    assert all(line[:8].count(":") == 2 for line in lines)  # HH:MM:SS first


async def test_cli_watch_a_misspelt_consortium_lists_the_names_on_the_broker(
    mqtt_broker: str, consortium: str
) -> None:
    async with presence(mqtt_broker, consortium, "alice"):
        code, out, err = await watch_cli(
            "--broker", mqtt_broker, "--consortium", consortium + "x", "--once", "--timeout", "0.5"
        )
    assert code == 2 and out == ""
    expected = (
        f"no node of consortium '{consortium}x' has announced itself on {mqtt_broker}; "
        "check the name (the names known on this broker: "
    )
    assert expected in err, err
    assert consortium in err.split("known on this broker: ")[1].rstrip(")\n").split(", ")


async def test_cli_watch_takes_a_consortium_file_and_its_broker(
    mqtt_broker: str, consortium: str, tmp_path: Path
) -> None:
    from p2pfl.consortium import init_consortium

    description = tmp_path / "desc.toml"
    description.write_text(
        f'name = "{consortium}"\ntopology = "complete"\n[training]\nlearner = "m:f"\n'
        f'discovery = "{mqtt_broker}"\n'
        + "".join(f'[[members]]\nname = "{n}"\nhost = "127.0.0.1"\nport = {7400 + i}\n'
                  for i, n in enumerate(("alice", "bob", "carol")))
    )
    bundle = init_consortium(description, tmp_path / "out")[0]
    # the watcher checks signatures against consortium.toml's signing keys: alice signs as the member
    identity = identity_from_curve("alice", read_secret_key(bundle / "keys" / "alice.key_secret").secret)
    async with presence(mqtt_broker, consortium, "alice", identity=identity):
        for file in (bundle / "consortium.toml", bundle / "node.toml", description):
            code, out, err = await watch_cli("--consortium", str(file), "--once", "--timeout", "0.5")
            assert code == 0, err
            assert out.startswith(f"consortium {consortium} on {mqtt_broker}: 1 online, 1 known"), out
    code, _, err = await watch_cli("--consortium", str(tmp_path / "nothing.toml"), "--once")
    assert code == 2 and "--consortium: file " in err and "does not exist" in err


async def test_unreachable_broker_and_bad_urls_fail_clearly() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransportError, match="cannot reach MQTT broker"):
        async with presence(f"mqtt://127.0.0.1:{port}", "c", "alice", connect_timeout=0.5):
            pass
    for bad in ("tcp://127.0.0.1:1883", "mqtt://", "mqtt://host:http"):
        with pytest.raises(ConfigError, match="discovery"):
            presence(bad, "c", "alice")
    with pytest.raises(ConfigError, match="must not contain"):
        presence("mqtt://127.0.0.1", "c/d", "alice")
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pfl", "watch", "--broker", "tcp://x", "--consortium", "c", "--once",
        stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )
    _, err = await cli.communicate()
    assert cli.returncode == 2 and err.decode().startswith("p2pfl: error: discovery: broker 'tcp://x'")


async def test_presence_reconnects_and_reannounces_after_broker_restart(own_mqtt_broker: Mosquitto) -> None:
    async with presence(own_mqtt_broker.url, "c", "alice", keepalive=2) as alice:
        await alice.publish_progress(1, 0.25, 2.0)
        await until(alice, lambda: alice.members().get("alice", None) is not None)
        own_mqtt_broker.stop()
        await asyncio.sleep(0.3)  # ok-sleep: gives the drop a chance to be seen; the outcome does not depend on it
        await alice.publish_progress(2, 0.5, 1.0)  # logged, not raised; re-sent on reconnection
        own_mqtt_broker.start()  # without persistence: every retained message is gone
        async with aclosing(watch_consortium(own_mqtt_broker.url, "c")) as snapshots:
            async with asyncio.timeout(WAIT):
                async for snapshot in snapshots:
                    member = snapshot.get("alice")
                    if member is not None and member.state == "online" and member.round == 2:
                        break


async def test_deployed_nodes_leave_the_last_round_and_how_they_ended_on_the_broker(
    own_mqtt_broker: Mosquitto, tmp_path: Path
) -> None:
    """A finished node's last round reaches the broker before it says "finished"; a node
    stopped by SIGTERM mid-run says "stopped" (nodes with static peers share the name "static")."""
    from processes import TIMEOUT, finish, kill_all, metrics_rows, start, wait_for, write_ring_configs

    rounds = 4
    configs = write_ring_configs(tmp_path, 3, rounds=rounds, round_timeout=60.0)
    for config in configs:
        config.write_text(config.read_text().replace("[peers]", f'discovery = "{own_mqtt_broker.url}"\n[peers]'))
    processes = [start(c, "--state-dir", str(tmp_path / f"state{i}")) for i, c in enumerate(configs)]
    try:
        await asyncio.to_thread(wait_for, lambda: len(metrics_rows(tmp_path / "state2")) >= 2, TIMEOUT, "2 rounds of 2")
        processes[2].send_signal(signal.SIGTERM)
        outputs = await asyncio.to_thread(finish, processes)
    finally:
        kill_all(processes)
    rows = [metrics_rows(tmp_path / f"state{i}") for i in range(3)]
    assert [r["round"] for r in rows[0]] == list(range(rounds)), outputs[0]
    snapshot: dict[str, MemberStatus] = {}
    async with aclosing(watch_consortium(own_mqtt_broker.url, "static")) as snapshots:
        with contextlib.suppress(TimeoutError):  # the assertions below say what is missing
            async with asyncio.timeout(WAIT):
                async for snapshot in snapshots:
                    if len(snapshot) == 3 and all(m.accuracy is not None for m in snapshot.values()):
                        break
    assert set(snapshot) == {"0", "1", "2"}, snapshot
    for i in (0, 1):
        member = snapshot[str(i)]
        assert (member.state, member.round) == ("finished", rounds - 1), (member, outputs[i])
        assert member.accuracy == pytest.approx(rows[i][-1]["test_accuracy"])  # the last round's own report
    stopped = snapshot["2"]
    assert stopped.state == "stopped", outputs[2]
    # SIGTERM may land after a round's metrics row is written but before its report is queued
    assert stopped.round is not None and stopped.round in (rows[2][-1]["round"] - 1, rows[2][-1]["round"])
