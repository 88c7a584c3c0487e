"""Presence and liveness of consortium nodes over an MQTT broker (optional, needs ``aiomqtt``).

The broker only carries small JSON announcements; model weights never go through it. Each
node announces itself with a retained ``online`` status and registers a Last Will that the
broker publishes (retained) as ``offline`` if the node vanishes without saying goodbye. What the
broker says is advisory: a peer is treated as gone only when the broker explicitly says so,
and a node the broker has never heard of is not considered offline, so static peer lists keep
working with no broker at all. The broker is trusted to the extent its ACLs allow: anyone who
may publish on the consortium's topics can mark a member offline.

``aiomqtt`` is imported only when a connection is made, so ``import p2pfl`` (and importing
this module) works without it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from p2pfl.discovery.membership import (
    Membership,
    MemberStatus,
    check_topic_level,
    progress_payload,
    progress_topic,
    status_payload,
    status_topic,
    topic_prefix,
)
from p2pfl.errors import ConfigError, NodeError, TransportError

if TYPE_CHECKING:
    import aiomqtt

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT = 1883
# Reconnect pacing: doubling from BACKOFF_BASE up to BACKOFF_MAX, each delay scaled by a
# random factor so that a consortium restarting together does not hammer the broker in step.
BACKOFF_BASE = 0.1
BACKOFF_MAX = 5.0
# How long a best-effort publish ("left", progress) may wait for the broker's acknowledgement:
# neither shutting down nor a training round may hang on a broker that just went away.
PUBLISH_TIMEOUT = 2.0


def parse_broker_url(broker: str) -> tuple[str, int]:
    """Split ``mqtt://host[:port]`` into host and port (1883 by default).

    Raises:
        ConfigError: on another scheme, a missing host, a bad port or extra URL parts.
    """
    example = "expected mqtt://HOST:PORT, e.g. mqtt://127.0.0.1:1883"
    try:
        url = urlsplit(broker)
        port = url.port
    except ValueError as exc:  # urlsplit raises on a non-numeric or out-of-range port
        raise ConfigError("discovery", f"broker {broker!r} is not a valid URL ({exc}); {example}") from None
    if url.scheme != "mqtt":
        raise ConfigError(
            "discovery", f"broker {broker!r} must use the mqtt:// scheme (TLS is not supported); {example}"
        )
    if not url.hostname:
        raise ConfigError("discovery", f"broker {broker!r} has no host; {example}")
    if url.username is not None or url.path not in ("", "/") or url.query or url.fragment:
        raise ConfigError("discovery", f"broker {broker!r} has parts other than host and port; {example}")
    if port == 0:
        raise ConfigError("discovery", f"broker {broker!r} has port 0; {example}")
    return url.hostname, port if port is not None else DEFAULT_PORT


def _check_level(field: str, value: str) -> None:
    problem = check_topic_level(field, value)
    if problem is not None:
        raise ConfigError("discovery", problem)


def _import_aiomqtt() -> Any:
    try:
        import aiomqtt
    except ImportError:
        raise ConfigError(
            "discovery", "MQTT discovery needs aiomqtt: pip install 'p2pfl-gossip[mqtt]'"
        ) from None
    return aiomqtt


async def _retry(attempt: Callable[[], Awaitable[T]], timeout: float | None, what: str) -> T:
    """Run ``attempt`` until it succeeds, backing off exponentially with jitter.

    Args:
        attempt: one try; an ``aiomqtt.MqttError`` or ``OSError`` from it means "try again".
        timeout: give up after this many seconds; ``None`` retries until cancelled.
        what: the broker, for messages.

    Raises:
        TransportError: when ``timeout`` runs out.
    """
    mqtt = _import_aiomqtt()
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    delay = BACKOFF_BASE
    tries = 0
    while True:
        tries += 1
        try:
            return await attempt()
        except (mqtt.MqttError, OSError) as exc:
            error = exc
        pause = delay * random.uniform(0.5, 1.0)
        delay = min(delay * 2, BACKOFF_MAX)
        if deadline is not None and loop.time() + pause > deadline:
            raise TransportError(
                f"cannot reach MQTT broker {what} after {tries} tries in {timeout:g} s: {error}"
            ) from None
        # the first failure and then every fifth are worth a line: the node is waiting on it
        level = logging.WARNING if tries == 1 or tries % 5 == 0 else logging.DEBUG
        log.log(level, "MQTT broker %s not reachable (%s, try %d)%s; retrying in %.1f s", what, error, tries,
                "" if timeout is None else f", giving up after {timeout:g} s", pause)
        await asyncio.sleep(pause)


async def _close(client: aiomqtt.Client) -> None:
    """Disconnect ``client``, tolerating a broker that is already gone."""
    mqtt = _import_aiomqtt()
    try:
        await client.__aexit__(None, None, None)
    except mqtt.MqttError as exc:
        log.debug("MQTT disconnect was not clean: %s", exc)


async def _stop(task: asyncio.Task[None], name: str) -> None:
    """Cancel ``task`` and wait until it has really ended.

    Python 3.11's ``asyncio.wait_for`` (which aiomqtt awaits on) can swallow a cancellation that
    lands just as its future completes, leaving the task running; so cancel until it is done.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        # Reported here, where the task is reaped; membership stopped updating when it died.
        log.error("MQTT listener of node %s had failed", name, exc_info=task.exception())


