"""Binding a receive socket to an endpoint, with one-line errors."""

from __future__ import annotations

import os

import zmq

from p2pfl.errors import TransportError


def bind_router(router: zmq.Socket, endpoint: str) -> str:
    """Bind ``router`` to ``endpoint`` (closing it on failure); returns the real address."""
    try:
        router.bind(_wildcard_port(endpoint))
    except zmq.ZMQError as exc:
        router.close(linger=0)
        if exc.errno == zmq.EADDRINUSE:
            raise TransportError(
                f"cannot listen on {endpoint}: the port is in use (is this member's node already running?)"
            ) from None
        # strerror alone: pyzmq's message repeats the address
        raise TransportError(f"cannot listen on {endpoint}: {exc.strerror}") from exc
    return router.getsockopt_string(zmq.LAST_ENDPOINT)


def _wildcard_port(endpoint: str) -> str:
    """Accept ``tcp://host:0`` for "any free port" (ZeroMQ spells it ``*``)."""
    if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
        return endpoint[:-2] + ":*"
    if endpoint.startswith("ipc://"):
        directory = os.path.dirname(endpoint[len("ipc://"):])
        if directory:
            os.makedirs(directory, exist_ok=True)
    return endpoint
