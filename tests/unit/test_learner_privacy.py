"""A TorchLearner given a privacy mechanism: the hooks, DPSGD and UpdateDP as ``privacy=``."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from p2pfl.learning.learner import ArrayBatches, TorchLearner, TrainResult
from p2pfl.learning.models import MLP

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),  # Opacus' hooks; harmless
    pytest.mark.filterwarnings("ignore:Optimal order is the"),
]

N, BATCH, FEATURES = 40, 16, 6


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, FEATURES, generator=g)
    return x, (x[:, 0] > 0).long()


def build(seed: int = 3, *, privacy: Any = None, lr: float = 0.1) -> TorchLearner:
    torch.manual_seed(0)
    model = MLP(FEATURES, 2, hidden=8)
    x, y = data()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return TorchLearner(model, optimizer, ArrayBatches(x, y, BATCH, seed=seed), seed=seed, privacy=privacy)


def same(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


class Recorder:
    """A privacy mechanism that only records the learner's calls (no Opacus needed)."""

    noise_multiplier = 0.0

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.restored: dict[str, Any] | None = None

    @property
    def epsilon(self) -> float:
        return float(self.calls.count("after"))

    def attach(self, learner: TorchLearner) -> None:
        self.calls.append("attach")

    def before_round(self, learner: TorchLearner) -> None:
        self.calls.append("before")

    def after_round(self, learner: TorchLearner, result: TrainResult) -> TrainResult:
        self.calls.append("after")
        return TrainResult(loss=-1.0, steps=result.steps, samples=result.samples)

    def state(self) -> dict[str, Any]:
        return {"recorder": len(self.calls)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.restored = dict(state)


def test_without_privacy_training_is_the_plain_loop() -> None:
    learner = build()
    assert learner.privacy is None and learner.train_module is learner.model
    # the same steps by hand: same model, data order and optimizer
    torch.manual_seed(0)
    model = MLP(FEATURES, 2, hidden=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = data()
    losses, batches = [], ArrayBatches(x, y, BATCH, seed=3)
    for _ in range(2):
        for inputs, targets in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(inputs), targets)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    results = [learner.train(r) for r in range(2)]
    assert type(results[0]) is TrainResult and not hasattr(results[0], "epsilon")
    assert results[0].loss == sum(losses[:3]) / 3 and results[1].loss == sum(losses[3:]) / 3
    assert results[0].steps == 3 and results[0].samples == N
    expected = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert same(learner.get_weights(), expected)
    assert sorted(learner.state()) == ["data_rng", "model", "optimizer", "rng"]


def test_the_learner_calls_the_mechanism_around_each_round_and_checkpoints_it() -> None:
    recorder = Recorder()
    learner = build(privacy=recorder)
    assert learner.privacy is recorder and recorder.calls == ["attach"]
    assert learner.train(0).loss == -1.0  # the mechanism's result is what the node sees
    learner.train(1)
    assert recorder.calls == ["attach", "before", "after", "before", "after"]
    state = learner.state()
    assert state["recorder"] == 5
    learner.load_state(state)
    assert recorder.restored is not None and recorder.restored["recorder"] == 5


def test_a_second_mechanism_is_refused() -> None:
    learner = build(privacy=Recorder())
    with pytest.raises(ValueError, match="already trains under Recorder"):
        learner.set_privacy(Recorder())


def test_a_torch_learner_given_dpsgd_reports_epsilon_as_dpsgdlearner_does() -> None:
    pytest.importorskip("opacus")
    from p2pfl.privacy import DPSGD, DPSGDLearner, PrivateTrainResult

    learner = build(privacy=DPSGD(noise_multiplier=1.1, clip=1.0))
    assert learner.privacy is not None and learner.privacy.epsilon == 0.0
    results = [learner.train(r) for r in range(3)]
    assert all(isinstance(r, PrivateTrainResult) for r in results)
    spent = [r.epsilon for r in results]  # type: ignore[attr-defined]
    assert spent == sorted(spent) and spent[0] > 0 and spent[-1] == learner.privacy.epsilon
    assert learner.train_module is not learner.model  # Opacus' GradSampleModule around it
    assert list(learner.get_weights()) == ["net.1.weight", "net.1.bias", "net.3.weight", "net.3.bias"]
    # the old name builds the very same thing: bit-identical weights, losses and epsilon
    torch.manual_seed(0)
    model = MLP(FEATURES, 2, hidden=8)
    x, y = data()
    old = DPSGDLearner(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                       ArrayBatches(x, y, BATCH, seed=3), seed=3, noise_multiplier=1.1)
    old_results = [old.train(r) for r in range(3)]
    assert [(r.loss, r.epsilon) for r in old_results] == [(r.loss, r.epsilon) for r in results]  # type: ignore[attr-defined]
    assert same(old.get_weights(), learner.get_weights())
    assert old.epsilon == learner.privacy.epsilon and old.sample_rate == pytest.approx(1 / 3)


def test_update_dp_given_to_a_torch_learner_equals_the_wrapper_and_resumes() -> None:
    pytest.importorskip("opacus")
    from p2pfl.privacy import UpdateDP, UpdateDPLearner

    given = build(privacy=UpdateDP(clip=0.1, noise_multiplier=0.5), lr=0.5)  # seed: the learner's
    wrapped = UpdateDPLearner(build(lr=0.5), clip=0.1, noise_multiplier=0.5, seed=3)
    for r in range(2):
        a, b = given.train(r), wrapped.train(r)
        assert (a.loss, a.epsilon) == (b.loss, b.epsilon)  # type: ignore[attr-defined]
    assert same(given.get_weights(), wrapped.get_weights())
    assert sorted(given.state()) == sorted(wrapped.state())
    # a resumed learner continues the same noise stream and release count
    resumed = build(seed=3, privacy=UpdateDP(clip=0.1, noise_multiplier=0.5, seed=99), lr=0.5)
    resumed.load_state(copy.deepcopy(given.state()))
    assert resumed.train(2).epsilon == given.train(2).epsilon  # type: ignore[attr-defined]
    assert same(resumed.get_weights(), given.get_weights())


def test_a_mechanism_trains_one_learner() -> None:
    pytest.importorskip("opacus")
    from p2pfl.privacy import DPSGD, UpdateDP

    for mechanism in (DPSGD(noise_multiplier=1.0), UpdateDP(clip=1.0, noise_multiplier=1.0)):
        build(privacy=mechanism)
        with pytest.raises(ValueError, match="one learner"):
            build(privacy=mechanism)


def test_privatize_gives_the_learner_its_mechanism_and_the_summary_reads_its_noise() -> None:
    pytest.importorskip("opacus")
    from p2pfl.privacy import DPSGD, UpdateDP, privacy_summary, privatize

    plain = build()
    assert privatize(plain, "", seed=3, rounds=2) is plain and plain.privacy is None
    sample = privatize(build(), "sample", seed=3, rounds=2, noise=1.3)
    update = privatize(build(), "update", seed=3, rounds=2, noise=0.7, clip=0.5)
    assert isinstance(sample.privacy, DPSGD) and isinstance(update.privacy, UpdateDP)
    summary = privacy_summary([], None, [plain, sample, update])
    assert (summary["noise_multiplier_min"], summary["noise_multiplier_max"]) == (0.7, 1.3)
