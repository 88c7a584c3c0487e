"""The running mean a sync node sums as models arrive: the bits of ``mix`` when all arrive."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from p2pfl.aggregation.base import mix
from p2pfl.node.folding import RunningMix
from p2pfl.node.inbox import RoundInbox
from p2pfl.wire import Kind, Message

WEIGHTS = {"a": 0.4, "b": 0.25, "c": 0.2, "d": 0.15}


def model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((30, 7)).astype(np.float32), "b": rng.standard_normal(7).astype(np.float32)}


def message(sender: str, tensors: dict[str, np.ndarray], round_: int = 0) -> Message:
    return Message(kind=Kind.MODEL, sender=sender, round=round_, samples=1, tensors=tensors)


@pytest.mark.parametrize("order", [["b", "c", "d"], ["d", "c", "b"], ["c", "d", "b"]])
def test_every_arrival_order_gives_the_bits_of_mix(order: list[str]) -> None:
    own, received = model(0), {p: model(i + 1) for i, p in enumerate("bcd")}
    running = RunningMix("a", own, WEIGHTS)
    for peer in order:
        running.add(message(peer, received[peer]))
    result, expected = running.result(), mix("a", own, received, WEIGHTS)
    for name in own:
        assert result[name].dtype == own[name].dtype
        np.testing.assert_array_equal(result[name], expected[name])
    np.testing.assert_array_equal(own["w"], model(0)["w"])  # own untouched: it may be in flight


@pytest.mark.parametrize("present", [["b", "d"], ["c"], []])
def test_missing_neighbours_give_the_mean_over_the_present(present: list[str]) -> None:
    own, received = model(0), {p: model(i + 1) for i, p in enumerate("bcd") if p in present}
    running = RunningMix("a", own, WEIGHTS)
    for peer in reversed(present):
        running.add(message(peer, received[peer]))
    result, expected = running.result(), mix("a", own, received, WEIGHTS)
    for name in own:
        np.testing.assert_allclose(result[name], expected[name], rtol=1e-6, atol=1e-7)


def test_inbox_hands_over_held_and_arriving_models_and_keeps_only_who_sent() -> None:
    async def scenario() -> None:
        inbox = RoundInbox(max_rounds_ahead=2)
        taken: list[str] = []
        inbox.offer(message("b", model(1)))
        inbox.offer(message("c", model(2), round_=1))  # another round: not handed over
        inbox.take(0, lambda m: taken.append(m.sender))
        inbox.offer(message("d", model(3)))
        got = await inbox.collect(0, ["b", "d"], timeout=1.0)
        assert taken == ["b", "d"]
        assert sorted(got) == ["b", "d"] and all(not m.tensors for m in got.values())
        with pytest.raises(Exception, match="second message"):
            inbox.offer(message("b", model(1)))
        inbox.offer(message("c", model(2)))  # after the round's collect: no taker any more
        assert taken == ["b", "d"]

    asyncio.run(scenario())
