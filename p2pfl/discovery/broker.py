"""Connecting to an MQTT broker: URL parsing, retries with backoff, a tolerant disconnect.

``aiomqtt`` is imported only when a connection is made, so importing this module works without it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from p2pfl.discovery.membership import check_topic_level
from p2pfl.errors import ConfigError, TransportError

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


def check_level(field: str, value: str) -> None:
    problem = check_topic_level(field, value)
    if problem is not None:
        raise ConfigError("discovery", problem)


def import_aiomqtt() -> Any:
    try:
        import aiomqtt
    except ImportError:
        raise ConfigError(
            "discovery", "MQTT discovery needs aiomqtt: pip install 'p2pfl-gossip[mqtt]'"
        ) from None
    return aiomqtt


async def retry(attempt: Callable[[], Awaitable[T]], timeout: float | None, what: str) -> T:
    """Run ``attempt`` until it succeeds, backing off exponentially with jitter.

    Args:
        attempt: one try; an ``aiomqtt.MqttError`` or ``OSError`` from it means "try again".
        timeout: give up after this many seconds; ``None`` retries until cancelled.
        what: the broker, for messages.

    Raises:
        TransportError: when ``timeout`` runs out.
    """
    mqtt = import_aiomqtt()
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


async def close(client: aiomqtt.Client) -> None:
    """Disconnect ``client``, tolerating a broker that is already gone."""
    mqtt = import_aiomqtt()
    try:
        await client.__aexit__(None, None, None)
    except mqtt.MqttError as exc:
        log.debug("MQTT disconnect was not clean: %s", exc)


def payload_bytes(payload: object) -> bytes:
    # aiomqtt hands incoming payloads over as bytes; anything else is not ours to parse.
    return bytes(payload) if isinstance(payload, bytes | bytearray) else b""
