"""One TCP link of the fault proxy (:mod:`p2pfl.testing.faults`), on the caller's event loop.

A :class:`ProxyLink` listens on its own loopback port and forwards every connection to one
target endpoint; :meth:`ProxyLink.cut`, :meth:`ProxyLink.heal` and
:meth:`ProxyLink.set_delay` change what its connections see.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Literal

log = logging.getLogger(__name__)

#: How a cut link treats new connections (live ones are always dropped).
CutMode = Literal["reset", "blackhole"]

#: Bytes read from a socket at a time.
CHUNK_BYTES = 256 * 1024
#: Chunks held back per direction of a delayed connection before reading pauses.
MAX_QUEUED_CHUNKS = 64


@dataclass(frozen=True)
class LinkStats:
    """What a link has done so far.

    Attributes:
        accepted: connections accepted on the link's port (in any state).
        forwarded: connections that reached the target and were forwarded.
        reset: connections closed on arrival because the link was cut (``reset`` mode).
        blackholed: connections held without forwarding (``blackhole`` mode).
        dropped: live connections closed by a cut (or a heal, for blackholed ones).
        failed: connections whose target could not be reached.
        bytes_forwarded: payload bytes delivered, both directions together.
    """

    accepted: int = 0
    forwarded: int = 0
    reset: int = 0
    blackholed: int = 0
    dropped: int = 0
    failed: int = 0
    bytes_forwarded: int = 0


def parse_endpoint(endpoint: str | tuple[str, int]) -> tuple[str, int]:
    """``tcp://host:port``, ``host:port`` or ``(host, port)`` as ``(host, port)``.

    Raises:
        ValueError: not a TCP endpoint with a numeric port.
    """
    if isinstance(endpoint, tuple):
        host, port = endpoint
        return str(host), int(port)
    text = endpoint.removeprefix("tcp://")
    if "://" in text:
        raise ValueError(f"{endpoint!r} is not a tcp:// endpoint")
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{endpoint!r} is not an endpoint like tcp://127.0.0.1:7001")
    return host.strip("[]"), int(port_text)


class _Connection:
    """One accepted connection: the client's writer and, once forwarding, the target's."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None

    def abort(self) -> None:
        """Close both sides at once, without flushing what is still queued."""
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class ProxyLink:
    """One listening port whose connections are forwarded to one target endpoint.

    Use on a running event loop: ``await link.start()``, then point a client at
    :attr:`endpoint`; ``await link.close()`` stops listening and drops every connection.
    :meth:`cut`, :meth:`heal` and :meth:`set_delay` are plain methods that must be called
    on the link's event loop (:class:`FaultProxy` does that for other threads).

    Args:
        target: where connections go: ``tcp://host:port``, ``host:port`` or a tuple.
        name: a label for logs and :class:`FaultProxy` (the target by default).
        listen_host: the interface to listen on (loopback by default).
        listen_port: the port to listen on; 0 picks a free one.
        delay: seconds each chunk of data is held back, each way.
    """

    def __init__(
        self,
        target: str | tuple[str, int],
        *,
        name: str | None = None,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        delay: float = 0.0,
    ) -> None:
        self.target = parse_endpoint(target)
        self.name = name or f"{self.target[0]}:{self.target[1]}"
        self._listen = (listen_host, listen_port)
        self._mode: CutMode | None = None  # None: forwarding
        self._delay = 0.0
        self.set_delay(delay)
        self._server: asyncio.Server | None = None
        self._forwarding: set[_Connection] = set()
        self._blackholed: set[_Connection] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._stats = LinkStats()
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> int:
        """Start listening; returns the port (also in :attr:`port`)."""
        if self._server is not None:
            return self.port
        self._server = await asyncio.start_server(self._on_client, *self._listen)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("link %s: %s:%d -> %s:%d", self.name, self._listen[0], self.port, *self.target)
        return self.port

    async def close(self) -> None:
        """Stop listening and drop every connection (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for connection in (*self._forwarding, *self._blackholed):
            connection.abort()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    @property
    def endpoint(self) -> str:
        """``tcp://host:port`` for clients to connect to instead of the target."""
        if self._server is None:
            raise RuntimeError(f"link {self.name} is not started")
        return f"tcp://{self._listen[0]}:{self.port}"

    # -- faults --------------------------------------------------------------------------

    @property
    def is_cut(self) -> bool:
        return self._mode is not None

    @property
    def stats(self) -> LinkStats:
        """A snapshot of the link's counters."""
        return self._stats

    def cut(self, mode: CutMode = "reset") -> None:
        """Drop every live connection; new ones are reset or blackholed until :meth:`heal`.

        Args:
            mode: ``reset`` closes new connections on arrival, ``blackhole`` holds them
                open and discards what they send.
        """
        if mode not in ("reset", "blackhole"):
            raise ValueError(f"cut mode must be 'reset' or 'blackhole', not {mode!r}")
        self._mode = mode
        dropped = list(self._forwarding)
        for connection in dropped:
            connection.abort()
        self._count(dropped=len(dropped))
        log.info("link %s cut (%s): dropped %d live connection(s)", self.name, mode, len(dropped))

    def heal(self) -> None:
        """Forward again; blackholed connections are closed so their clients reconnect."""
        self._mode = None
        held = list(self._blackholed)
        for connection in held:
            connection.abort()
        self._count(dropped=len(held))
        log.info("link %s healed", self.name)

    def set_delay(self, seconds: float) -> None:
        """Hold back every chunk by ``seconds`` each way (0: none). Order is kept."""
        if not seconds >= 0:
            raise ValueError(f"delay must be >= 0 seconds, got {seconds}")
        self._delay = float(seconds)

    # -- connections ---------------------------------------------------------------------

    def _count(self, **increments: int) -> None:
        self._stats = replace(self._stats, **{k: getattr(self._stats, k) + v for k, v in increments.items()})

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        connection = _Connection(writer)
        self._count(accepted=1)
        try:
            if self._mode == "reset":
                self._count(reset=1)
            elif self._mode == "blackhole":
                await self._blackhole(connection, reader)
            else:
                await self._forward(connection, reader)
        except (OSError, asyncio.IncompleteReadError):
            pass  # a peer went away: the connection is over either way
        except asyncio.CancelledError:
            pass  # the link is closing
        except Exception:  # never let one connection take the link down
            log.exception("link %s: error on a connection", self.name)
        finally:
            connection.abort()
            self._handlers.discard(task)

    async def _blackhole(self, connection: _Connection, reader: asyncio.StreamReader) -> None:
        self._count(blackholed=1)
        self._blackholed.add(connection)
        try:
            while await reader.read(CHUNK_BYTES):
                pass  # discarded
        finally:
            self._blackholed.discard(connection)

    async def _forward(self, connection: _Connection, reader: asyncio.StreamReader) -> None:
        try:
            up_reader, connection.upstream = await asyncio.open_connection(*self.target)
        except OSError as exc:
            self._count(failed=1)
            log.debug("link %s: target unreachable: %s", self.name, exc)
            return
        if self._mode is not None:  # cut while we were connecting
            self._count(dropped=1)
            return
        self._count(forwarded=1)
        self._forwarding.add(connection)
        pipes = [
            asyncio.ensure_future(self._pipe(reader, connection.upstream)),
            asyncio.ensure_future(self._pipe(up_reader, connection.client)),
        ]
        try:
            # either direction ending ends the connection (ZeroMQ never half-closes)
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._forwarding.discard(connection)
            connection.abort()
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction until end of stream; each chunk waits out the delay."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(MAX_QUEUED_CHUNKS)

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
                self._count(bytes_forwarded=len(data))

        async def read() -> None:
            due = 0.0
            while data := await reader.read(CHUNK_BYTES):
                due = max(due, loop.time() + self._delay)  # a shorter new delay keeps order
                await queue.put((due, data))
            await queue.put(None)

        async with asyncio.TaskGroup() as group:
            group.create_task(read())
            group.create_task(deliver())


__all__ = ["CHUNK_BYTES", "MAX_QUEUED_CHUNKS", "CutMode", "LinkStats", "ProxyLink", "parse_endpoint"]
