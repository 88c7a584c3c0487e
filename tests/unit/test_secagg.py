"""Secure aggregation: masks cancel, payloads look random, dropouts unmask, misuse is refused."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfl.errors import ConfigError, NodeError, WireError
from p2pfl.privacy import shamir
from p2pfl.privacy.secagg import (
    FRACTION_BITS,
    SecAggKeys,
    SecureAggregation,
    decode_fixed,
    encode_fixed,
    generate_keys,
    value_bound,
)
from p2pfl.privacy.secagg_state import Bundle
from p2pfl.security import generate_keypair
from p2pfl.topology.schedule import RoundPlan
from p2pfl.wire import TensorSpec

RESOLUTION = 2.0**-FRACTION_BITS
SIZE = 4096
SCHEMA = {"w": TensorSpec("float32", (SIZE // 64, 64))}


def neighbourhood(n: int, seed: int = 0, *, masking: bool = True):
    """Receiver "r" with neighbours "n0".."n{n-1}", random public mixing weights, and the
    key bundle "r" relays (every neighbour's ephemeral key)."""
    rng = np.random.default_rng(seed)
    names = [f"n{k}" for k in range(n)]
    raw = rng.random(n + 1) + 0.1
    weights = dict(zip(["r", *names], raw / raw.sum(), strict=True))
    plan = RoundPlan(send_to=(), weights=weights, node="r")
    keys = generate_keys(["r", *names])
    members = {name: SecureAggregation(keys[name], masking=masking) for name in ["r", *names]}
    for member in members.values():
        member.bind(SCHEMA)
    bundle = Bundle.of("r", {name: members[name].ephemeral.public for name in names})
    models = {name: rng.normal(0, 3, SIZE) for name in names}
    return plan, members, models, bundle


def test_a_deployed_members_identity_derives_from_its_curve_key():
    pair = generate_keypair()
    a = SecAggKeys.from_curve("a", pair.secret, {}.get)
    b = SecAggKeys.from_curve("a", pair.secret, {}.get)
    assert a.identity.public == b.identity.public  # the same identity on every start ...
    assert SecureAggregation(a).ephemeral.public != SecureAggregation(b).ephemeral.public  # ... fresh run keys
    assert not a.verify("a", b"x", a.sign(b"x"))  # a member not in the consortium file is trusted by nobody
    assert SecAggKeys("b", a.identity, {"a": a.identity.public}.get).verify("a", b"x", a.sign(b"x"))


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
    plan, members, _, bundle = neighbourhood(4, seed=7, masking=masking)
    rng = np.random.default_rng(3)
    small = rng.normal(0.0, 0.01, SIZE)
    large = rng.normal(50.0, 20.0, SIZE)  # a very different model
    sender = members["n1"]
    payloads = [sender.masked_for(plan, round_, model, bundle)[0] for round_, model in ((1, small), (2, large))]
    verdicts = [looks_random(p, m) for p, m in zip(payloads, (small, large), strict=True)]
    # indistinguishable: the payloads' statistics agree whatever the model
    bit_means = [np.unpackbits(p.view(np.uint8)).mean() for p in payloads]
    same_statistics = abs(bit_means[0] - bit_means[1]) < 0.01
    if masking:
        assert all(verdicts) and same_statistics
    else:  # the check has teeth: without masks it sees the models
        assert not any(verdicts) and not same_statistics


def test_shares_open_only_for_their_holder_and_slot():
    plan, members, models, bundle = neighbourhood(4, seed=5)
    _, sealed = members["n0"].masked_for(plan, 3, models["n0"], bundle)
    assert set(sealed) == {"n1", "n2", "n3"}
    carried = {"n0": sealed["n1"]}  # what r carries to n1
    assert set(members["n1"].open_shares("r", 3, bundle, carried)) == {"n0"}
    assert members["n1"].open_shares("r", 4, bundle, carried) == {}  # another round's slot
    assert members["n2"].open_shares("r", 3, bundle, {"n0": sealed["n1"]}) == {}  # n1's share, to n2


def test_shamir_needs_the_threshold():
    secret = bytes(range(32))
    shares = shamir.split(secret, [1, 2, 3, 4], threshold=3)
    assert shamir.combine({x: shares[x] for x in (1, 3, 4)}) == secret
    assert shamir.combine({x: shares[x] for x in (2, 3, 4)}) == secret
    with pytest.raises(WireError, match="do not combine"):  # two points: (almost surely) no 32-byte seed
        shamir.combine({x: shares[x] for x in (1, 2)})


def test_neighbourhood_smaller_than_three_is_refused():
    plan, members, models, bundle = neighbourhood(2, seed=1)
    with pytest.raises(NodeError, match="at least 3 neighbours"):
        members["n0"].masked_for(plan, 0, models["n0"], bundle)


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


def test_a_deployed_node_signs_with_its_curve_derived_identity_and_checks_the_consortium_keys(tmp_path):
    from p2pfl.deploy.config import OrgNodeConfig
    from p2pfl.deploy.runner import Membership, _secure_aggregation
    from p2pfl.security import AllowList, read_secret_key, write_keypair
    from p2pfl.security.identity import identity_from_curve
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
        return _secure_aggregation(config, membership, allowlist, keypair, 0, signing_keys.get)

    signing_keys = {name: identity_from_curve(name, pair.secret).public for name, pair in pairs.items()}
    a, b = secure_for("0"), secure_for("1")
    assert a.keys.verify("1", b"statement", b.keys.sign(b"statement"))
    assert a.ephemeral.public != secure_for("0").ephemeral.public  # a fresh ephemeral key per start
    with pytest.raises(ConfigError, match="at least 3"):
        secure_for("0", "ring")
    with pytest.raises(ConfigError, match="secure_aggregation"):
        OrgNodeConfig(name="0", bind="tcp://x:1", peers={"1": "tcp://x:2"}, learner="m:f", insecure=True,
                      secure_aggregation=True)
