"""ZeroMQ transport: one bound ROUTER socket to receive, one DEALER per peer to send.

Why this shape: a ROUTER accepts any number of peers on one port and tells us which
connection a message came on (and, with CurveZMQ, which key authenticated it); a DEALER
per peer gives each neighbour its own bounded queue, so a dead or slow neighbour fills
only its own queue and never blocks the event loop or the other neighbours.

``inproc://`` peers (a simulation) are sent to through one ROUTER per node instead, each
peer on its own pipe with its own bounded queue, addressed by a routing id set at
connect: every socket costs a file descriptor (its mailbox), and with a DEALER per peer
thousands of nodes in one process ran out of them (4,000 nodes of degree 4 need 20,000
descriptors that way, 8,000 this way). inproc has no handshake and no link security, so
nothing per peer is lost.

asyncio integration is the one zmq.asyncio uses (the socket's edge-triggered FD in the
event loop's selector) minus its Future per call: sends never wait (NOBLOCK, drop at the
high-water mark) and the FD's reader callback hands every queued message to the node
directly, a bounded batch per turn of the loop so a flood cannot starve other tasks.
With a hundred nodes in one loop, a task wake-up per message was a large share of a
round's cost.

Memory before authentication: libzmq buffers a frame as big as the peer declares, also
during the handshake, before any key is checked. Every socket therefore has a
``ZMQ_MAXMSGSIZE`` (the node sets the receive bound to its largest legitimate message)
and a handshake deadline; a stranger costs at most one bound per connection for at most
that long, and the connections libzmq drops for it are counted (:class:`ConnectionWatch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import zmq

from p2pfl.errors import TransportError
from p2pfl.transport.binding import bind_router as _bind
from p2pfl.transport.monitor import ConnectionWatch, HandshakeWatch
from p2pfl.transport.options import (
    CURVE_FRAME_OVERHEAD,
    DEALER_MAX_FRAME_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    OVERSIZED,
    Incoming,
    TransportOptions,
)

if TYPE_CHECKING:  # [security hook] type only: keeps importing the transport light
    from p2pfl.security import LinkSecurity

log = logging.getLogger(__name__)

# Plain ints: pyzmq's enum constants build enum members on every ``EVENTS & POLLIN``
# test, a measurable share of the event loop's time per received message.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)

#: Frames at least this big are sent without a copy (pyzmq's own copy threshold).
ZERO_COPY_BYTES = 64 * 1024

#: Per turn of the event loop, messages are handled until this many, or this long,
#: before other callbacks get their turn: a flood cannot starve the node's rounds.
RECEIVE_BATCH = 64
RECEIVE_BATCH_SECONDS = 0.005

_DEFAULT_OPTIONS = TransportOptions()

__all__ = [
    "CURVE_FRAME_OVERHEAD", "DEALER_MAX_FRAME_BYTES", "DEFAULT_MAX_MESSAGE_BYTES", "OVERSIZED", "Incoming",
    "TransportOptions", "ZmqTransport",
]


class ZmqTransport:
    """Sends and receives multipart messages for one node.

    Args:
        context: the ZeroMQ context (plain or ``zmq.asyncio``); a simulation passes one
            shared context (``inproc://`` needs it), a deployment its own.
        bind: endpoint to bind, e.g. ``tcp://0.0.0.0:7000``, ``tcp://127.0.0.1:0`` (any
            free port), ``ipc:///run/p2pfl/a.sock`` or ``inproc://a``.
        options: socket settings.
        security: link security (e.g. :class:`p2pfl.security.CurveSecurity`); ``None``
            sends in plain text and accepts any connection.
        also_bind: a second endpoint for the same socket (a cluster shard's node: inproc
            for its shard, tcp for the others); its real address is :attr:`also_endpoint`.
    """

    def __init__(
        self,
        context: zmq.Context,
        bind: str,
        options: TransportOptions = _DEFAULT_OPTIONS,
        security: LinkSecurity | None = None,
        also_bind: str | None = None,
    ) -> None:
        # one underlying context either way; we only use the plain socket API on it. The
        # shadow does not own the context: keep the caller's alive, or a context made
        # inline (``ZmqTransport(zmq.Context(), ...)``) is collected and terminated.
        self._owner = context
        self._context: zmq.Context = zmq.Context.shadow(context.underlying)
        self._bind = bind
        self._options = options
        self._router: zmq.Socket | None = None
        self._dealers: dict[str, zmq.Socket] = {}
        self._sender: zmq.Socket | None = None  # sends to every inproc peer, one pipe each
        self._routes: dict[str, tuple[bytes, str]] = {}  # inproc peer -> (routing id, endpoint)
        self._links_opened = 0  # numbers the routing ids: a reopened link never reuses one
        self._handshakes: dict[str, HandshakeWatch] = {}  # tcp/ipc links
        self._handler: Callable[[Incoming], None] | None = None
        self.security = security  # [security hook] the node maps user ids through it
        self._authenticated = security is not None  # read the ZAP User-Id of each message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._max_message_bytes = options.max_frame_bytes
        self._watch: ConnectionWatch | None = None
        self._on_rejection: Callable[[str, str], None] | None = None
        #: incoming connections dropped before their handshake, by reason
        self.rejected_connections: Counter[str] = Counter()
        self.endpoint: str | None = None
        self._also_bind = also_bind
        self.also_endpoint: str | None = None

    def limit_message_size(self, nbytes: int) -> None:
        """Drop any incoming connection that sends a frame over ``nbytes``.

        A node calls it with its largest legitimate message (schema plus header); the
        bound then also holds during handshakes, for strangers. Call before :meth:`start`:
        libzmq gives a bound socket's connections the options it had when it was bound.

        Raises:
            TransportError: ``nbytes`` is not positive, or the transport already started.
        """
        if nbytes <= 0:
            raise TransportError(f"message size bound must be > 0 bytes, got {nbytes}")
        if self._router is not None:
            raise TransportError("limit_message_size() must be called before start()")
        self._max_message_bytes = nbytes

    @property
    def max_message_bytes(self) -> int:
        """The receive socket's frame bound (``ZMQ_MAXMSGSIZE``; -1 = unlimited)."""
        return self._max_message_bytes

    def start(self) -> str:
        """Bind the receive socket and return the real endpoint (port resolved).

        Must be called from the event loop that will call :meth:`recv`.
        """
        if self.security is not None and self._bind.startswith("inproc://"):
            # libzmq runs no security handshake on inproc: every message would arrive
            # unauthenticated and be rejected
            raise TransportError(f"link security needs tcp:// or ipc://, not {self._bind}")
        router = self._context.socket(zmq.ROUTER)
        self._apply_common(router)
        router.setsockopt(zmq.RCVHWM, self._options.recv_hwm)
        wire_bound = self._max_message_bytes
        if wire_bound > 0 and self.security is not None:
            wire_bound += CURVE_FRAME_OVERHEAD  # [security hook] the bound is on the plaintext
        router.setsockopt(zmq.MAXMSGSIZE, wire_bound)
        if self.security is not None:  # [security hook] must precede bind
            try:
                self.security.configure_server(router)
            except BaseException:
                router.close(linger=0)
                raise
        self.endpoint = _bind(router, self._bind)
        if self._also_bind is not None:
            self.also_endpoint = _bind(router, self._also_bind)
        self._router = router
        self._loop = asyncio.get_running_loop()
        wired = [e for e in (self._bind, self._also_bind) if e is not None and not e.startswith("inproc://")]
        if wired:  # inproc has no wire: nothing to bound
            self._watch = ConnectionWatch(
                router, self._loop, self._connection_dropped, self._options.handshake_ivl_ms / 1000
            )
        return self.endpoint

    def listen(
        self, handler: Callable[[Incoming], None], on_rejection: Callable[[str, str], None] | None = None
    ) -> None:
        """Call ``handler`` on the event loop for every message received from now on.

        ``handler`` must not raise (the node catches everything a peer can cause).
        ``on_rejection(reason, detail)`` is told of every incoming connection dropped
        before its handshake completed for a reason the node counts (``"oversized"``);
        without it the transport logs them itself, sparsely.
        """
        if self._router is None or self._loop is None:
            raise TransportError("transport not started: call start() first")
        self._handler = handler
        self._on_rejection = on_rejection
        self._loop.add_reader(self._fd(), self._drain)
        self._loop.call_soon(self._drain)  # messages that were queued before we listened

    def _fd(self) -> int:
        assert self._router is not None
        return int(self._router.getsockopt(zmq.FD))

    def _drain(self) -> None:
        router, handler = self._router, self._handler
        if router is None or handler is None:
            return
        deadline = time.monotonic() + RECEIVE_BATCH_SECONDS
        for _ in range(RECEIVE_BATCH):
            # Reading EVENTS also re-arms the edge-triggered FD once the queue is empty.
            if not int(router.get(_EVENTS)) & _POLLIN:
                return
            # all frames of a message are queued once its first is readable; the frame
            # knows whether more follow (recv_multipart would ask the socket each time)
            parts = [router.recv(_NOBLOCK, copy=False)]
            while parts[-1].more:
                parts.append(router.recv(_NOBLOCK, copy=False))
            handler(self._incoming(parts))
            if time.monotonic() > deadline:
                break
        assert self._loop is not None
        self._loop.call_soon(self._drain)  # more are queued: continue after the others

    def connect(self, peer: str, endpoint: str) -> None:
        """Open (once) the outgoing link to ``peer``; ZeroMQ retries with backoff."""
        if peer in self._dealers or peer in self._routes:
            return
        if endpoint.startswith("inproc://") and self.security is None:
            self._route(peer, endpoint)
            return
        dealer = self._context.socket(zmq.DEALER)
        self._apply_common(dealer)
        dealer.setsockopt(zmq.SNDHWM, self._options.send_hwm)
        dealer.setsockopt(zmq.MAXMSGSIZE, DEALER_MAX_FRAME_BYTES)
        if self.security is not None:  # [security hook] must precede connect
            try:
                self.security.configure_client(dealer, peer)
            except BaseException:
                dealer.close(linger=0)
                raise
        if self._loop is not None and not endpoint.startswith("inproc://"):  # inproc has no handshake
            # a plain link is watched too: a Curve peer refuses it, and only the handshake says why
            self._handshakes[peer] = HandshakeWatch(dealer, peer, endpoint, self._loop, curve=self.security is not None)
        try:
            dealer.connect(endpoint)
        except zmq.ZMQError as exc:
            self._close_dealer(peer, dealer, linger=0)
            raise TransportError(f"cannot connect to {peer} at {endpoint}: {exc}") from exc
        self._dealers[peer] = dealer

    def _route(self, peer: str, endpoint: str) -> None:
        """Open a pipe to the inproc ``peer`` on the shared sending ROUTER."""
        if self._sender is None:
            sender = self._context.socket(zmq.ROUTER)
            self._apply_common(sender)
            sender.setsockopt(zmq.SNDHWM, self._options.send_hwm)
            # a full pipe raises Again (dropped, as a DEALER's would), an unknown or
            # closed peer EHOSTUNREACH, instead of both being dropped in silence
            sender.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._sender = sender
        # fresh per link: libzmq aborts on a routing id still held by a closing pipe
        self._links_opened += 1
        routing_id = b"p%d" % self._links_opened
        self._sender.setsockopt(zmq.CONNECT_ROUTING_ID, routing_id)
        try:
            self._sender.connect(endpoint)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot connect to {peer} at {endpoint}: {exc}") from exc
        self._routes[peer] = (routing_id, endpoint)

    def disconnect(self, peer: str) -> None:
        dealer = self._dealers.pop(peer, None)
        if dealer is not None:
            self._close_dealer(peer, dealer, linger=0)
        route = self._routes.pop(peer, None)
        if route is not None and self._sender is not None:
            # ENOENT: the peer closed its end first, which already removed the pipe
            with contextlib.suppress(zmq.ZMQError):
                self._sender.disconnect(route[1])

    def _close_dealer(self, peer: str, dealer: zmq.Socket, *, linger: int) -> None:
        watch = self._handshakes.pop(peer, None)
        if watch is not None:
            watch.close(dealer)
        dealer.close(linger=linger)

    @property
    def peers(self) -> tuple[str, ...]:
        return (*self._dealers, *self._routes)

    def send(self, peer: str, frames: Sequence[bytes | memoryview]) -> bool:
        """Queue a message for ``peer`` without blocking.

        Returns:
            False if the peer's queue is full (it is dead or far behind) and the message
            was dropped.

        Raises:
            TransportError: no link to ``peer`` was opened.
        """
        dealer = self._dealers.get(peer)
        if dealer is None:
            route = self._routes.get(peer)
            if route is None or self._sender is None:
                raise TransportError(f"no link to peer {peer!r}: connect() it first")
            dealer = self._sender
            try:  # the routing id goes first: Again or EHOSTUNREACH here, and nothing is queued
                dealer.send(route[0], _NOBLOCK | _SNDMORE)
            except zmq.ZMQError as exc:
                if exc.errno in (zmq.EAGAIN, zmq.EHOSTUNREACH):
                    return False
                raise
        last = len(frames) - 1
        try:
            for i, frame in enumerate(frames):
                # Big frames go zero-copy from the tensor's memory; small ones are copied,
                # as pyzmq would do anyway below its copy threshold, minus the cost of a
                # zmq.Frame per part. NOBLOCK on the first part either queues the whole
                # message or raises Again at the high-water mark (parts are atomic).
                dealer.send(
                    frame, _NOBLOCK | (_SNDMORE if i < last else 0), copy=len(frame) < ZERO_COPY_BYTES
                )
        except zmq.Again:
            return False
        return True

    def _incoming(self, parts: list[zmq.Frame]) -> Incoming:
        connection = parts[0].bytes
        user_id = None  # plain links carry no authenticated identity
        if self._authenticated:
            try:
                value = parts[-1].get("User-Id")
            except zmq.ZMQError:  # [security hook] no ZAP verdict on this link: no identity
                value = None
            user_id = value if isinstance(value, str) else None
        frames = [p.buffer for p in parts[1:]]
        return Incoming(
            frames=frames, connection=connection, user_id=user_id or None,
            nbytes=sum(map(len, frames)),
        )

    def close(self) -> None:
        for peer, dealer in self._dealers.items():
            self._close_dealer(peer, dealer, linger=self._options.linger_ms)
        self._dealers.clear()
        if self._sender is not None:
            self._sender.close(linger=self._options.linger_ms)
            self._sender = None
        self._routes.clear()
        if self._router is not None:
            if self._handler is not None and self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd())
            self._handler = None
            if self._watch is not None:
                self._watch.close(self._router)
                self._watch = None
            self._router.close(linger=0)
            self._router = None

    def _connection_dropped(self) -> None:
        self.rejected_connections[OVERSIZED] += 1
        detail = (
            f"libzmq closed a connection before its handshake completed: it declared a frame over "
            f"{self._max_message_bytes} bytes (ZMQ_MAXMSGSIZE) or broke the ZMTP framing"
        )
        if self._on_rejection is not None:
            self._on_rejection(OVERSIZED, detail)
            return
        count = self.rejected_connections[OVERSIZED]
        if count <= 5 or count % 1000 == 0:  # a stranger must not flood the log
            log.warning("%s: %s (#%d)", self.endpoint, detail, count)

    def _apply_common(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.LINGER, self._options.linger_ms)
        sock.setsockopt(zmq.RECONNECT_IVL, self._options.reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, self._options.reconnect_ivl_max_ms)
        sock.setsockopt(zmq.HEARTBEAT_IVL, self._options.heartbeat_ivl_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self._options.heartbeat_ivl_ms * 3)
        sock.setsockopt(zmq.HANDSHAKE_IVL, self._options.handshake_ivl_ms)
