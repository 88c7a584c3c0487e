"""ZeroMQ socket monitors, read from the event loop: what the transport learns of its links.

libzmq reports handshakes and connections only through a socket's monitor; these read it
from the event loop's selector as the transport reads its sockets (no thread, no timer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)

_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)

#: Monitor events handled per turn of the event loop: a connection flood must not starve it.
_BATCH = 64


class Monitor:
    """A socket's ZeroMQ monitor, read from the event loop like the sockets themselves."""

    EVENTS = 0

    def __init__(self, sock: zmq.Socket, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._monitor = sock.get_monitor_socket(self.EVENTS)
        self._fd = int(self._monitor.getsockopt(zmq.FD))
        loop.add_reader(self._fd, self._drain)
        loop.call_soon(self._drain)

    def _drain(self) -> None:
        if self._monitor.closed:
            return
        for _ in range(_BATCH):  # a connection flood must not starve the loop either
            if not int(self._monitor.get(_EVENTS)) & _POLLIN:  # also re-arms the edge-triggered FD
                return
            event = recv_monitor_message(self._monitor, _NOBLOCK)
            self.on_event(int(event["event"]), int(event["value"]))
        self._loop.call_soon(self._drain)

    def on_event(self, event: int, value: int) -> None:
        raise NotImplementedError

    def close(self, sock: zmq.Socket) -> None:
        if not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        sock.disable_monitor()
        self._monitor.close(linger=0)


#: libzmq's value of a protocol failure where one end speaks NULL and the other CURVE.
_MECHANISM_MISMATCH = int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)

_VERDICTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class HandshakeWatch(Monitor):
    """Logs a failed handshake on an outgoing link, once until one succeeds.

    ZeroMQ retries such a link silently forever, so a peer listed with the wrong public
    key (or not allow-listing ours), or one that runs plain text where we run CurveZMQ
    (or the other way round), would otherwise look merely absent. libzmq tells a
    mechanism mismatch (NULL against CURVE) apart: a protocol failure whose value is
    ``ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH``, on both ends.

    Args:
        curve: whether this node's links use CurveZMQ (a plain-text node's links are
            watched for the mismatch only).
    """

    EVENTS = _VERDICTS

    def __init__(
        self, dealer: zmq.Socket, peer: str, endpoint: str, loop: asyncio.AbstractEventLoop, *, curve: bool = True
    ) -> None:
        self._peer, self._endpoint = peer, endpoint
        self._curve = curve
        self._failing = False
        super().__init__(dealer, loop)

    def on_event(self, event: int, value: int) -> None:
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            if self._failing:
                log.info("handshake with %s at %s succeeds again", self._peer, self._endpoint)
            self._failing = False
            return
        if self._failing:
            return
        mismatch = event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _MECHANISM_MISMATCH
        if mismatch and self._curve:
            log.warning(
                "%s at %s does not use CurveZMQ (is it started with --insecure?): every member must "
                "use Curve, or all --insecure", self._peer, self._endpoint,
            )
        elif mismatch:
            log.warning("%s at %s requires CurveZMQ; this node runs --insecure", self._peer, self._endpoint)
        elif self._curve:
            log.warning(
                "CurveZMQ handshake with %s at %s failed: the public key listed for %s is not the "
                "key its node uses, or it does not list ours; compare the fingerprints "
                "'p2pfl consortium check' prints on both sides", self._peer, self._endpoint, self._peer,
            )
        else:
            return  # a plain link has no keys to get wrong
        self._failing = True


class ConnectionWatch(Monitor):
    """Calls ``dropped()`` for each incoming connection libzmq closed without a handshake verdict.

    What libzmq 4.3 reports (measured): a frame over ``ZMQ_MAXMSGSIZE`` closes the
    connection with ACCEPTED then DISCONNECTED and nothing between (so does a broken
    ZMTP greeting); every other failed handshake (peer gone, deadline, wrong mechanism,
    bad Curve HELLO, refused key) reports a HANDSHAKE_FAILED_* just before its
    DISCONNECTED, a completed one HANDSHAKE_SUCCEEDED. Only ACCEPTED and DISCONNECTED
    carry the connection (its fd), so verdicts are matched to connections: a success to
    the newest connection still handshaking (an honest handshake takes milliseconds, a
    stalling stranger's up to the deadline), a failure to the next drop of a connection
    still handshaking. Only handshakes that overlap can have a verdict matched to the
    wrong connection (then a drop may go uncounted); a link that outlived the handshake
    deadline is never counted.
    """

    EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | _VERDICTS

    def __init__(
        self, router: zmq.Socket, loop: asyncio.AbstractEventLoop, dropped: Callable[[], None], deadline_s: float
    ) -> None:
        self._dropped = dropped
        # past the handshake deadline libzmq has given every connection its verdict, so
        # one still listed here completed its handshake (its success went to another)
        self._deadline_s = deadline_s + 1.0
        self._handshaking: dict[int, float] = {}  # fd -> when accepted, oldest first
        self._failed = 0  # failure verdicts whose connection's drop is still to come
        super().__init__(router, loop)

    def on_event(self, event: int, value: int) -> None:
        if event == zmq.EVENT_ACCEPTED:
            self._handshaking[value] = time.monotonic()
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            if self._handshaking:
                self._handshaking.popitem()
        elif event == zmq.EVENT_DISCONNECTED:
            accepted = self._handshaking.pop(value, None)
            if accepted is None:
                return  # an established connection closed
            if self._failed:
                self._failed -= 1
            elif time.monotonic() - accepted < self._deadline_s:
                self._dropped()
        else:  # a handshake failure: its DISCONNECTED follows
            self._failed += 1
