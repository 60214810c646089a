"""Several observations in one batched search: the same results as one at a time, from the same seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.estimators.classification import PyTorchClassifier

from art_gifd import GIFDAttack, LocalTraining, client_gradients, client_update
from art_gifd.attacks.core import GradientMatcher, JointMatcher, SearchStage, join_stages, screen_pool
from art_gifd.attacks.dlg import DLGAttack
from art_gifd.federated import TargetModel
from art_gifd.models import convnet, lenet, make_classifier

TRAINING = LocalTraining(0.05, epochs=1, batch_size=1, shuffle_seed=0)


def _clients(heldout, models, training=None, batch=2):
    """One observation per model (client ``t`` holds digits ``700 + batch·t …``) and its ground truth."""
    x, y = heldout
    observations, truths = [], []
    for t, clf in enumerate(models):
        xi, yi = x[700 + batch * t : 700 + batch * (t + 1)], y[700 + batch * t : 700 + batch * (t + 1)]
        observations.append(client_update(clf, xi, yi, training) if training else client_gradients(clf, xi, yi))
        truths.append((xi, yi))
    return observations, truths


@pytest.mark.parametrize("training", [None, TRAINING], ids=["fedsgd", "fedavg"])
@pytest.mark.parametrize("shared", [True, False], ids=["one-round", "several-rounds"])
def test_joint_matching_losses_and_their_gradients_are_each_observations_own(heldout, training, shared) -> None:
    models = [make_classifier(lenet(seed=0 if shared else t), (1, 32, 32)) for t in range(3)]
    observations, truths = _clients(heldout, models, training)
    matchers = []
    for clf, observed, (_, y) in zip(models, observations, truths, strict=True):
        target = TargetModel(clf)
        matchers.append(
            GradientMatcher(
                target, target.as_gradient_list(observed), torch.as_tensor(y), "cosine", 2, training=training
            )
        )
    joint = JointMatcher(matchers)
    assert joint.shared_weights == shared
    images = torch.rand(3 * 2 * 2, 1, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    together = joint.loss(images)
    (grad_together,) = torch.autograd.grad(together.sum(), images)
    alone = torch.cat([m.loss(part) for m, part in zip(matchers, images.split(4), strict=True)])
    (grad_alone,) = torch.autograd.grad(alone.sum(), images)
    assert torch.allclose(together, alone, rtol=1e-5, atol=1e-8)
    # float rounding only: a row grouped with another observation's would differ at the scale of the gradient itself
    assert float((grad_together - grad_alone).abs().max()) <= 1e-4 * float(grad_alone.abs().max())


def test_a_pool_of_starts_screened_for_several_observations_keeps_each_ones_own_choice(heldout) -> None:
    models = [make_classifier(lenet(seed=t), (1, 32, 32)) for t in range(3)]
    observations, truths = _clients(heldout, models)
    matchers = []
    for clf, observed, (_, y) in zip(models, observations, truths, strict=True):
        target = TargetModel(clf)
        matchers.append(GradientMatcher(target, target.as_gradient_list(observed), torch.as_tensor(y), "cosine", 2))
    rng = torch.Generator().manual_seed(2)
    # 4 draws × 2 restarts × 2 images per observation; pixels as the representation
    stages = [
        SearchStage("pixel", [torch.rand(16, 1, 32, 32, generator=rng)], lambda v: v[0], pool=4) for _ in range(3)
    ]
    alone = [screen_pool(stage, m.loss).init[0] for stage, m in zip(stages, matchers, strict=True)]
    joint = join_stages(stages, 2)
    together = screen_pool(joint, JointMatcher(matchers).loss, 3).init[0]
    assert together.shape == (3 * 2 * 2, 1, 32, 32)
    torch.testing.assert_close(together, torch.cat(alone), rtol=0, atol=0)
    for stage, chosen, m in zip(stages, alone, matchers, strict=True):  # the 2 best of 8 candidate pairs, best first
        with torch.no_grad():
            losses = m.loss(stage.init[0])
        best = torch.argsort(losses)[:2]
        torch.testing.assert_close(chosen, stage.init[0].reshape(8, 2, 1, 32, 32)[best].reshape(4, 1, 32, 32))


def test_clients_of_one_round_searched_together_give_bitwise_the_results_of_one_at_a_time(
    heldout, default_prior
) -> None:
    clf = make_classifier(lenet(seed=0), (1, 32, 32))
    observations, _ = _clients(heldout, [clf] * 3)
    # every stage carries both restarts: a search alone with a single restart takes plain autograd instead of the
    # batched path, which rounds differently (the short-search test below covers that case)
    settings = dict(steps_per_stage=15, num_restarts=2, batch_size=2, verbose=False)
    alone = [
        GIFDAttack(clf, default_prior, seed=s, **settings).reconstruct(o)
        for s, o in zip((3, 4, 5), observations, strict=True)
    ]
    together = GIFDAttack(clf, default_prior, **settings).reconstruct_many(observations, seeds=[3, 4, 5])
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.stage_losses, b.stage_losses)
        assert (a.best_stage, a.best_restart, a.seed) == (b.best_stage, b.best_restart, b.seed)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_several_rounds_of_fedavg_searched_together_match_one_at_a_time_in_a_short_search(
    heldout, default_prior
) -> None:
    # different weights per observation take batched weights, whose kernels round differently: Adam amplifies that
    # over a long search, so the equality is checked on a short one
    models = [make_classifier(lenet(seed=t), (1, 32, 32)) for t in range(3)]
    observations, truths = _clients(heldout, models, TRAINING)
    settings = dict(
        steps_per_stage=2,
        num_restarts=2,
        batch_size=2,
        verbose=False,
        training=TRAINING,
        seed=7,
        feature_restarts="halving",
    )
    labels = [y for _, y in truths]
    alone = [
        GIFDAttack(m, default_prior, **settings).reconstruct(o, y)
        for m, o, y in zip(models, observations, labels, strict=True)
    ]
    together = GIFDAttack(models[0], default_prior, **settings).reconstruct_many(
        observations, labels, estimators=models
    )
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a.images, b.images, atol=1e-3)
        np.testing.assert_allclose(a.stage_losses, b.stage_losses, rtol=1e-3)


def test_stages_that_cannot_be_stacked_run_one_after_the_other_with_the_same_results(heldout) -> None:
    clf = make_classifier(lenet(seed=0), (1, 32, 32))
    observations, _ = _clients(heldout, [clf] * 2, batch=1)
    settings = dict(max_iter=10, batch_size=1, verbose=False, seed=2)  # L-BFGS, labels optimised
    alone = [DLGAttack(clf, **settings).reconstruct(o) for o in observations]
    together = DLGAttack(clf, **settings).reconstruct_many(observations, max_together=2)
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a.images, b.images)


def test_bad_inputs_to_reconstruct_many_are_named(heldout, default_prior) -> None:
    clf = make_classifier(lenet(seed=0), (1, 32, 32))
    observations, _ = _clients(heldout, [clf] * 2)
    attack = GIFDAttack(clf, default_prior, steps_per_stage=1, batch_size=2, verbose=False)
    with pytest.raises(ValueError, match="seeds has 1 entries for 2 observations"):
        attack.reconstruct_many(observations, seeds=[1])
    with pytest.raises(ValueError, match=r"estimators\[1\] has parameter shapes unlike"):
        attack.reconstruct_many(observations, estimators=[clf, make_classifier(convnet(seed=0), (1, 32, 32))])
    relu = lenet(seed=0)
    relu[1] = torch.nn.ReLU()  # the same parameter shapes, another function of them
    with pytest.raises(ValueError, match=r"estimators\[1\] has other layers .*\(1: ReLU\(\) where it has 1: Sigmoid"):
        attack.reconstruct_many(observations, estimators=[clf, make_classifier(relu, (1, 32, 32))])
    scaled = PyTorchClassifier(lenet(seed=0), torch.nn.CrossEntropyLoss(), (1, 32, 32), 10, clip_values=(0.0, 255.0))
    with pytest.raises(ValueError, match=r"estimators\[1\] has clip_values \[0.0, 255.0\] but the attack's"):
        attack.reconstruct_many(observations, estimators=[clf, scaled])

    def pooled() -> torch.nn.Module:  # one set of parameter shapes for any image size
        torch.manual_seed(0)
        layers = (torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10))
        return torch.nn.Sequential(*layers)

    large, small = make_classifier(pooled(), (1, 32, 32)), make_classifier(pooled(), (1, 28, 28))
    pooled_observations, _ = _clients(heldout, [large] * 2)
    with pytest.raises(ValueError, match=r"estimators\[1\] has input_shape \(1, 28, 28\) but the attack's .*\(1, 32"):
        GIFDAttack(large, default_prior, steps_per_stage=1, batch_size=2, verbose=False).reconstruct_many(
            pooled_observations, estimators=[large, small]
        )

    class Tempered(torch.nn.Module):  # the same layers and weights; its forward divides by a plain attribute
        def __init__(self, temperature: float) -> None:
            super().__init__()
            self.net, self.temperature = lenet(seed=0), temperature

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x) / self.temperature

    cool, hot = (make_classifier(Tempered(t), (1, 32, 32)) for t in (1.0, 100.0))
    with pytest.raises(ValueError, match=r"estimators\[1\]'s model computes other outputs .* a temperature attribute"):
        GIFDAttack(cool, default_prior, steps_per_stage=1, batch_size=2, verbose=False).reconstruct_many(
            observations, estimators=[cool, hot]
        )
    with pytest.raises(
        ValueError,
        match=r"observations must be a list .* got a dict \(a gradient name -> array of one client goes in a list",
    ):
        attack.reconstruct_many(dict(enumerate(observations)))
    with pytest.raises(ValueError, match="seeds must be a list with one entry per observation, got a int64"):
        attack.reconstruct_many(observations, seeds=np.int64(3))
    with pytest.raises(ValueError, match="labels must be a list with one entry per observation, got a ndarray"):
        attack.reconstruct_many(observations, labels=np.zeros(2, dtype=np.int64))  # one batch's labels, not two
    with pytest.raises(ValueError, match="max_together"):
        attack.reconstruct_many(observations, max_together=0)
    assert attack.reconstruct_many([]) == []
    one = attack.reconstruct_many(iter(observations[:1]), seeds=np.arange(3, 4))  # any iterable but a mapping
    assert len(one) == 1
