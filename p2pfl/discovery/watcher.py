"""Read-only views of a broker: follow one consortium's membership, list the consortia on it.

They publish nothing and check no fingerprint: they are for people watching. Given the
consortium's signing keys, the membership view shows only what members signed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING

from p2pfl.discovery.broker import (
    BrokerLogin,
    check_level,
    client_id,
    close,
    import_aiomqtt,
    parse_broker_url,
    payload_bytes,
    retry,
)
from p2pfl.discovery.membership import Membership, MemberStatus, check_topic_level, status_topic, topic_prefix
from p2pfl.discovery.signing import Verifier
from p2pfl.errors import TransportError

if TYPE_CHECKING:
    import aiomqtt

# How long a lookup listens for the broker's retained messages: they come right after the
# subscription is acknowledged, but MQTT has no "that was all" marker.
RETAINED_LISTEN = 1.0


async def watch_consortium(
    broker: str, consortium: str, *, connect_timeout: float = 10.0, login: BrokerLogin | None = None,
    signing_keys: Mapping[str, str] | None = None, refused: Counter[str] | None = None,
) -> AsyncGenerator[dict[str, MemberStatus], None]:
    """Follow a consortium's membership read-only (publishes nothing).

    Yields the (possibly empty) snapshot once subscribed, then a new snapshot after each
    change. Close it with ``contextlib.aclosing`` (or ``aclose()``) to disconnect promptly.

    Args:
        broker: ``mqtt://`` or ``mqtts://`` URL.
        consortium: the consortium's name.
        connect_timeout: how long to keep trying to connect.
        login: user name, password file and TLS files for the broker.
        signing_keys: member name -> signing key (``Consortium.signing_keys()``): only
            announcements signed by their member are shown. ``None`` shows every name.
        refused: if given, counts the announcements ignored, by reason (updated in place).

    Raises:
        ConfigError: on a malformed broker URL or consortium name, or unusable login files.
        TransportError: if the broker cannot be reached within ``connect_timeout`` seconds
            (at once if it refuses the login or the TLS handshake fails), or the connection
            drops while watching.
    """
    host, port = parse_broker_url(broker)
    check_level("consortium", consortium)
    login = login or BrokerLogin()
    options = login.client_options(broker)
    mqtt = import_aiomqtt()
    verifier = Verifier(dict(signing_keys).get) if signing_keys is not None else None
    membership = Membership(consortium, verifier=verifier, refused=refused)

    async def connect() -> aiomqtt.Client:
        client = mqtt.Client(
            host, port, identifier=client_id(consortium, "watch"), timeout=min(10.0, connect_timeout), **options
        )
        await client.__aenter__()
        try:
            prefix = topic_prefix(consortium)
            await client.subscribe(f"{prefix}/+/status", qos=1)
            await client.subscribe(f"{prefix}/+/progress", qos=1)
        except BaseException:
            await close(client)
            raise
        return client

    client = await retry(connect, connect_timeout, broker, login.username)
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
    broker: str, *, listen: float = RETAINED_LISTEN, connect_timeout: float = 10.0, login: BrokerLogin | None = None,
) -> list[str]:
    """The names of the consortia whose nodes have a retained status on ``broker``, sorted.

    Read-only: subscribes to ``p2pfl/+/nodes/+/status`` and collects what the broker replays
    within ``listen`` seconds of the subscription.

    Raises:
        ConfigError: on a malformed broker URL or unusable login files.
        TransportError: if the broker cannot be reached within ``connect_timeout`` seconds.
    """
    host, port = parse_broker_url(broker)
    login = login or BrokerLogin()
    options = login.client_options(broker)
    mqtt = import_aiomqtt()

    async def connect() -> aiomqtt.Client:
        client = mqtt.Client(host, port, timeout=min(10.0, connect_timeout), **options)
        await client.__aenter__()
        try:
            await client.subscribe(status_topic("+", "+"), qos=1)
        except BaseException:
            await close(client)
            raise
        return client

    client = await retry(connect, connect_timeout, broker, login.username)
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
