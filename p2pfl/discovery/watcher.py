"""Read-only views of a broker: follow one consortium's membership, list the consortia on it.

They publish nothing and accept every name (no fingerprint check): they are for people watching.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from p2pfl.discovery.broker import check_level, close, import_aiomqtt, parse_broker_url, payload_bytes, retry
from p2pfl.discovery.membership import Membership, MemberStatus, check_topic_level, status_topic, topic_prefix
from p2pfl.errors import TransportError

if TYPE_CHECKING:
    import aiomqtt

# How long a lookup listens for the broker's retained messages: they come right after the
# subscription is acknowledged, but MQTT has no "that was all" marker.
RETAINED_LISTEN = 1.0


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
    check_level("consortium", consortium)
    mqtt = import_aiomqtt()
    membership = Membership(consortium)

    async def connect() -> aiomqtt.Client:
        client = mqtt.Client(host, port, timeout=min(10.0, connect_timeout))
        await client.__aenter__()
        try:
            prefix = topic_prefix(consortium)
            await client.subscribe(f"{prefix}/+/status", qos=1)
            await client.subscribe(f"{prefix}/+/progress", qos=1)
        except BaseException:
            await close(client)
            raise
        return client

    client = await retry(connect, connect_timeout, broker)
    try:
        yield membership.members()
        async for message in client.messages:
            if membership.handle(str(message.topic), payload_bytes(message.payload), bool(message.retain)):
                yield membership.members()
    except mqtt.MqttError as exc:
        raise TransportError(f"lost MQTT broker {broker}: {exc}") from None
    finally:
        await close(client)


async def consortia_on(
    broker: str, *, listen: float = RETAINED_LISTEN, connect_timeout: float = 10.0
) -> list[str]:
    """The names of the consortia whose nodes have a retained status on ``broker``, sorted.

    Read-only: subscribes to ``p2pfl/+/nodes/+/status`` and collects what the broker replays
    within ``listen`` seconds of the subscription.

    Raises:
        ConfigError: on a malformed broker URL.
        TransportError: if the broker cannot be reached within ``connect_timeout`` seconds.
    """
    host, port = parse_broker_url(broker)
    mqtt = import_aiomqtt()

    async def connect() -> aiomqtt.Client:
        client = mqtt.Client(host, port, timeout=min(10.0, connect_timeout))
        await client.__aenter__()
        try:
            await client.subscribe(status_topic("+", "+"), qos=1)
        except BaseException:
            await close(client)
            raise
        return client

    client = await retry(connect, connect_timeout, broker)
    names: set[str] = set()
    try:
        async with asyncio.timeout(listen):
            async for message in client.messages:
                levels = str(message.topic).split("/")
                if len(levels) == 5 and check_topic_level("consortium", levels[1]) is None and message.payload:
                    names.add(levels[1])
    except TimeoutError:
        pass
    except mqtt.MqttError as exc:
        raise TransportError(f"lost MQTT broker {broker}: {exc}") from None
    finally:
        await close(client)
    return sorted(names)
