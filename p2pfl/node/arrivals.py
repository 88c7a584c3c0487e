"""Waiting for expected senders: until all of them arrived, or the deadline passed.

The round inbox, catch-up, secure aggregation's reveals and the start's greetings all
wait in this shape; each keeps what arrived, and :class:`Arrivals` wakes the waiter to
check again whenever something did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Arrivals:
    """A wake-up for one waiter at a time, with a deadline on every wait."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._count = 0  # notifications so far: lets :meth:`next` tell new ones from old

    def notify(self) -> None:
        """Something arrived (or whom to wait for changed): the waiter checks again."""
        self._count += 1
        self._event.set()

    async def until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()`` holds, asked again after every :meth:`notify`.

        Returns:
            Whether it held; False when ``timeout`` seconds passed first (a deadline
            is an ordinary outcome here: the caller goes on with whoever arrived).
        """
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    self._event.clear()
                    await self._event.wait()
        except TimeoutError:
            return False
        return True

    async def next(self, timeout: float) -> bool:
        """Wait for the next :meth:`notify` after this call; False after ``timeout``."""
        seen = self._count
        return await self.until(lambda: self._count != seen, timeout)
