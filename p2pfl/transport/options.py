"""The transport's value types: socket settings, size bounds and a received message."""

from __future__ import annotations

from dataclasses import dataclass

#: Receive bound of a transport not told its model's (:meth:`ZmqTransport.limit_message_size`):
#: the wire decoder's own default ``WireLimits.max_message_bytes``, which refuses anything
#: bigger anyway, so no message it would accept is lost while the bound stays finite.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024

#: A DEALER only sends: all it ever receives are ZMTP commands (Curve WELCOME/READY with a
#: little metadata, heartbeats), a few hundred bytes; a peer impersonating a server gets
#: no more than this buffered before its key is checked.
DEALER_MAX_FRAME_BYTES = 64 * 1024

#: What CurveZMQ adds to each frame on the wire, where libzmq checks ``ZMQ_MAXMSGSIZE``: the
#: MESSAGE command's name (8 bytes), nonce (8), flags (1) and MAC (16).
CURVE_FRAME_OVERHEAD = 33

#: Why a rejected connection was dropped, as counted (the node's ``stats.rejected`` key).
OVERSIZED = "oversized"


@dataclass(frozen=True)
class TransportOptions:
    """Socket settings, each chosen on purpose.

    Attributes:
        send_hwm: messages queued per peer before further sends to it are dropped; a
            model older than a few rounds is useless to a neighbour anyway.
        recv_hwm: messages queued on the receive socket before senders are pushed back.
        linger_ms: how long close() may keep flushing; short, so stopping is prompt.
        max_frame_bytes: ZeroMQ drops connections that send a bigger frame (tcp/ipc), also
            during the handshake, before any key is checked; a node lowers it to its own
            largest message (:meth:`ZmqTransport.limit_message_size`). -1 = unlimited,
            which lets any stranger make the node buffer whatever size it declares.
        reconnect_ivl_ms: first reconnect delay to an absent peer ...
        reconnect_ivl_max_ms: ... growing exponentially up to this.
        heartbeat_ivl_ms: ZMTP heartbeats detect a silently dead tcp peer.
        handshake_ivl_ms: a connection that has not completed its handshake by then is
            dropped (libzmq's default, 30 s, let a stranger hold memory that long). A
            Curve handshake is two round trips and one ZAP check: milliseconds.
    """

    send_hwm: int = 4
    recv_hwm: int = 1000
    linger_ms: int = 200
    max_frame_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 5000
    heartbeat_ivl_ms: int = 2000
    handshake_ivl_ms: int = 5000


@dataclass(frozen=True)
class Incoming:
    """A received message: payload frames plus what the transport knows of its origin."""

    frames: list[memoryview]
    connection: bytes  # ZeroMQ routing id of the connection it came on
    user_id: str | None  # authenticated identity (CurveZMQ/ZAP), None on plain links
    nbytes: int
