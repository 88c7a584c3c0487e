"""CurveZMQ link security: encrypted links, and only allow-listed keys get in.

Two parts, because ZeroMQ splits them so:

* :class:`CurveSecurity` configures one node's sockets (its key pair; the key each peer
  must present) and maps the authenticated key of every received message to a member,
  so the node can reject messages whose header names someone else.
* :func:`curve_authenticator` runs the ZAP handler that admits or refuses connecting
  keys. ZeroMQ asks one handler per *context*, so whoever owns the context (a
  deployment's process, a simulation or test sharing one context) runs it exactly once.

Admission happens once per connection, at the handshake; revocation must also reach
connections that are already open, which is why the node re-checks the key of every
message against the current allow-list through :meth:`CurveSecurity.member_for`.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Protocol, runtime_checkable

import zmq
from zmq.auth.asyncio import AsyncioAuthenticator

from p2pfl.errors import TransportError
from p2pfl.security.allowlist import AllowList
from p2pfl.security.keys import KeyPair, fingerprint, validate_key

__all__ = [
    "ZAP_DOMAIN",
    "CurveAuthenticator",
    "CurveSecurity",
    "LinkSecurity",
    "curve_authenticator",
]

log = logging.getLogger(__name__)

#: ZAP domain p2pfl's receive sockets announce; the authenticator serves this domain.
ZAP_DOMAIN = "p2pfl"


@runtime_checkable
class LinkSecurity(Protocol):
    """What the transport needs from a link security layer."""

    def configure_server(self, sock: zmq.Socket) -> None:
        """Set up the receive (ROUTER) socket; called before it binds."""
        ...

    def configure_client(self, sock: zmq.Socket, peer: str) -> None:
        """Set up the send (DEALER) socket to ``peer``; called before it connects.

        Raises:
            TransportError: the layer has no credentials for ``peer``.
        """
        ...

    def member_for(self, user_id: str | None) -> str | None:
        """The member a message's authenticated identity belongs to; None if none (now)."""
        ...


class CurveSecurity:
    """CurveZMQ for one node: its own key pair plus the members' public keys.

    Args:
        keypair: this node's key pair (see :func:`~p2pfl.security.keys.read_secret_key`).
        allowlist: the members, by name and public key; reloading it takes effect on the
            next connection and on the next message of open connections.
        zap_domain: ZAP domain announced by the receive socket; must match the
            authenticator's.
    """

    def __init__(self, keypair: KeyPair, allowlist: AllowList, *, zap_domain: str = ZAP_DOMAIN) -> None:
        validate_key(keypair.public)
        validate_key(keypair.secret, "secret key")
        self._keypair = keypair
        self.allowlist = allowlist
        self.zap_domain = zap_domain

    @property
    def public_key(self) -> str:
        return self._keypair.public

    def configure_server(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._keypair.secret.encode("ascii"))
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self._keypair.public.encode("ascii"))
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        # The domain makes libzmq consult the ZAP handler; without one running, libzmq
        # admits any Curve client, but such links carry no User-Id and member_for()
        # refuses every message on them, so a missing authenticator fails closed.
        sock.setsockopt_string(zmq.ZAP_DOMAIN, self.zap_domain)

    def configure_client(self, sock: zmq.Socket, peer: str) -> None:
        server_key = self.allowlist.key_for(peer)
        if server_key is None:
            raise TransportError(
                f"no public key for peer {peer!r}: add its key to the allow-list and reload it "
                "before connecting (Curve needs the server's key to encrypt the handshake)"
            )
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key.encode("ascii"))
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self._keypair.public.encode("ascii"))
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._keypair.secret.encode("ascii"))

    def member_for(self, user_id: str | None) -> str | None:
        # The User-Id is the client's Z85 public key (pyzmq's default curve_user_id).
        if not user_id:
            return None
        return self.allowlist.member_for_key(user_id)

    def __repr__(self) -> str:
        return f"CurveSecurity(public={fingerprint(self._keypair.public)}, {self.allowlist!r})"


class _AllowListCredentials:
    """pyzmq credentials provider: a connecting key is admitted iff it is on the list now."""

    def __init__(self, allowlist: AllowList) -> None:
        self._allowlist = allowlist
        self._denied = 0

    def callback(self, domain: str, client_key: bytes) -> bool:
        member = self._allowlist.member_for_key(client_key)
        if member is not None:
            log.debug("ZAP: admitted %s (key %s)", member, fingerprint(client_key))
            return True
        self._denied += 1
        # Anyone can knock with random keys: log the first few, then sparsely.
        if self._denied <= 5 or self._denied % 1000 == 0:
            log.warning(
                "ZAP: refused a connection with key %s, not on the allow-list (#%d)",
                _safe_fingerprint(client_key), self._denied,
            )
        return False


class CurveAuthenticator:
    """The ZAP handler of one ZeroMQ context, admitting exactly the allow-listed keys.

    Use as ``async with curve_authenticator(context, allowlist): ...`` around the nodes
    of that context, or call :meth:`start` / :meth:`stop` from the event loop.

    Args:
        context: the context whose Curve sockets to authenticate.
        allowlist: consulted at every connection attempt.
        domain: the ZAP domain to serve (the sockets' ``zap_domain``).
    """

    def __init__(self, context: zmq.Context, allowlist: AllowList, *, domain: str = ZAP_DOMAIN) -> None:
        # a plain shadow: the ZAP socket is polled by pyzmq's asyncio poller either way
        self._context: zmq.Context = zmq.Context.shadow(context.underlying)
        self.allowlist = allowlist
        self.domain = domain
        self._auth: AsyncioAuthenticator | None = None

    def start(self) -> None:
        """Bind the context's ZAP endpoint and serve it on the running event loop.

        Raises:
            TransportError: another authenticator already serves this context.
        """
        if self._auth is not None:
            return
        asyncio.get_running_loop()  # fail here, not later in pyzmq, outside a loop
        auth = AsyncioAuthenticator(self._context, log=logging.getLogger(f"{__name__}.zap"))
        auth.configure_curve_callback(self.domain, _AllowListCredentials(self.allowlist))
        try:
            auth.start()
        except zmq.ZMQError as exc:
            if auth.zap_socket is not None:
                auth.zap_socket.close(linger=0)
            raise TransportError(
                f"cannot start the ZAP authenticator ({exc}): one already runs in this ZeroMQ "
                "context; run exactly one per context and share it between its nodes"
            ) from exc
        self._auth = auth
        log.debug("ZAP authenticator serving domain %r with %r", self.domain, self.allowlist)

    async def stop(self) -> None:
        """Stop serving; new Curve connections of the context then fail to authenticate."""
        auth, self._auth = self._auth, None
        if auth is not None:
            auth.stop()
            # let the cancelled ZAP task unwind before the loop (or the context) goes away
            await asyncio.sleep(0)

    @property
    def running(self) -> bool:
        return self._auth is not None

    async def __aenter__(self) -> CurveAuthenticator:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def curve_authenticator(
    context: zmq.Context, allowlist: AllowList, *, domain: str = ZAP_DOMAIN
) -> CurveAuthenticator:
    """The ZAP authenticator for ``context``, as an async context manager (see the class)."""
    return CurveAuthenticator(context, allowlist, domain=domain)


def _safe_fingerprint(key: bytes) -> str:
    try:
        return fingerprint(key)
    except Exception:  # a malformed key from the wire must not break the ZAP handler
        return "<malformed>"
