"""Secure aggregation's protocol, driven over a fake network: exact sums, dropouts before and
after sending, fewer than t answers, fresh masks per run."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cryptography")

from secagg_net import SIZE, Net  # noqa: E402

from p2pfl.aggregation.base import mix  # noqa: E402
from p2pfl.privacy.secagg import SecureAggregation, decode_fixed, generate_keys  # noqa: E402
from p2pfl.privacy.secagg_state import Bundle  # noqa: E402
from p2pfl.topology.schedule import RoundPlan  # noqa: E402
from p2pfl.wire import Kind  # noqa: E402

FIVE = ("a", "b", "c", "d", "e")  # complete graph: n = 4 neighbours each, t = 3


async def test_every_receiver_gets_the_exact_weighted_mean_round_after_round() -> None:
    net = Net(FIVE, seed=7)
    for round_ in range(3):
        results = await net.round(round_)
        for name, result in results.items():
            neighbours = net.schedule.plan(name, round_).expect_from
            assert result.received_from == neighbours and result.missing == ()
            np.testing.assert_allclose(result.aggregate()["w"], net.weighted_mean(name, neighbours), atol=1e-6)
    assert net.refused == []
    # models travel masked only: every tensor-carrying message is a masked model
    for link in net.links.values():
        assert {kind for _, kind, control in link.sent if not control} == {Kind.MASKED_MODEL}
        assert Kind.REVEAL not in {kind for _, kind, _ in link.sent}  # nobody dropped: shares only


async def test_a_node_that_drops_before_sending_is_unmasked_away() -> None:
    net = Net(FIVE, seed=9, round_timeout=0.3)
    await net.round(0)  # keys are exchanged with everyone up
    net.down.add("e")
    results = await net.round(1)
    for name, result in results.items():
        present = tuple(p for p in net.schedule.plan(name, 1).expect_from if p != "e")
        assert result.missing == ("e",) and result.received_from == present
        np.testing.assert_allclose(result.aggregate()["w"], net.weighted_mean(name, present), atol=1e-6)
    assert net.refused == []


async def test_a_node_that_drops_after_sending_stays_in_the_sum() -> None:
    net = Net(FIVE, seed=10, round_timeout=0.3)
    await net.round(0)
    net.links["e"].die_after_models = True
    results = await net.round(1)
    for name, result in results.items():
        if name == "e":
            continue
        neighbours = net.schedule.plan(name, 1).expect_from
        # e never signs nor answers, but its self-mask comes back from the others' shares
        assert result.received_from == neighbours
        np.testing.assert_allclose(result.aggregate()["w"], net.weighted_mean(name, neighbours), atol=1e-6)


async def test_below_t_answers_the_receiver_keeps_its_own_model() -> None:
    net = Net(FIVE, seed=11, round_timeout=0.3)
    await net.round(0)
    net.down.add("e")  # before sending: dropped
    net.links["d"].die_after_models = True  # after sending: present, but never signs
    results = await net.round(1)
    for name in ("a", "b", "c"):
        result = results[name]
        # 3 present, 2 signatures < t = 3: the round keeps the node's own model
        assert result.received_from == () and set(result.missing) == set(net.schedule.plan(name, 1).expect_from)
        np.testing.assert_allclose(result.aggregate()["w"], net.models[name]["w"], atol=1e-6)


async def test_two_runs_with_the_same_long_term_keys_mask_differently() -> None:
    names = ["r", "n0", "n1", "n2"]
    keys = generate_keys(names)  # kept, as after `init --keep-keys`
    plan = RoundPlan(send_to=(), weights=dict.fromkeys(names, 0.25), node="r")
    model = np.random.default_rng(0).normal(size=SIZE)
    other = model + np.random.default_rng(1).normal(size=SIZE)
    payloads = []
    seeds = []
    for run_model in (model, other):
        run = {n: SecureAggregation(keys[n]) for n in names}  # a new run: new ephemeral keys
        for secure in run.values():
            secure.bind({"w": __import__("p2pfl.wire", fromlist=["TensorSpec"]).TensorSpec("float32", (SIZE,))})
        bundle = Bundle.of("r", {n: run[n].ephemeral.public for n in names[1:]})
        payloads.append(run["n0"].masked_for(plan, 0, run_model, bundle)[0])
        seeds.append(run["n0"].ephemeral.mask_seed("n1", run["n1"].ephemeral.public))
        assert seeds[-1] == run["n1"].ephemeral.mask_seed("n0", run["n0"].ephemeral.public)
    assert seeds[0] != seeds[1]
    # the difference of two runs' masked models says nothing of the difference of the models
    difference = decode_fixed(payloads[0] - payloads[1])
    assert np.abs(difference - 0.25 * (model - other)).min() > 1.0


def test_secure_aggregation_builds_only_a_synchronous_mean_exchange() -> None:
    from p2pfl.aggregation import CoordinateMedian
    from p2pfl.errors import NodeError

    net = Net(FIVE)
    secure = net.secure["a"]
    schema = {"w": __import__("p2pfl.wire", fromlist=["TensorSpec"]).TensorSpec("float32", (SIZE,))}
    with pytest.raises(NodeError, match="round barrier"):
        secure.build_exchange(net.links["a"], mode="async", aggregator=mix, schema=schema)
    with pytest.raises(NodeError, match="robust aggregators"):
        secure.build_exchange(net.links["a"], mode="sync", aggregator=CoordinateMedian(), schema=schema)
