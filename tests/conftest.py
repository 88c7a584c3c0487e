"""Fixtures shared by every test; the helpers themselves live in :mod:`p2pfl.testing`.

Tests marked ``slow`` (multi-process runs, whole simulations, long fuzzing) are skipped
by ``make test-fast`` (``pytest -m "not slow"``); ``make test`` runs everything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import zmq
import zmq.asyncio


@pytest.fixture
async def context() -> AsyncIterator[zmq.asyncio.Context]:
    """A ZeroMQ context of the test's own, terminated when it ends (after its nodes close)."""
    ctx = zmq.asyncio.Context()
    yield ctx
    ctx.term()


@pytest.fixture
async def intruder(context: zmq.asyncio.Context) -> AsyncIterator[Callable[[str], zmq.asyncio.Socket]]:
    """Connects raw pyzmq DEALERs (a client that knows nothing of p2pfl's code) to an endpoint."""
    sockets: list[zmq.asyncio.Socket] = []

    def connect(endpoint: str) -> zmq.asyncio.Socket:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sockets.append(sock)
        return sock

    yield connect
    for sock in sockets:
        sock.close(linger=0)
