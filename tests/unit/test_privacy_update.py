"""Update-level DP: the update is clipped, the noise is seeded, ε is Opacus' RDP composition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl.learning.learner import ArrayBatches, TorchLearner
from p2pfl.learning.models import MLP
from p2pfl.privacy import GaussianMechanism, UpdateDPLearner, privatize_update
from p2pfl.privacy.update_dp import update_norm

# near-zero noise puts the best RDP order at the edge of Opacus' range; harmless here
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")


def weights(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "a.weight": (rng.standard_normal((4, 3)) * scale).astype(np.float32),
        "a.bias": (rng.standard_normal(4) * scale).astype(np.float32),
    }


@settings(max_examples=40, deadline=None)
@given(clip=st.floats(0.01, 10.0), scale=st.floats(1e-3, 100.0), seed=st.integers(0, 2**32 - 1))
def test_clipping_bounds_the_released_update(clip: float, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    start = weights(rng)
    trained = {k: v + weights(rng, scale)[k] for k, v in start.items()}
    private, norm = privatize_update(start, trained, GaussianMechanism(clip, 0.0), np.random.default_rng(0))
    assert norm == pytest.approx(update_norm(start, trained))
    released = update_norm(start, private)
    assert released <= clip * (1 + 1e-5) + 1e-6  # float32 rounding of the result only
    if norm <= clip:  # inside the ball: passed through unchanged
        assert released == pytest.approx(norm, rel=1e-5, abs=1e-6)
    else:  # outside: scaled onto the ball, direction kept
        assert released == pytest.approx(clip, rel=1e-4)
    assert {k: v.dtype for k, v in private.items()} == {k: v.dtype for k, v in start.items()}


def test_noise_has_std_z_times_clip_and_is_reproducible_from_the_seed() -> None:
    start = {"w": np.zeros(200_000, np.float32)}
    mechanism = GaussianMechanism(clip=0.5, noise_multiplier=2.0)
    first, _ = privatize_update(start, start, mechanism, np.random.default_rng(7))
    again, _ = privatize_update(start, start, mechanism, np.random.default_rng(7))
    other, _ = privatize_update(start, start, mechanism, np.random.default_rng(8))
    np.testing.assert_array_equal(first["w"], again["w"])
    assert not np.array_equal(first["w"], other["w"])
    assert mechanism.std == 1.0
    assert float(first["w"].std()) == pytest.approx(1.0, rel=0.01)
    assert abs(float(first["w"].mean())) < 0.01


def make_learner(seed: int = 0, **dp: object) -> UpdateDPLearner:
    torch.manual_seed(0)
    model = MLP(5, 2, hidden=4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 5, generator=g)
    inner = TorchLearner(model, torch.optim.SGD(model.parameters(), lr=0.5), ArrayBatches(x, (x[:, 0] > 0).long(), 8))
    return UpdateDPLearner(inner, **{"clip": 0.1, "noise_multiplier": 0.5, "seed": seed, **dp})  # type: ignore[arg-type]


def test_the_shared_model_is_the_privatised_one_and_kept_locally() -> None:
    learner = make_learner(noise_multiplier=1e-9)  # ~no noise: the clipping is what shows
    start = learner.get_weights()
    result = learner.train(0)
    assert learner.last_update_norm > 0.1  # the raw step was larger than the clip ...
    # ... what is shared is not; and the local model (read straight from torch) is that same one
    assert update_norm(start, learner.get_weights()) == pytest.approx(0.1, rel=1e-4)
    local = {k: v.detach().numpy() for k, v in learner.model.state_dict().items()}
    assert all(np.array_equal(local[k], v) for k, v in learner.get_weights().items())
    assert result.steps == 4 and result.samples == 32 == learner.num_samples  # forwarded attribute


def test_same_seed_same_weights_other_seed_other_noise() -> None:
    runs = []
    for seed in (5, 5, 6):
        learner = make_learner(seed)
        for r in range(3):
            learner.train(r)
        runs.append(learner.get_weights())
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not np.array_equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_epsilon_is_opacus_rdp_composition_with_sample_rate_one() -> None:
    opacus = pytest.importorskip("opacus")
    learner = make_learner(noise_multiplier=2.0)
    assert learner.epsilon == 0.0
    reported = [learner.train(r).epsilon for r in range(5)]
    independent = opacus.accountants.RDPAccountant()
    for _ in range(5):
        independent.step(noise_multiplier=2.0, sample_rate=1.0)
    assert reported[-1] == pytest.approx(independent.get_epsilon(delta=1e-5), rel=1e-12)
    assert reported == sorted(reported)


def test_target_epsilon_over_the_planned_rounds() -> None:
    pytest.importorskip("opacus")
    learner = make_learner(noise_multiplier=0.0, target_epsilon=5.0, rounds=4)
    for r in range(4):
        epsilon = learner.train(r).epsilon
    assert 5.0 - 0.01 <= epsilon <= 5.0
    assert learner.mechanism.noise_multiplier > 0


def test_state_keeps_the_noise_stream_and_the_releases() -> None:
    straight = make_learner()
    for r in range(2):
        straight.train(r)
    first = make_learner()
    first.train(0)
    resumed = make_learner(seed=123)
    resumed.load_state(first.state())
    resumed.train(1)
    assert resumed.releases == 2
    assert all(np.array_equal(resumed.get_weights()[k], v) for k, v in straight.get_weights().items())


@pytest.mark.parametrize(
    "kwargs",
    [{"clip": 0.0}, {"noise_multiplier": -1.0}, {"target_epsilon": 1.0}, {"delta": 0.0},
     {"noise_multiplier": 1.0, "target_epsilon": 1.0, "rounds": 2}],
)
def test_bad_settings_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        make_learner(**kwargs)


def test_zero_noise_means_infinite_epsilon() -> None:
    learner = make_learner(noise_multiplier=0.0)
    assert learner.train(0).epsilon == math.inf
