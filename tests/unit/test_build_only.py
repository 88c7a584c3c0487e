"""``build_experiment(config, only=...)``: a cluster shard builds just its own nodes'
learners, each bit-identical to the whole build's."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfl.aggregation.consensus import distances_to, model_distances, model_sum
from p2pfl.attacks import AttackingLearner
from p2pfl.simulation.config import ExperimentConfig
from p2pfl.simulation.setup import build_experiment


def _trained(learner):
    learner.train(0)
    return learner.get_weights(), learner.evaluate()


def test_only_some_learners_are_built_and_they_match_the_whole_build():
    config = ExperimentConfig(nodes=8, topology="ring", rounds=1, local_steps=3, seed=4, attackers=2, attack="scale:-1")
    whole = build_experiment(config)
    only = ["6", "1", "5"]
    part = build_experiment(config, only=only)
    assert part.built == [1, 5, 6] and len(part.learners) == 3
    assert part.names == whole.names and part.attackers == whole.attackers and part.slow == whole.slow
    assert [p.tolist() for p in part.parts] == [p.tolist() for p in whole.parts]
    mine = part.learner_of
    assert list(mine) == ["1", "5", "6"]
    everyone = whole.learner_of
    for name in only:
        assert isinstance(mine[name], AttackingLearner) == isinstance(everyone[name], AttackingLearner)
        ours, theirs = _trained(mine[name]), _trained(everyone[name])
        for key in theirs[0]:
            np.testing.assert_array_equal(ours[0][key], theirs[0][key])  # same bits
        assert ours[1] == theirs[1]
    assert isinstance(mine["5"], AttackingLearner)  # the seed draws nodes 5 and 7 as attackers


def test_an_unknown_node_is_refused():
    with pytest.raises(ValueError, match="no such nodes: 9"):
        build_experiment(ExperimentConfig(nodes=4, rounds=1), only=["9"])


def test_sums_of_groups_give_the_distances_of_the_whole_within_rounding():
    rng = np.random.default_rng(0)
    models = [{"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
              for _ in range(7)]
    groups = [models[:3], models[3:]]
    sums = [model_sum(group) for group in groups]
    mean = {key: sum(s[key] for s in sums) / len(models) for key in models[0]}
    got = np.concatenate([distances_to(group, mean) for group in groups])
    np.testing.assert_allclose(got, model_distances(models), rtol=1e-12)
