"""Connecting to an MQTT broker: URL parsing, credentials and TLS, retries with backoff, a
tolerant disconnect.

``aiomqtt`` is imported only when a connection is made, so importing this module works without it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import ssl
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from p2pfl.discovery.membership import check_topic_level
from p2pfl.errors import ConfigError, TransportError

if TYPE_CHECKING:
    import aiomqtt

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
# Reconnect pacing: doubling from BACKOFF_BASE up to BACKOFF_MAX, each delay scaled by a
# random factor so that a consortium restarting together does not hammer the broker in step.
BACKOFF_BASE = 0.1
BACKOFF_MAX = 5.0
# How long a best-effort publish ("left", progress) may wait for the broker's acknowledgement:
# neither shutting down nor a training round may hang on a broker that just went away.
PUBLISH_TIMEOUT = 2.0
#: How long leaving the broker may take before the connection is dropped without its goodbye.
DISCONNECT_SECONDS = 3.0


def parse_broker_url(broker: str) -> tuple[str, int]:
    """Split ``mqtt://host[:port]`` (1883 by default) or ``mqtts://host[:port]`` (TLS, 8883 by
    default) into host and port; :func:`uses_tls` tells which.

    Raises:
        ConfigError: on another scheme, a missing host, a bad port or extra URL parts
            (credentials included: they go in ``discovery_username``/``discovery_password_file``).
    """
    example = "expected mqtt://HOST:PORT or mqtts://HOST:PORT (TLS), e.g. mqtts://broker.example:8883"
    try:
        url = urlsplit(broker)
        port = url.port
    except ValueError as exc:  # urlsplit raises on a non-numeric or out-of-range port
        raise ConfigError("discovery", f"broker {broker!r} is not a valid URL ({exc}); {example}") from None
    if url.scheme not in ("mqtt", "mqtts"):
        raise ConfigError("discovery", f"broker {broker!r} must use mqtt:// or mqtts://; {example}")
    if not url.hostname:
        raise ConfigError("discovery", f"broker {broker!r} has no host; {example}")
    if url.username is not None:
        raise ConfigError(
            "discovery", f"broker {broker!r} holds credentials: give discovery_username and "
            "discovery_password_file (a file, so the password is in no config and no process list)",
        )
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ConfigError("discovery", f"broker {broker!r} has parts other than host and port; {example}")
    if port == 0:
        raise ConfigError("discovery", f"broker {broker!r} has port 0; {example}")
    default = DEFAULT_TLS_PORT if url.scheme == "mqtts" else DEFAULT_PORT
    return url.hostname, port if port is not None else default


def uses_tls(broker: str) -> bool:
    """Whether ``broker`` is an ``mqtts://`` URL."""
    return broker.startswith("mqtts://")


@dataclass(frozen=True)
class BrokerLogin:
    """How to authenticate to the broker and check its certificate (all optional).

    Attributes:
        username: the MQTT user name (the broker's password file and ACL name it).
        password_file: a file holding the password (its first line), readable only by
            its owner; never the password itself, which would end up in configs and logs.
        ca_file: the CA certificate(s) (PEM) that signed the broker's certificate, for
            ``mqtts://``; empty = the system's trusted CAs.
        cert_file: a client certificate (PEM), for brokers that require one.
        key_file: its private key (PEM); empty when ``cert_file`` holds it.
    """

    username: str = ""
    password_file: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def client_options(self, broker: str) -> dict[str, Any]:
        """Keyword arguments for ``aiomqtt.Client``: credentials and a TLS context.

        Raises:
            ConfigError: a file is missing, unreadable or invalid (one line, naming the key),
                a password without a user name, or TLS files for a plain ``mqtt://`` broker.
        """
        options: dict[str, Any] = {}
        if self.password_file and not self.username:
            raise ConfigError("discovery_username", "a password needs a user name: set discovery_username")
        if self.username:
            options["username"] = self.username
            options["password"] = _read_password(self.password_file) if self.password_file else None
        tls_files = [key for key in ("ca_file", "cert_file", "key_file") if getattr(self, key)]
        if not uses_tls(broker):
            if tls_files:
                raise ConfigError(
                    f"discovery_{tls_files[0]}", f"TLS files need an mqtts:// broker, got {broker!r}"
                )
            return options
        options["tls_context"] = self._tls_context()
        return options

    def _tls_context(self) -> ssl.SSLContext:
        if self.key_file and not self.cert_file:
            raise ConfigError("discovery_key_file", "a client key needs its certificate: set discovery_cert_file")
        try:
            context = ssl.create_default_context(cafile=_readable("discovery_ca_file", self.ca_file))
        except ssl.SSLError as exc:
            raise ConfigError("discovery_ca_file", f"{self.ca_file} holds no usable CA certificate ({exc})") from None
        if self.cert_file:
            _readable("discovery_cert_file", self.cert_file)
            key = _readable("discovery_key_file", self.key_file)
            try:
                context.load_cert_chain(self.cert_file, key)
            except ssl.SSLError as exc:
                raise ConfigError(
                    "discovery_cert_file", f"{self.cert_file} and its key cannot be used as a client certificate ({exc})"
                ) from None
        return context


