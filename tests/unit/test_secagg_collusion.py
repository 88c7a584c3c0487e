"""A receiver colluding with ``c <= c_max = 2t - n - 1`` of its neighbours learns only the sum
of the other present neighbours' models (docs/explanations/secure-aggregation.md, "Threat
model"; the threshold argument in p2pfl/privacy/secagg.py).

Receiver "a" has n = 4 neighbours b, c, d, e (t = 3, c_max = 1). The colluder hands "a"
everything it holds for (a, round): its own model, its pairwise masks with each other
neighbour, its decrypted shares of the others' self-mask seeds, and an endorsement of any
dropout set "a" likes, for every neighbour (a colluder endorses as many sets as asked).
"a" runs the protocol honestly or deviates (a present neighbour claimed dropped, different
sets to different neighbours), asking every honest neighbour for everything.

With c = 1 its best reconstruction of each honest neighbour's model (that of
test_secagg_attacks.py, over the pooled shares and masks) is no closer to it than another
honest neighbour's model, while the sum of the honest present neighbours' weighted models
comes out exactly. With c = 2 = t - 1 colluders the same reconstruction finds an honest
model: the colluders' shares alone rebuild every self-mask, and one set endorsed by the
two of them and one honest neighbour unmasks that neighbour's pairwise mask with the
other honest one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest

pytest.importorskip("cryptography")

from secagg_net import Net  # noqa: E402
from test_secagg_attacks import Liar, Loot, best_error  # noqa: E402

from p2pfl.privacy import shamir  # noqa: E402
from p2pfl.privacy.secagg import decode_fixed, holder_index, prg, threshold  # noqa: E402
from p2pfl.privacy.secagg_exchange import SecureExchange  # noqa: E402
from p2pfl.privacy.secagg_keys import set_statement  # noqa: E402
from p2pfl.topology.schedule import RoundPlan  # noqa: E402
from p2pfl.wire import Message  # noqa: E402

FIVE = ("a", "b", "c", "d", "e")  # "a" lies; its neighbours b, c, d, e: n = 4, t = 3, c_max = 1


class Colluder(SecureExchange):
    """An honest node in every other respect, which hands a receiver what it holds."""

    model: Mapping[str, np.ndarray]

    def hand_over(self, receiver: str, round_: int, received: Mapping[str, Message]) -> dict:
        """Its model and weight, its pairwise masks with each other neighbour (as they sit
        in its own masked model: the neighbour's model holds minus that), and its shares
        of the others' self-mask seeds, opened from the blobs the receiver carries."""
        me = self._link.name
        plan = self._link.plan(receiver, round_)
        bundle = self.helping.slot(receiver, round_).bundle
        sealed = {s: m.meta["shares"][me] for s, m in received.items() if s != me and me in m.meta["shares"]}
        return {
            "model": self.model,
            "weight": plan.weights[me],
            "masks": {k: self.secure.pairwise_reveal(receiver, round_, [k], bundle).copy()
                      for k in plan.expect_from if k != me},
            "shares": self.secure.open_shares(receiver, round_, bundle, sealed),
        }

    def tags(self, receiver: str, round_: int, dropped_for: Mapping[str, Sequence[str]]) -> dict[str, bytes]:
        """Its endorsement of each neighbour's set, addressed to that neighbour."""
        bundle = self.helping.slot(receiver, round_).bundle
        ephemeral = self.secure.ephemeral
        return {peer: ephemeral.endorse(peer, bundle.keys[peer], set_statement(receiver, round_, bundle.digest, dropped))
                for peer, dropped in dropped_for.items()}


class Pooling(Liar):
    """A receiver that pools its loot with its colluders' before asking for anything."""

    colluders: Sequence[Colluder] = ()
    pooled: dict[int, dict]
    sets_for: dict[str, list[str]] = {}  # honest neighbour -> the dropout set it is sent

    async def attack(self, round_: int, plan: RoundPlan, loot: Loot) -> None:
        if not hasattr(self, "pooled"):
            self.pooled = {}
        given = {c._link.name: c.hand_over(self._link.name, round_, self.received) for c in self.colluders}
        honest = [p for p in plan.expect_from if p not in given]
        sets = {p: self.sets_for.get(p, []) for p in honest}
        endorsements = await self.sets(round_, plan, sets)
        for name, colluder in zip(given, self.colluders, strict=True):
            endorsements[name] = colluder.tags(self._link.name, round_, sets)
        for peer in honest:  # one at a time, each with every tag there is
            await self.ask(round_, [peer], endorsements, loot)
        self.pooled[round_] = {"given": given, "reveals": list(loot.pairwise)}
        for name, knowledge in given.items():  # the reconstruction sees it all
            loot.shares[name] = knowledge["shares"]
            loot.pairwise.extend(mask for k, mask in knowledge["masks"].items() if k in honest)


class Honest(Pooling):
    sets_for: dict[str, list[str]] = {}


class ClaimsPresentDropped(Pooling):
    """d sent its model, yet is declared dropped: b, c and the colluder endorse."""

    sets_for = {"b": ["d"], "c": ["d"], "d": ["d"]}


class DifferentSets(Pooling):
    """b and c see d dropped, d sees c dropped: the colluder endorses both."""

    sets_for = {"b": ["d"], "c": ["d"], "d": ["c"]}


class IsolatesB(Pooling):
    """b sees nobody dropped, c and d see b dropped: their masks with b, for b's model."""

    sets_for = {"b": [], "c": ["b"], "d": ["b"]}


def recovered_sum(net: Net, round_: int, members: Sequence[str]) -> np.ndarray:
    """What the pool makes of ``members``' masked models summed: minus their self-masks
    (from the pooled shares), minus the honest reveals (their masks with the dropped),
    plus the colluders' masks with them (which sit in their models negated)."""
    liar = net.exchanges["a"]
    assert isinstance(liar, Pooling)
    loot, pooled = liar.loot[round_], liar.pooled[round_]
    plan = net.schedule.plan("a", round_)
    need = threshold(len(plan.expect_from)) - 1
    total = sum((loot.masked[m] for m in members), np.zeros_like(loot.masked[members[0]]))
    for member in members:
        points = {holder_index(plan.expect_from, h): got[member] for h, got in loot.shares.items() if member in got}
        seed = shamir.combine(dict(sorted(points.items())[:need]))
        total -= prg(seed, round_, "a", total.size)
    for reveal in pooled["reveals"]:
        total -= reveal
    for knowledge in pooled["given"].values():
        for member in members:
            total += knowledge["masks"][member]
    return decode_fixed(total)


async def run_pool(liar: type[Pooling], colluders: Sequence[str], rounds: int = 1) -> Net:
    classes: dict[str, type] = {"a": liar} | dict.fromkeys(colluders, Colluder)
    net = Net(FIVE, seed=3, round_timeout=2.0, exchange_classes=classes)
    pool = net.exchanges["a"]
    assert isinstance(pool, Pooling)
    pool.colluders = [c for c in (net.exchanges[name] for name in colluders) if isinstance(c, Colluder)]
    for colluder in pool.colluders:
        colluder.model = net.models[colluder._link.name]
    for round_ in range(rounds):
        results = await net.round(round_)
        for name in FIVE[1:]:  # honest receivers (the colluders' too): every round, the exact mean
            neighbours = net.schedule.plan(name, round_).expect_from
            assert results[name].received_from == neighbours
            np.testing.assert_allclose(results[name].aggregate()["w"], net.weighted_mean(name, neighbours), atol=1e-6)
    return net


def closest(net: Net, round_: int, honest: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Per honest neighbour: the pool's best error, and the distance to the nearest other honest model."""
    out = {}
    for target in honest:
        truth = net.models[target]["w"].astype(np.float64)
        other = min(float(np.linalg.norm(net.models[o]["w"] - truth)) for o in honest if o != target)
        out[target] = (best_error(net, round_, target), other)
    return out


@pytest.mark.parametrize(
    ("liar", "present", "refusals"),
    [
        (Honest, ("b", "c", "d"), set()),
        (ClaimsPresentDropped, ("b", "c"), {("d", "set_refused")}),
        (DifferentSets, ("b", "c"), {("d", "reveal_refused")}),  # d's set has 2 endorsements, not t
        (IsolatesB, ("c", "d"), {("b", "reveal_refused")}),
    ],
)
async def test_a_receiver_and_one_colluder_learn_only_the_sum_of_the_others(
    liar: type[Pooling], present: tuple[str, ...], refusals: set[tuple[str, str]]
) -> None:
    net = await run_pool(liar, colluders=("e",), rounds=2)
    assert refusals <= set(net.refused), net.refused
    plan = net.schedule.plan("a", 0)
    for round_ in range(2):
        for target, (error, other) in closest(net, round_, ("b", "c", "d")).items():
            assert error >= other, f"round {round_}: {target}'s model exposed ({error:.3g} < {other:.3g})"
        # the claim's positive part: the honest present neighbours' weighted sum, exactly
        truth = sum(plan.weights[p] * net.models[p]["w"].astype(np.float64) for p in present)
        np.testing.assert_allclose(recovered_sum(net, round_, present), truth, atol=1e-6)


async def test_two_colluders_above_c_max_isolate_an_honest_model() -> None:
    net = await run_pool(IsolatesB, colluders=("d", "e"))  # b is sent D = {}, c D = {b}
    assert not net.refused  # each set has t endorsements: its honest one and the two colluders'
    errors = closest(net, 0, ("b", "c"))
    assert errors["b"][0] < 1e-6, errors  # b's model, to the fixed point's resolution