def _payload_bytes(payload: object) -> bytes:
    # aiomqtt hands incoming payloads over as bytes; anything else is not ours to parse.
    return bytes(payload) if isinstance(payload, bytes | bytearray) else b""


class MqttPresence:
    """One node's presence: announces itself (retained) with a Last Will that marks it offline,
    and tracks the consortium's live membership.

    Use it as ``async with MqttPresence(...) as presence:`` on the node's event loop. While
    inside, it owns one listener task that also reconnects (and re-announces) if the broker
    connection drops; membership stays as last seen until then.

    Args:
        broker: ``mqtt://host:port``.
        consortium: the consortium's name (one MQTT topic level).
        name: this node's name (one MQTT topic level).
        endpoint: this node's ZeroMQ endpoint, announced to peers.
        fingerprint: this node's public-key fingerprint, announced to peers.
        is_member: ``(name, fingerprint) -> bool``; announcements failing it are ignored.
        keepalive: seconds between MQTT pings; the broker fires the Last Will after about
            1.5 x this much silence (a killed process's socket closes at once and fires it sooner).
        connect_timeout: how long entering may keep retrying the first connection.

    Raises:
        ConfigError: on a malformed broker URL or a name/consortium that is not one topic level.
    """

    def __init__(
        self,
        broker: str,
        consortium: str,
        name: str,
        endpoint: str,
        fingerprint: str,
        is_member: Callable[[str, str], bool],
        *,
        keepalive: int = 10,
        connect_timeout: float = 30.0,
    ) -> None:
        self._host, self._port = parse_broker_url(broker)
        _check_level("consortium", consortium)
        _check_level("name", name)
        if keepalive < 1:
            raise ConfigError("discovery", f"keepalive must be at least 1 s, got {keepalive}")
        self.broker = broker
        self.consortium = consortium
        self.name = name
        self.endpoint = endpoint
        self.fingerprint = fingerprint
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._membership = Membership(consortium, is_member)
        self._callbacks: list[Callable[[], None]] = []
        self._client: aiomqtt.Client | None = None
        # False while the listener is reconnecting: publishing then would only wait for a timeout.
        self._connected = False
        # Re-sent on every reconnection, since a restarted broker may have lost retained messages.
        self._progress: bytes | None = None
        self._listener: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MqttPresence:
        if self._listener is not None:
            raise NodeError(f"MQTT presence of {self.name!r} is already running")
        self._client = await _retry(self._open_session, self._connect_timeout, self.broker)
        self._connected = True
        self._listener = asyncio.create_task(self._listen(), name=f"p2pfl-mqtt-presence-{self.name}")
        log.info("node %s announced online on %s (consortium %s)", self.name, self.broker, self.consortium)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        mqtt = _import_aiomqtt()
        listener, self._listener = self._listener, None
        if listener is not None:
            await _stop(listener, self.name)
        client, self._client = self._client, None
        connected, self._connected = self._connected, False
        if client is None:
            return
        if not connected:
            # The broker is unreachable: it will publish our Will once it notices, and nobody
            # can be told "left" now anyway.
            await _close(client)
            return
        try:
            # "left" (not "offline") tells peers this was on purpose; the graceful disconnect
            # below makes the broker discard the Will so it cannot overwrite it.
            await client.publish(
                status_topic(self.consortium, self.name),
                status_payload("left", self.endpoint, self.fingerprint),
                qos=1, retain=True, timeout=PUBLISH_TIMEOUT,
            )
        except mqtt.MqttError as exc:
            log.warning("node %s could not announce leaving on %s: %s", self.name, self.broker, exc)
        await _close(client)
        log.info("node %s left %s", self.name, self.broker)

    def is_offline(self, peer: str) -> bool:
        """True only if the broker says ``peer`` is offline or has left; unknown is not offline."""
        return self._membership.state_of(peer) in ("offline", "left")

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on the event loop after every membership change.

        It runs inside the listener, so it must not block; an exception from it is logged.
        """
        self._callbacks.append(callback)

    def members(self) -> dict[str, MemberStatus]:
        """The accepted members, by name, as last heard from the broker (including this node)."""
        return self._membership.members()

    async def publish_progress(self, round: int, accuracy: float, loss: float) -> None:
        """Announce this node's latest round result (retained), best effort.

        A broker that is unreachable right now is logged, not raised: progress is informational
        and must not stop training. The latest progress is re-sent when the connection returns.

        Raises:
            NodeError: when called outside ``async with``.
        """
        mqtt = _import_aiomqtt()
        if self._client is None:
            raise NodeError(f"MQTT presence of {self.name!r} is not running: use it in 'async with'")
        self._progress = progress_payload(round, accuracy, loss)
        if not self._connected:
            log.warning("node %s: MQTT broker unreachable, progress of round %d will follow on reconnection",
                        self.name, round)
            return
        try:
            await self._client.publish(
                progress_topic(self.consortium, self.name), self._progress,
                qos=1, retain=True, timeout=PUBLISH_TIMEOUT,
            )
        except mqtt.MqttError as exc:
            log.warning("node %s could not publish progress of round %d: %s", self.name, round, exc)

    async def _open_session(self) -> aiomqtt.Client:
        """Connect with the Will set, announce online, and subscribe; one attempt."""
        mqtt = _import_aiomqtt()
        topic = status_topic(self.consortium, self.name)
        client = mqtt.Client(
            self._host,
            self._port,
            # A stable id makes a restarted node take over its stale session at once (the broker
            # then fires the old Will before our "online"), instead of the stale session's Will
            # firing later and overwriting the new announcement.
            identifier=f"p2pfl/{self.consortium}/{self.name}",
            keepalive=self._keepalive,
            will=mqtt.Will(
                topic, status_payload("offline", self.endpoint, self.fingerprint), qos=1, retain=True
            ),
            timeout=min(10.0, self._connect_timeout),
        )
        await client.__aenter__()
        try:
            await client.publish(
                topic, status_payload("online", self.endpoint, self.fingerprint), qos=1, retain=True
            )
            if self._progress is not None:
                await client.publish(
                    progress_topic(self.consortium, self.name), self._progress, qos=1, retain=True
                )
            prefix = topic_prefix(self.consortium)
            await client.subscribe(f"{prefix}/+/status", qos=1)
            await client.subscribe(f"{prefix}/+/progress", qos=1)
        except BaseException:
            await _close(client)
            raise
        return client

    async def _listen(self) -> None:
        """Apply incoming messages; reconnect and re-announce whenever the broker drops us."""
        mqtt = _import_aiomqtt()
        while True:
            client = self._client
            assert client is not None  # set before this task starts, replaced only here
            try:
                async for message in client.messages:
                    if self._membership.handle(
                        str(message.topic), _payload_bytes(message.payload), bool(message.retain)
                    ):
                        self._notify()
            except mqtt.MqttError as exc:
                log.warning("node %s lost MQTT broker %s (%s); reconnecting", self.name, self.broker, exc)
            self._connected = False
            await _close(client)
            self._client = await _retry(self._open_session, None, self.broker)
            self._connected = True
            log.info("node %s reconnected to %s", self.name, self.broker)

    def _notify(self) -> None:
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:  # one faulty observer must not stop membership tracking
                log.exception("membership callback %r failed", callback)


async def watch_consortium(
    broker: str, consortium: str, *, connect_timeout: float = 10.0
) -> AsyncGenerator[dict[str, MemberStatus], None]:
    """Follow a consortium's membership read-only (publishes nothing, accepts every name).

    Yields the (possibly empty) snapshot once subscribed, then a new snapshot after each
    change. Close it with ``contextlib.aclosing`` (or ``aclose()``) to disconnect promptly.

    Raises:
        ConfigError: on a malformed broker URL or consortium name.
        TransportError: if the broker cannot be reached within ``connect_timeout`` seconds,
            or the connection drops while watching.
    """
    host, port = parse_broker_url(broker)
    _check_level("consortium", consortium)
    mqtt = _import_aiomqtt()
    membership = Membership(consortium)

    async def connect() -> aiomqtt.Client:
        client = mqtt.Client(host, port, timeout=min(10.0, connect_timeout))
        await client.__aenter__()
        try:
            prefix = topic_prefix(consortium)
            await client.subscribe(f"{prefix}/+/status", qos=1)
            await client.subscribe(f"{prefix}/+/progress", qos=1)
        except BaseException:
            await _close(client)
            raise
        return client

    client = await _retry(connect, connect_timeout, broker)
    try:
        yield membership.members()
        async for message in client.messages:
            if membership.handle(str(message.topic), _payload_bytes(message.payload), bool(message.retain)):
                yield membership.members()
    except mqtt.MqttError as exc:
        raise TransportError(f"lost MQTT broker {broker}: {exc}") from None
    finally:
        await _close(client)
