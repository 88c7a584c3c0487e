"""Per-round buffer of neighbours' models: future rounds wait, stale ones are dropped."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from p2pfl.errors import WireError
from p2pfl.node.arrivals import Arrivals
from p2pfl.wire import Message


class RoundInbox:
    """Holds accepted model messages by round until the node collects them.

    Args:
        max_rounds_ahead: how far ahead of the node's current round a message may be;
            bounds memory against peers that run ahead (or lie about the round).
    """

    def __init__(self, max_rounds_ahead: int) -> None:
        self.max_rounds_ahead = max_rounds_ahead
        self.current_round = 0
        self._by_round: dict[int, dict[str, Message]] = {}
        self._arrived = Arrivals()
        self._taker: tuple[int, Callable[[Message], None]] | None = None  # see take()

    def offer(self, message: Message) -> None:
        """Store a message for its round.

        Raises:
            WireError: ``stale_round`` (round already closed), ``future_round`` (too far
                ahead) or ``duplicate`` (this sender already sent for this round).
        """
        if message.round < self.current_round:
            raise WireError("stale_round", f"round {message.round} < current {self.current_round}")
        if message.round > self.current_round + self.max_rounds_ahead:
            raise WireError(
                "future_round",
                f"round {message.round} > current {self.current_round} + {self.max_rounds_ahead}",
            )
        slot = self._by_round.setdefault(message.round, {})
        if message.sender in slot:
            raise WireError("duplicate", f"second message from {message.sender} for round {message.round}")
        slot[message.sender] = message
        if self._taker is not None and self._taker[0] == message.round:
            self._hand_over(slot, message, self._taker[1])
        if message.round == self.current_round:
            self._arrived.notify()

    def advance(self, round: int) -> None:
        """Make ``round`` current and forget every earlier round."""
        self.current_round = round
        for old in [r for r in self._by_round if r < round]:
            del self._by_round[old]
        if self._by_round.get(round):
            self._arrived.notify()

    def take(self, round: int, taker: Callable[[Message], None]) -> None:
        """Hand ``taker`` every message of ``round``: those held now, then each as it is
        accepted, until that round is collected. The inbox keeps only who sent (a second
        message is still a duplicate): the taker owns the models."""
        self._taker = (round, taker)
        slot = self._by_round.get(round, {})
        for message in list(slot.values()):
            self._hand_over(slot, message, taker)

    @staticmethod
    def _hand_over(slot: dict[str, Message], message: Message, taker: Callable[[Message], None]) -> None:
        taker(message)
        slot[message.sender] = dataclasses.replace(message, tensors={})

    async def collect(
        self,
        round: int,
        expected: Iterable[str],
        timeout: float,
        skip: Callable[[str], bool] | None = None,
    ) -> dict[str, Message]:
        """Wait until every expected sender's message for ``round`` is here, or ``timeout``.

        Args:
            round: the round to collect.
            expected: senders to wait for.
            timeout: seconds to wait at most.
            skip: senders for which it returns True (known to be offline) are not waited
                for; it is asked again after every :meth:`poke`.

        Returns:
            The messages that arrived in time, by sender (may be fewer than expected).
        """
        self.advance(round)
        wanted = set(expected)
        slot = self._by_round.setdefault(round, {})
        try:
            await self._arrived.until(
                lambda: {p for p in wanted if skip is None or not skip(p)} <= slot.keys(), timeout
            )
        finally:
            if self._taker is not None and self._taker[0] == round:
                self._taker = None
        taken = {sender: slot[sender] for sender in sorted(wanted & slot.keys())}
        for sender, message in taken.items():
            # the caller owns the models now: the slot keeps only who sent (a second
            # message is still a duplicate), so they are freed once mixed
            slot[sender] = dataclasses.replace(message, tensors={})
        return taken

    def poke(self) -> None:
        """Make a waiting :meth:`collect` re-check (e.g. a peer was reported offline)."""
        self._arrived.notify()

    def pending(self) -> int:
        """Messages held (for memory accounting)."""
        return sum(len(slot) for slot in self._by_round.values())
