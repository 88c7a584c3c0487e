"""Sample-level DP-SGD: Opacus' accounting, target ε, plain wire names, reproducibility."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("opacus")
pytestmark = [
    # Opacus' per-sample hooks on a first layer whose input needs no gradient; harmless
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
]
from opacus.accountants import PRVAccountant, RDPAccountant  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier  # noqa: E402

from p2pfl import wire  # noqa: E402
from p2pfl.errors import ConfigError  # noqa: E402
from p2pfl.learning.learner import ArrayBatches, TorchLearner  # noqa: E402
from p2pfl.learning.models import MLP  # noqa: E402
from p2pfl.privacy import DPSGDLearner, PrivateTrainResult, epsilon_for  # noqa: E402
from p2pfl.privacy.accounting import epsilon_of_history  # noqa: E402
from p2pfl.simulation.config import ExperimentConfig  # noqa: E402

N, BATCH, FEATURES = 40, 16, 6  # ceil(40/16) = 3 Poisson batches per epoch: q = 1/3


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, FEATURES, generator=g)
    return x, (x[:, 0] > 0).long()


def make(seed: int = 0, *, model: torch.nn.Module | None = None, **dp: object) -> DPSGDLearner:
    torch.manual_seed(0)
    model = model or MLP(FEATURES, 2, hidden=8)
    x, y = data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    settings = {"noise_multiplier": 1.1, "max_grad_norm": 1.0, **dp}
    return DPSGDLearner(model, optimizer, ArrayBatches(x, y, BATCH, seed=seed), seed=seed, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "history",
    [[(1.1, 1 / 3, 30)], [(0.8, 0.01, 1000)], [(2.0, 0.5, 3), (1.0, 0.1, 7), (2.0, 0.5, 4)]],
    ids=["one", "small-rate", "mixed"],
)
def test_cached_rdp_epsilon_equals_opacus_rdp_accountant(history) -> None:
    accountant = RDPAccountant()
    accountant.history = list(history)
    assert epsilon_of_history(history, 1e-5) == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-12)


def test_spent_epsilon_matches_an_independent_opacus_accountant() -> None:
    learner = make()
    assert learner.epsilon == 0.0 and learner.sample_rate == pytest.approx(1 / 3)
    reported = [learner.train(r).epsilon for r in range(4)]
    # 4 rounds x 1 epoch x 3 Poisson steps, each recorded by the engine's accountant
    assert learner.engine.accountant.history == [(1.1, pytest.approx(1 / 3), 12)]
    independent = RDPAccountant()
    for _ in range(12):
        independent.step(noise_multiplier=1.1, sample_rate=1 / 3)
    assert reported[-1] == pytest.approx(independent.get_epsilon(delta=1e-5), rel=1e-12)
    assert reported == sorted(reported) and reported[0] > 0
    assert reported[0] == pytest.approx(epsilon_for(1.1, 1 / 3, 3, 1e-5), rel=1e-12)


def test_prv_accountant_can_be_chosen() -> None:
    learner = make(accountant="prv")
    learner.train(0)
    independent = PRVAccountant()
    independent.history = [(1.1, 1 / 3, 3)]
    assert learner.epsilon == pytest.approx(independent.get_epsilon(delta=1e-5), rel=1e-6)


def test_target_epsilon_picks_opacus_noise_and_ends_just_below_the_target() -> None:
    rounds = 5
    learner = make(noise_multiplier=0.0, target_epsilon=2.0, rounds=rounds, delta=1e-5)
    for r in range(rounds):
        result = learner.train(r)
    assert isinstance(result, PrivateTrainResult)
    # Opacus' get_noise_multiplier stops within 0.01 below the target ...
    assert 2.0 - 0.01 <= result.epsilon <= 2.0
    # ... and an accountant of its own, told the same steps, agrees
    independent = RDPAccountant()
    independent.history = [(learner.noise_multiplier, 1 / 3, rounds * 3)]
    assert independent.get_epsilon(delta=1e-5) == pytest.approx(result.epsilon, rel=1e-12)


def test_target_noise_is_opacus_get_noise_multiplier() -> None:
    from p2pfl.privacy import noise_for_epsilon

    # sample rate 1 has a closed-form RDP: the two searches take milliseconds
    expected = get_noise_multiplier(target_epsilon=4.0, target_delta=1e-5, sample_rate=1.0, steps=6)
    assert noise_for_epsilon(4.0, 1e-5, 1.0, 6) == expected


def test_local_steps_count_as_the_planned_steps() -> None:
    learner = make(noise_multiplier=0.0, target_epsilon=1.0, rounds=2, local_steps=5)
    assert learner.steps_per_round == 5
    assert learner.train(0).steps == 5 and learner.train(1).steps == 5
    assert 0.99 <= learner.epsilon <= 1.0


def test_shared_weights_keep_the_plain_names_and_load_into_a_plain_model() -> None:
    torch.manual_seed(0)
    plain_model = MLP(FEATURES, 2, hidden=8)
    x, y = data()
    model = copy.deepcopy(plain_model)
    plain = TorchLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), ArrayBatches(x, y, BATCH))
    private = make(model=copy.deepcopy(plain_model))
    private.train(0)
    # Opacus really wrapped the model, and its own names carry the wrapper's prefix ...
    assert all(k.startswith("_module.") for k in private.private_model.state_dict())
    # ... but what goes on the wire does not: same schema as a node without DP
    shared = private.get_weights()
    assert list(shared) == list(plain.get_weights()) == ["net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias"]
    assert wire.schema_of(shared) == wire.schema_of(plain.get_weights())
    fresh = MLP(FEATURES, 2, hidden=8)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in shared.items()}, strict=True)
    plain.set_weights(shared)  # and a non-DP learner takes them as they are
    for key, value in plain.get_weights().items():
        np.testing.assert_array_equal(value, shared[key])
    # the other way round: mixed weights from non-DP peers load into the DP model
    private.set_weights({k: np.zeros_like(v) for k, v in shared.items()})
    assert all(float(p.detach().abs().sum()) == 0 for p in private.private_model.parameters())


def test_same_seed_is_bit_identical_and_another_seed_is_not() -> None:
    runs = []
    for seed in (3, 3, 4):
        learner = make(seed)
        losses = [learner.train(r).loss for r in range(3)]
        runs.append((learner.get_weights(), losses, learner.epsilon))
    (w1, l1, e1), (w2, l2, e2), (w3, _, e3) = runs
    assert l1 == l2 and e1 == e2 == e3
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    assert any(not np.array_equal(w1[k], w3[k]) for k in w1)


def test_state_round_trip_resumes_identically_with_the_privacy_spent() -> None:
    straight = make()
    for r in range(3):
        straight.train(r)
    first = make()
    first.train(0)
    resumed = make(seed=99)  # other streams: everything must come from the state
    resumed.load_state(copy.deepcopy(first.state()))
    assert resumed.epsilon == first.epsilon
    for r in (1, 2):
        resumed.train(r)
    assert resumed.epsilon == straight.epsilon
    for key, value in straight.get_weights().items():
        np.testing.assert_array_equal(resumed.get_weights()[key], value)


def test_empty_poisson_batches_still_step_and_loss_stays_finite() -> None:
    # q = 1/40: most batches are empty; each still takes its noise-only step
    torch.manual_seed(0)
    model = MLP(FEATURES, 2, hidden=8)
    x, y = data()
    learner = DPSGDLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), ArrayBatches(x, y, 1),
                           noise_multiplier=1.0)
    result = learner.train(0)
    assert result.steps == 40 and math.isfinite(result.loss)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": 0.0}, "exactly one"),
        ({"noise_multiplier": 1.0, "target_epsilon": 1.0, "rounds": 1}, "exactly one"),
        ({"noise_multiplier": 0.0, "target_epsilon": 1.0}, "rounds"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"delta": 1.0}, "delta"),
    ],
)
def test_bad_settings_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_unreachable_target_is_a_config_error_naming_target_epsilon() -> None:
    with pytest.raises(ConfigError, match="target_epsilon") as info:
        make(noise_multiplier=0.0, target_epsilon=1e-4, rounds=50)
    assert info.value.field == "target_epsilon"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"dp": "yes"}, "dp"),
        ({"dp": "sample"}, "target_epsilon"),
        ({"dp": "update", "noise": 1.0, "target_epsilon": 2.0}, "noise"),
        ({"noise": 1.0}, "noise"),
        ({"target_epsilon": 1.0}, "target_epsilon"),
        ({"dp": "sample", "noise": -1.0}, "noise"),
        ({"dp": "sample", "noise": 1.0, "clip": 0.0}, "clip"),
        ({"dp": "sample", "noise": 1.0, "delta": 0.0}, "delta"),
        ({"dp": "sample", "target_epsilon": -1.0}, "target_epsilon"),
    ],
)
def test_config_validation_names_the_field(values, field) -> None:
    with pytest.raises(ConfigError) as info:
        ExperimentConfig(**values)
    assert info.value.field == field


def test_importing_p2pfl_and_the_simulator_does_not_import_opacus() -> None:
    probe = (
        "import sys, p2pfl, p2pfl.privacy, p2pfl.simulation.simulator, p2pfl.report;"
        "p2pfl.privacy.privacy_summary; print('opacus' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
