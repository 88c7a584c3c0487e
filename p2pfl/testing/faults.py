"""Network fault injection for multi-process tests: a TCP proxy whose links can be cut,
healed and slowed down.

Each :class:`ProxyLink` listens on its own loopback port and forwards every connection
it accepts to one target endpoint (a node's bind address). Point a node's peer
endpoint at the link instead of at the peer, and the link decides what the connection
sees:

- **forward** (the default): bytes go through both ways, each chunk held back by the
  link's ``delay`` if one is set;
- **cut** ``mode="reset"``: live connections are dropped at once and every new one is
  accepted and closed straight away (the client sees its connection refused or reset
  and retries; ZeroMQ does so every ``reconnect_ivl``);
- **cut** ``mode="blackhole"``: live connections are dropped and new ones are accepted
  but never forwarded (what the client sends is discarded, nothing comes back), as
  behind a firewall that drops packets;
- **heal**: back to forwarding; blackholed connections are closed so that their clients
  reconnect through the healed link at once.

:class:`ProxyLink` is plain asyncio and lives on the caller's event loop.
:class:`FaultProxy` runs any number of links on an event loop of its own in a
background thread and offers a synchronous, thread-safe API for tests that drive OS
processes::

    with FaultProxy() as proxy:
        endpoint = proxy.link("tcp://127.0.0.1:7001", name="a->b")  # give it to node a
        ...
        proxy.cut("a->b")
        ...
        proxy.heal("a->b")

Importing this module starts nothing: no thread, socket or event loop exists until a
link or a proxy is started.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from p2pfl.testing.proxy_link import (
    CHUNK_BYTES,
    MAX_QUEUED_CHUNKS,
    CutMode,
    LinkStats,
    ProxyLink,
    parse_endpoint,
)

T = TypeVar("T")

#: How long the synchronous :class:`FaultProxy` methods wait for its event loop.
CALL_TIMEOUT = 10.0


class FaultProxy:
    """Proxy links on an event loop of their own, driven synchronously from any thread.

    Every method waits (at most :data:`CALL_TIMEOUT` s) until the loop has done what was
    asked, so after :meth:`cut` returns, the link's live connections are already gone.
    Use as a context manager, or call :meth:`start` and :meth:`stop` (in a ``finally``).
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._links: dict[str, ProxyLink] = {}

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> FaultProxy:
        """Start the background thread and its event loop (idempotent)."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="p2pfl-netfault", daemon=True)
        self._thread.start()
        if not ready.wait(CALL_TIMEOUT):
            raise RuntimeError("the fault proxy's event loop did not start")
        return self

    def stop(self) -> None:
        """Close every link and end the thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if not loop.is_closed():
                self._call(self._close_all())
        finally:
            if not loop.is_closed():
                loop.call_soon_threadsafe(loop.stop)
            thread.join(CALL_TIMEOUT)
            self._loop = self._thread = None
            self._links.clear()

    def link(
        self, target: str | tuple[str, int], *, name: str | None = None, delay: float = 0.0
    ) -> str:
        """Open a link to ``target``; returns the endpoint to connect to instead.

        Args:
            target: where its connections go (``tcp://host:port``).
            name: how :meth:`cut`, :meth:`heal` and :meth:`stats` refer to it (the target
                by default); must be unique in this proxy.
            delay: seconds each chunk is held back, each way.
        """
        link = ProxyLink(target, name=name, delay=delay)
        if link.name in self._links:
            raise ValueError(f"a link named {link.name!r} already exists")
        self._call(link.start())
        self._links[link.name] = link
        return link.endpoint

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._links)

    def cut(self, *names: str, mode: CutMode = "reset") -> None:
        """Cut the named links (all of them if none are named); see :meth:`ProxyLink.cut`."""
        links = self._select(names)
        self._call(self._each(links, lambda link: link.cut(mode)))

    def heal(self, *names: str) -> None:
        """Heal the named links (all of them if none are named)."""
        links = self._select(names)
        self._call(self._each(links, ProxyLink.heal))

    def set_delay(self, seconds: float, *names: str) -> None:
        """Set the delay of the named links (all of them if none are named)."""
        links = self._select(names)
        self._call(self._each(links, lambda link: link.set_delay(seconds)))

    def stats(self, name: str) -> LinkStats:
        """The counters of one link."""
        return self._select((name,))[0].stats

    # -- internals -----------------------------------------------------------------------

    def _select(self, names: Iterable[str]) -> list[ProxyLink]:
        names = tuple(names)
        unknown = [n for n in names if n not in self._links]
        if unknown:
            raise KeyError(f"no link named {', '.join(unknown)}; links: {', '.join(self._links)}")
        return [self._links[n] for n in names] if names else list(self._links.values())

    @staticmethod
    async def _each(links: list[ProxyLink], action: Callable[[ProxyLink], None]) -> None:
        for link in links:
            action(link)

    async def _close_all(self) -> None:
        await asyncio.gather(*(link.close() for link in self._links.values()))

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the fault proxy is not started: use 'with FaultProxy() as proxy:'")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(CALL_TIMEOUT)
        except BaseException:
            future.cancel()
            raise


__all__ = [
    "CALL_TIMEOUT",
    "CHUNK_BYTES",
    "MAX_QUEUED_CHUNKS",
    "CutMode",
    "FaultProxy",
    "LinkStats",
    "ProxyLink",
    "parse_endpoint",
]
