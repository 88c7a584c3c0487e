"""Secure aggregation: masks cancel, payloads look random, dropouts unmask, misuse is refused."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfl.errors import ConfigError, NodeError, WireError
from p2pfl.node.mixing import mix
from p2pfl.privacy.secagg import (
    FRACTION_BITS,
    SecAggKeys,
    SecureAggregation,
    decode_fixed,
    encode_fixed,
    generate_keys,
    value_bound,
)
from p2pfl.security import generate_keypair
from p2pfl.topology.schedule import RoundPlan
from p2pfl.wire import TensorSpec

RESOLUTION = 2.0**-FRACTION_BITS
SIZE = 4096
SCHEMA = {"w": TensorSpec("float32", (SIZE // 64, 64))}


def neighbourhood(n: int, seed: int = 0, *, masking: bool = True):
    """Receiver "r" with neighbours "n0".."n{n-1}" and random public mixing weights."""
    rng = np.random.default_rng(seed)
    names = [f"n{k}" for k in range(n)]
    raw = rng.random(n + 1) + 0.1
    weights = dict(zip(["r", *names], raw / raw.sum(), strict=True))
    plan = RoundPlan(send_to=(), weights=weights, node="r")
    keys = generate_keys(["r", *names])
    members = {name: SecureAggregation(keys[name], masking=masking) for name in ["r", *names]}
    for member in members.values():
        member.bind(SCHEMA)
    models = {name: rng.normal(0, 3, SIZE) for name in names}
    return plan, members, models


def plain_sum(plan, models, present):
    return sum(plan.weights[p] * models[p] for p in present)


@pytest.mark.parametrize("n", [3, 4, 7])
@pytest.mark.parametrize("round_", [0, 5])
def test_masks_cancel_exactly_and_the_sum_is_the_plain_weighted_sum(n, round_):
    plan, members, models = neighbourhood(n, seed=n + round_)
    masked = {name: members[name].masked_for(plan, round_, models[name]) for name in models}
    receiver = members["r"]
    result = receiver.unmask(masked, {}, ())
    assert result.present == tuple(sorted(models))
    expected = plain_sum(plan, models, models)
    np.testing.assert_allclose(decode_fixed(result.total), expected, rtol=0, atol=n * RESOLUTION)
    # and the node's mix equals the plain mix of the same models
    own = {"w": np.random.default_rng(1).normal(size=SIZE).astype(np.float32).reshape(SIZE // 64, 64)}
    secure_mix = receiver.combine(own, result, plan.weights)
    received = {p: {"w": models[p].astype(np.float32).reshape(SIZE // 64, 64)} for p in models}
    plain_mix = mix("r", own, received, plan.weights)
    np.testing.assert_allclose(secure_mix["w"], plain_mix["w"], rtol=0, atol=1e-6)
    assert secure_mix["w"].dtype == np.float32


def test_both_ends_of_a_pair_derive_the_same_seed_and_curve_keys_work():
    a, b = generate_keypair(), generate_keypair()
    publics = {"a": a.public, "b": b.public}
    ka = SecAggKeys.from_curve("a", a.secret, publics.get)
    kb = SecAggKeys.from_curve("b", b.secret, publics.get)
    assert ka.seed("b") == kb.seed("a")
    assert len(ka.seed("b")) == 32
    with pytest.raises(NodeError, match="no public key"):
        ka.seed("c")


def test_fixed_point_round_trip_and_clip():
    values = np.array([0.0, 1.5, -2.25, 1e-3, -7e5, 3.0e9, np.nan])
    bound = value_bound(4)
    decoded = decode_fixed(encode_fixed(values, bound))
    np.testing.assert_allclose(decoded[:5], values[:5], rtol=0, atol=RESOLUTION)
    assert decoded[5] == pytest.approx(bound)  # clipped, never wrapped
    assert decoded[6] == 0.0
    # the clipped sum of every neighbour still fits the fixed point without wrapping
    assert 4 * bound * 2.0**FRACTION_BITS < 2.0**63


def looks_random(payload: np.ndarray, model: np.ndarray) -> bool:
    """Simple tests a masked payload passes and a plain one fails: bits balanced, no
    correlation with the model, mean of the signed values near 0."""
    bits = np.unpackbits(payload.view(np.uint8))
    signed = payload.view(np.int64).astype(np.float64) / 2.0**63
    balanced = abs(bits.mean() - 0.5) < 0.01
    uncorrelated = abs(np.corrcoef(signed, model)[0, 1]) < 0.1
    centred = abs(signed.mean()) < 0.05  # uniform on [-1, 1): sd of the mean ~ 0.009
    return balanced and uncorrelated and centred


@pytest.mark.parametrize("masking", [True, False], ids=["masked", "unmasked"])
def test_what_a_receiver_gets_from_one_neighbour_is_independent_of_its_model(masking):
    plan, members, _ = neighbourhood(4, seed=7, masking=masking)
    rng = np.random.default_rng(3)
    small = rng.normal(0.0, 0.01, SIZE)
    large = rng.normal(50.0, 20.0, SIZE)  # a very different model
    sender = members["n1"]
    payloads = [sender.masked_for(plan, round_, model) for round_, model in ((1, small), (2, large))]
    verdicts = [looks_random(p, m) for p, m in zip(payloads, (small, large), strict=True)]
    # indistinguishable: the payloads' statistics agree whatever the model
    bit_means = [np.unpackbits(p.view(np.uint8)).mean() for p in payloads]
    same_statistics = abs(bit_means[0] - bit_means[1]) < 0.01
    if masking:
        assert all(verdicts) and same_statistics
    else:  # the check has teeth: without masks it sees the models
        assert not any(verdicts) and not same_statistics


def test_dropout_of_one_neighbour_still_yields_the_sum_of_the_rest():
    plan, members, models = neighbourhood(5, seed=11)
    round_ = 3
    masked = {name: members[name].masked_for(plan, round_, models[name]) for name in models}
    dropped = {"n2"}
    del masked["n2"]  # its model never arrived
    receiver = members["r"]
    receiver.mark_dropped(round_, dropped)
    reveals = {p: members[p].reveal_for(plan, round_, sorted(dropped)) for p in masked}
    result = receiver.unmask(masked, reveals, dropped)
    np.testing.assert_allclose(decode_fixed(result.total), plain_sum(plan, models, masked), rtol=0, atol=5 * RESOLUTION)
    # without the reveals the sum is garbage
    garbage = receiver.unmask(masked, {}, dropped)
    assert np.abs(decode_fixed(garbage.total) - plain_sum(plan, models, masked)).max() > 1.0
    # a late model from the dropped neighbour is refused for that round, not the next
    with pytest.raises(WireError) as refused:
        receiver.check_not_dropped("n2", round_)
    assert refused.value.reason == "dropped_late"
    receiver.check_not_dropped("n2", round_ + 1)
    receiver.check_not_dropped("n1", round_)


def test_two_dropouts_and_a_repeated_reveal():
    plan, members, models = neighbourhood(6, seed=12)
    masked = {name: members[name].masked_for(plan, 0, models[name]) for name in models}
    for gone in ("n0", "n4"):
        del masked[gone]
    reveals = {p: members[p].reveal_for(plan, 0, ["n0", "n4"]) for p in masked}
    result = members["r"].unmask(masked, reveals, ["n0", "n4"])
    np.testing.assert_allclose(decode_fixed(result.total), plain_sum(plan, models, masked), rtol=0, atol=6 * RESOLUTION)


def test_reveals_that_would_expose_a_model_are_refused():
    plan, members, models = neighbourhood(3, seed=13)
    sender = members["n0"]
    with pytest.raises(WireError, match="sent it none"):  # nothing sent to r in round 0 yet
        sender.reveal_for(plan, 0, ["n1"])
    sender.masked_for(plan, 0, models["n0"])
    with pytest.raises(WireError, match="fewer than 2"):  # only n0 would stay in the sum
        sender.reveal_for(plan, 0, ["n1", "n2"])
    with pytest.raises(WireError, match="not dropped neighbours"):
        sender.reveal_for(plan, 0, ["n0"])  # its own masks: would unmask itself
    with pytest.raises(WireError, match="not dropped neighbours"):
        sender.reveal_for(plan, 0, ["stranger"])
    assert sender.reveal_for(plan, 0, ["n1"]).dtype == np.uint64


def test_neighbourhood_smaller_than_three_is_refused():
    plan, members, models = neighbourhood(2, seed=1)
    with pytest.raises(NodeError, match="at least 3 neighbours"):
        members["n0"].masked_for(plan, 0, models["n0"])


def test_config_refuses_small_neighbourhoods_and_robust_aggregators():
    from p2pfl import ExperimentConfig, build_experiment

    with pytest.raises(ConfigError, match="secure_aggregation.*at least 3"):
        build_experiment(ExperimentConfig(nodes=6, topology="ring", rounds=1, secure_aggregation=True))
    for aggregator in ("median", "krum:1", "trimmed-mean:1", "clipped-gossip"):
        with pytest.raises(ConfigError, match="secure_aggregation"):
            ExperimentConfig(aggregator=aggregator, secure_aggregation=True)
    with pytest.raises(ConfigError, match="secure_aggregation"):
        ExperimentConfig(fanout=2, topology="complete", secure_aggregation=True)


def test_node_refuses_a_robust_aggregator_with_secure_aggregation():
    import zmq

    from p2pfl import Node, NodeConfig, StaticSchedule, ZmqTransport, build_topology
    from p2pfl.aggregation import build_aggregator
    from p2pfl.testing import tiny_learner

    keys = generate_keys(["0"])
    context = zmq.Context()
    try:
        with pytest.raises(NodeError, match="robust aggregators"):
            Node(
                NodeConfig(name="0", rounds=1), tiny_learner(0), StaticSchedule(build_topology("complete", 4)),
                ZmqTransport(context, "inproc://x"), aggregator=build_aggregator("median"),
                secure=SecureAggregation(keys["0"]),
            )
    finally:
        context.term()


def test_a_deployed_node_keys_its_masks_with_its_curve_key_and_the_allow_list(tmp_path):
    from p2pfl.deploy.config import OrgNodeConfig
    from p2pfl.deploy.runner import Membership, _secure_aggregation
    from p2pfl.security import AllowList, read_secret_key, write_keypair
    from p2pfl.topology import StaticSchedule, build_topology

    names = ["0", "1", "2", "3"]
    pairs = {name: generate_keypair() for name in names}
    for name, pair in pairs.items():
        write_keypair(tmp_path, name, pair)
    allowlist = AllowList(lambda: {name: pair.public for name, pair in pairs.items()})

    def secure_for(name, topology="complete"):
        config = OrgNodeConfig(
            name=name, bind="tcp://127.0.0.1:7000", peers={n: "tcp://127.0.0.1:7001" for n in names if n != name},
            learner="m:f", secret_key=f"{name}.key_secret", secure_aggregation=True,
        )
        membership = Membership(StaticSchedule(build_topology(topology, 4)), {}, None, None, "c")
        keypair = read_secret_key(tmp_path / config.secret_key)  # as _link_security reads it
        return _secure_aggregation(config, membership, allowlist, keypair, 0)

    a, b = secure_for("0"), secure_for("1")
    assert a.keys.seed("1") == b.keys.seed("0")
    with pytest.raises(ConfigError, match="at least 3"):
        secure_for("0", "ring")
    with pytest.raises(ConfigError, match="secure_aggregation"):
        OrgNodeConfig(name="0", bind="tcp://x:1", peers={"1": "tcp://x:2"}, learner="m:f", insecure=True,
                      secure_aggregation=True)