def _readable(key: str, path: str) -> str | None:
    if not path:
        return None
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    return path


def _read_password(path: str) -> str:
    file = Path(path)
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError("discovery_password_file", f"cannot read {path}: {why}") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            "discovery_password_file", f"{path} has mode {stat.S_IMODE(mode):o}, open to group/others; "
            f"run 'chmod 600 {path}' and change the password if others could read it",
        )
    password = text.splitlines()[0] if text.strip() else ""
    if not password:
        raise ConfigError("discovery_password_file", f"{path} is empty; its first line is the password")
    return password


def client_id(consortium: str, name: str) -> str:
    """A client id nobody can guess: with a known id, a stranger connecting under it would
    take over (and end) the member's session, which fires its Last Will."""
    return f"p2pfl/{consortium}/{name}/{secrets.token_hex(8)}"


class BrokerRefused(TransportError):
    """The broker refused us for a reason retrying will not fix (credentials, TLS)."""


def permanent_failure(error: BaseException, what: str, username: str) -> BrokerRefused | None:
    """A one-line error if ``error`` (from connecting) will not go away by retrying, else None."""
    import_aiomqtt()
    from aiomqtt.exceptions import MqttConnectError  # a refused CONNECT; publish errors share the codes

    if isinstance(error, MqttConnectError):
        code = getattr(error.rc, "value", error.rc)
        # MQTT 3.1.1 CONNACK codes 4/5 (mosquitto says 5 for a wrong password too); paho 2
        # reports them as the MQTT 5 reason codes 134/135
        if code in (4, 5, 134, 135):
            who = f"user {username!r}" if username else "an anonymous client"
            return BrokerRefused(
                f"MQTT broker {what} refused {who}: bad user name or password, or not authorised "
                f"({error}); check discovery_username and discovery_password_file"
            )
        return None
    text = str(error)
    if "SSL" in text or "certificate" in text.lower():
        return BrokerRefused(
            f"TLS handshake with MQTT broker {what} failed: {text} (check discovery_ca_file, that the broker's "
            "certificate names the host in the URL, and that the broker listens for TLS on that port)"
        )
    return None


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


async def retry(
    attempt: Callable[[], Awaitable[T]], timeout: float | None, what: str, username: str = ""
) -> T:
    """Run ``attempt`` until it succeeds, backing off exponentially with jitter.

    Args:
        attempt: one try; an ``aiomqtt.MqttError`` or ``OSError`` from it means "try again".
        timeout: give up after this many seconds; ``None`` retries until cancelled (also
            after a refusal that retrying will not fix: it is logged as an error each time
            the backoff is logged, since the broker's configuration may still change).
        what: the broker, for messages.
        username: the user we connect as, for messages.

    Raises:
        BrokerRefused: with a ``timeout``, at once on bad credentials or a failed TLS handshake.
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
        refused = permanent_failure(error, what, username)
        if refused is not None and timeout is not None:
            raise refused from None
        pause = delay * random.uniform(0.5, 1.0)
        delay = min(delay * 2, BACKOFF_MAX)
        if deadline is not None and loop.time() + pause > deadline:
            raise TransportError(
                f"cannot reach MQTT broker {what} after {tries} tries in {timeout:g} s: {error}"
            ) from None
        # the first failure and then every fifth are worth a line: the node is waiting on it
        level = logging.WARNING if tries == 1 or tries % 5 == 0 else logging.DEBUG
        if refused is not None:
            level = logging.ERROR if level == logging.WARNING else level
            error = refused
        log.log(level, "MQTT broker %s not reachable (%s, try %d)%s; retrying in %.1f s", what, error, tries,
                "" if timeout is None else f", giving up after {timeout:g} s", pause)
        await asyncio.sleep(pause)


async def close(client: aiomqtt.Client) -> None:
    """Disconnect ``client``, tolerating a broker that is already gone."""
    mqtt = import_aiomqtt()
    try:
        # aiomqtt waits for the broker's word without a deadline; a client cancelled mid-read
        # (Ctrl-C in watch) can miss it, and stopping must not hang on the broker
        async with asyncio.timeout(DISCONNECT_SECONDS):
            await client.__aexit__(None, None, None)
    except (mqtt.MqttError, TimeoutError) as exc:
        log.debug("MQTT disconnect was not clean: %r", exc)


def payload_bytes(payload: object) -> bytes:
    # aiomqtt hands incoming payloads over as bytes; anything else is not ours to parse.
    return bytes(payload) if isinstance(payload, bytes | bytearray) else b""
