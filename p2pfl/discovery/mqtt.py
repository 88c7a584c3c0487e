"""Presence and liveness of consortium nodes over an MQTT broker (optional, needs ``aiomqtt``).

The broker only carries small JSON announcements; model weights never go through it. Each
node announces itself with a retained ``online`` status and registers a Last Will that the
broker publishes (retained) as ``offline`` if the node vanishes without saying goodbye. Leaving
on purpose, it says why: ``finished`` (all rounds done) or ``stopped`` (stopped mid-run); a node
that fails with an exception says ``offline``, as its Will would. What the
broker says is advisory: a peer is treated as gone only when the broker explicitly says so,
and a node the broker has never heard of is not considered offline, so static peer lists keep
working with no broker at all.

Given the consortium's signing keys, a node accepts only what each member signed itself
(:mod:`p2pfl.discovery.signing`): a stranger who can publish on the broker cannot mark a
member offline, replay its old statuses or fake its progress; such messages are counted in
:attr:`MqttPresence.refused`. Who may read (progress included) and publish at all is the
broker's business: give it users, ACLs and TLS (``scripts/deploy/mosquitto/``), and give
the node ``login`` to match.

``aiomqtt`` is imported only when a connection is made, so ``import p2pfl`` (and importing
this module) works without it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from p2pfl.discovery.broker import (
    PUBLISH_TIMEOUT,
    BrokerLogin,
    check_level,
    client_id,
    close,
    import_aiomqtt,
    parse_broker_url,
    payload_bytes,
    retry,
)
from p2pfl.discovery.membership import (
    Membership,
    MemberStatus,
    progress_fields,
    progress_topic,
    status_fields,
    status_topic,
    topic_prefix,
)
from p2pfl.discovery.signing import Signer, Verifier
from p2pfl.errors import ConfigError, NodeError

if TYPE_CHECKING:
    from collections import Counter

    import aiomqtt

    from p2pfl.security.identity import Identity

log = logging.getLogger(__name__)

#: At most one re-announcement per this many seconds (see ``MqttPresence._on_own_status``).
REANNOUNCE_INTERVAL = 1.0


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


class MqttPresence:
    """One node's presence: announces itself (retained) with a Last Will that marks it offline,
    and tracks the consortium's live membership.

    Use it as ``async with MqttPresence(...) as presence:`` on the node's event loop. While
    inside, it owns one listener task that also reconnects (and re-announces) if the broker
    connection drops; membership stays as last seen until then. Leaving announces
    ``finished`` once :meth:`finish` was called, else ``stopped`` (also when cancelled), and
    ``offline`` when an exception other than a cancellation ends the block.

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
        login: user name, password file and TLS files for the broker.
        identity: this member's signing key: what it publishes is signed. ``None`` publishes
            unsigned messages, which verifying members refuse.
        signing_keys: ``name -> signing key (Z85) or None``, the consortium's; announcements
            are then accepted only when signed by the member named in the topic, newer than
            the last one and not stale. ``None`` accepts unsigned announcements (say so: anyone
            who can publish on the broker can then mark a member offline).

    Raises:
        ConfigError: on a malformed broker URL, a name/consortium that is not one topic level,
            or an unusable password, CA or certificate file.
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
        login: BrokerLogin | None = None,
        identity: Identity | None = None,
        signing_keys: Callable[[str], str | None] | None = None,
    ) -> None:
        self._host, self._port = parse_broker_url(broker)
        self._login = login or BrokerLogin()
        self._client_options = self._login.client_options(broker)  # reads the files now: errors at start
        check_level("consortium", consortium)
        check_level("name", name)
        if keepalive < 1:
            raise ConfigError("discovery", f"keepalive must be at least 1 s, got {keepalive}")
        self.broker = broker
        self.consortium = consortium
        self.name = name
        self.endpoint = endpoint
        self.fingerprint = fingerprint
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._signer = Signer(identity)
        verifier = Verifier(signing_keys) if signing_keys is not None else None
        self._membership = Membership(consortium, is_member, verifier)
        self._client_id = client_id(consortium, name)
        self._callbacks: list[Callable[[], None]] = []
        self._client: aiomqtt.Client | None = None
        # False while the listener is reconnecting: publishing then would only wait for a timeout.
        self._connected = False
        # Re-sent (signed afresh) on every reconnection: a restarted broker may have lost retained messages.
        self._progress: tuple[int, float, float] | None = None
        self._last_round: int | None = None  # the last round reported, named when leaving
        self._finished = False
        self._listener: asyncio.Task[None] | None = None
        self._announced: bytes | None = None  # this session's "online", as published
        self._reannouncing: asyncio.Task[None] | None = None
        self._reannounced_at = -REANNOUNCE_INTERVAL
        self._overwritten = 0  # times someone else wrote on our status topic

    async def __aenter__(self) -> MqttPresence:
        if self._listener is not None:
            raise NodeError(f"MQTT presence of {self.name!r} is already running")
        self._client = await retry(self._open_session, self._connect_timeout, self.broker, self._login.username)
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
        listener, self._listener = self._listener, None
        if listener is not None:
            await _stop(listener, self.name)
        reannouncing, self._reannouncing = self._reannouncing, None
        if reannouncing is not None:
            await _stop(reannouncing, self.name)
        if self.refused:
            log.info("node %s ignored announcements from the broker: %s", self.name, dict(sorted(self.refused.items())))
        client, self._client = self._client, None
        connected, self._connected = self._connected, False
        if client is None:
            return
        if not connected:
            # The broker is unreachable: it will publish our Will once it notices, and nobody
            # can be told "left" now anyway.
            await close(client)
            return
        # The graceful disconnect below makes the broker discard the Will, so say it ourselves.
        failed = exc is not None and not isinstance(exc, asyncio.CancelledError | KeyboardInterrupt)
        reason = None if failed else "finished" if self._finished else "stopped"
        await self._say_goodbye(client, reason)
        await close(client)
        log.info("node %s left %s (%s)", self.name, self.broker, reason or "failed: announced offline")

    def finish(self, last_round: int) -> None:
        """Mark the run complete: on leaving, announce ``finished`` after ``last_round`` (else ``stopped``)."""
        self._finished = True
        self._last_round = last_round if self._last_round is None else max(self._last_round, last_round)

    async def _say_goodbye(self, client: aiomqtt.Client, reason: str | None) -> None:
        """Publish ``left`` with ``reason`` (``finished``/``stopped``), or ``offline`` for ``None``; best effort."""
        mqtt = import_aiomqtt()
        topic = status_topic(self.consortium, self.name)
        # "left" stays the wire state so that older readers see the node gone; the reason is extra
        payload = self._signer.seal(topic, (
            status_fields("offline", self.endpoint, self.fingerprint) if reason is None
            else status_fields("left", self.endpoint, self.fingerprint, reason=reason, round=self._last_round)
        ))
        try:
            await client.publish(topic, payload, qos=1, retain=True, timeout=PUBLISH_TIMEOUT)
        except mqtt.MqttError as exc:
            log.warning("node %s could not announce leaving on %s: %s", self.name, self.broker, exc)

    def is_offline(self, peer: str) -> bool:
        """True only if the broker says ``peer`` is offline or has left; unknown is not offline."""
        state = self._membership.state_of(peer)
        return state is not None and state != "online"

    def has_finished(self, peer: str) -> bool:
        """True only if the broker says ``peer`` did all its rounds and left (``finished``)."""
        return self._membership.state_of(peer) == "finished"

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on the event loop after every membership change.

        It runs inside the listener, so it must not block; an exception from it is logged.
        """
        self._callbacks.append(callback)

    def members(self) -> dict[str, MemberStatus]:
        """The accepted members, by name, as last heard from the broker (including this node)."""
        return self._membership.members()

    @property
    def refused(self) -> Counter[str]:
        """Announcements ignored so far, by reason (``unsigned``, ``forged``, ``replayed``, ...)."""
        return self._membership.refused

    async def publish_progress(self, round: int, accuracy: float, loss: float) -> None:
        """Announce this node's latest round result (retained), best effort.

        A broker that is unreachable right now is logged, not raised: progress is informational
        and must not stop training. The latest progress is re-sent when the connection returns.

        Raises:
            NodeError: when called outside ``async with``.
        """
        mqtt = import_aiomqtt()
        if self._client is None:
            raise NodeError(f"MQTT presence of {self.name!r} is not running: use it in 'async with'")
        self._progress = (round, accuracy, loss)
        self._last_round = round if self._last_round is None else max(self._last_round, round)
        if not self._connected:
            log.warning("node %s: MQTT broker unreachable, progress of round %d will follow on reconnection",
                        self.name, round)
            return
        topic = progress_topic(self.consortium, self.name)
        try:
            await self._client.publish(
                topic, self._signer.seal(topic, progress_fields(*self._progress)),
                qos=1, retain=True, timeout=PUBLISH_TIMEOUT,
            )
        except mqtt.MqttError as exc:
            log.warning("node %s could not publish progress of round %d: %s", self.name, round, exc)

    async def _open_session(self) -> aiomqtt.Client:
        """Connect with the Will set, announce online, and subscribe; one attempt."""
        mqtt = import_aiomqtt()
        topic = status_topic(self.consortium, self.name)
        # Sealed in this order so that the Will is newer than the "online" it replaces when it
        # fires; a stale session's Will firing after a later "online" is then refused as replayed.
        online = self._signer.seal(topic, status_fields("online", self.endpoint, self.fingerprint))
        will = self._signer.seal(topic, status_fields("offline", self.endpoint, self.fingerprint))
        client = mqtt.Client(
            self._host,
            self._port,
            identifier=self._client_id,
            keepalive=self._keepalive,
            will=mqtt.Will(topic, will, qos=1, retain=True),
            timeout=min(10.0, self._connect_timeout),
            **self._client_options,
        )
        await client.__aenter__()
        try:
            self._announced = online
            await client.publish(topic, online, qos=1, retain=True)
            if self._progress is not None:
                progress = progress_topic(self.consortium, self.name)
                await client.publish(
                    progress, self._signer.seal(progress, progress_fields(*self._progress)), qos=1, retain=True
                )
            prefix = topic_prefix(self.consortium)
            await client.subscribe(f"{prefix}/+/status", qos=1)
            await client.subscribe(f"{prefix}/+/progress", qos=1)
        except BaseException:
            await close(client)
            raise
        return client

    async def _listen(self) -> None:
        """Apply incoming messages; reconnect and re-announce whenever the broker drops us."""
        mqtt = import_aiomqtt()
        while True:
            client = self._client
            assert client is not None  # set before this task starts, replaced only here
            try:
                async for message in client.messages:
                    if str(message.topic) == status_topic(self.consortium, self.name):
                        self._on_own_status(payload_bytes(message.payload))
                    if self._membership.handle(
                        str(message.topic), payload_bytes(message.payload), bool(message.retain)
                    ):
                        self._notify()
            except mqtt.MqttError as exc:
                log.warning("node %s lost MQTT broker %s (%s); reconnecting", self.name, self.broker, exc)
            self._connected = False
            await close(client)
            self._client = await retry(self._open_session, None, self.broker, self._login.username)
            self._connected = True
            log.info("node %s reconnected to %s", self.name, self.broker)

    def _on_own_status(self, payload: bytes) -> None:
        """Someone else's message on our status topic (a stranger, a stale Will of ours) replaced
        our retained "online" on the broker: whoever subscribes next would read theirs. Publish
        our "online" again, byte for byte (same sequence number: members that have it ignore it,
        and our Will stays newer than it), at most once per :data:`REANNOUNCE_INTERVAL`."""
        if payload == self._announced or (self._reannouncing is not None and not self._reannouncing.done()):
            return
        self._overwritten += 1
        if self._overwritten == 1 or math.log10(self._overwritten).is_integer():
            log.warning("node %s: another client wrote on its status topic (%d times so far); announcing "
                        "online again", self.name, self._overwritten)
        self._reannouncing = asyncio.create_task(self._reannounce(), name=f"p2pfl-mqtt-reannounce-{self.name}")

    async def _reannounce(self) -> None:
        mqtt = import_aiomqtt()
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self._reannounced_at + REANNOUNCE_INTERVAL - loop.time()))
        client, payload = self._client, self._announced
        if client is None or payload is None or not self._connected:
            return  # the next session announces itself anyway
        self._reannounced_at = loop.time()
        try:
            await client.publish(
                status_topic(self.consortium, self.name), payload, qos=1, retain=True, timeout=PUBLISH_TIMEOUT
            )
        except mqtt.MqttError as exc:
            log.debug("node %s could not announce online again: %s", self.name, exc)

    def _notify(self) -> None:
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:  # one faulty observer must not stop membership tracking
                log.exception("membership callback %r failed", callback)
