"""Baseline attacks on the shared core: each reconstructs a tiny case, and each keeps its defining property."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from art_gifd import client_gradients
from art_gifd.attacks import DLGAttack, GGLAttack, GIASAttack, GradInversionAttack, IDLGAttack, InvertingGradientsAttack
from art_gifd.attacks.core import GradientMatcher
from art_gifd.attacks.grad_inversion import BatchNormStatistics
from art_gifd.data import load_mnist32
from art_gifd.federated import TargetModel
from art_gifd.metrics import psnr
from art_gifd.models import make_classifier


@pytest.fixture(scope="module")
def digit() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_mnist32("heldout")
    return x[300:301], y[300:301]


def bn_convnet() -> nn.Sequential:
    """A small ConvNet with BatchNorm whose running statistics come from the prior-training digits."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, stride=2),
        nn.BatchNorm2d(8),
        nn.Sigmoid(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.BatchNorm2d(8),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )
    x, _ = load_mnist32("train")
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average: the running statistics are those of the 1,000 digits
    net.train()
    with torch.no_grad():
        for i in range(0, 1000, 100):
            net(torch.as_tensor(x[i : i + 100]))
    return net.eval()


def test_soft_one_hot_labels_match_hard_labels(lenet_clf, digit) -> None:
    x, y = digit
    target = TargetModel(lenet_clf)
    matcher = GradientMatcher(
        target, target.as_gradient_list(client_gradients(lenet_clf, x, y)), torch.as_tensor(y), "l2"
    )
    images = torch.rand(3, 1, 32, 32)
    hard = matcher.loss(images)
    soft = matcher.loss(images, nn.functional.one_hot(torch.as_tensor(y).repeat(3), 10).float())
    torch.testing.assert_close(hard, soft)


def test_dlg_lbfgs_converges_and_recovers_label(lenet_clf, digit) -> None:
    x, y = digit
    grads = client_gradients(lenet_clf, x, y)
    result = DLGAttack(lenet_clf, max_iter=200, seed=0, verbose=False).reconstruct(grads)
    assert result.stage_names == ["pixel+labels"]
    assert result.labels.tolist() == y.tolist()  # optimised, not read from the gradient
    assert result.best_loss < 1e-2
    assert psnr(result.images, x)[0] > 30.0


def test_idlg_uses_label_from_gradient(lenet_clf, digit) -> None:
    x, y = digit
    grads = client_gradients(lenet_clf, x, y)
    result = IDLGAttack(lenet_clf, max_iter=150, seed=0, verbose=False).reconstruct(grads)
    assert result.stage_names == ["pixel"] and result.labels_inferred
    assert result.labels.tolist() == y.tolist()
    assert psnr(result.images, x)[0] > 30.0


def test_inverting_gradients_signed(lenet_clf, digit) -> None:
    x, y = digit
    grads = client_gradients(lenet_clf, x, y)
    result = InvertingGradientsAttack(lenet_clf, max_iter=150, num_restarts=2, seed=0, verbose=False).reconstruct(grads)
    assert result.best_loss == pytest.approx(result.stage_losses.min())
    assert psnr(result.images, x)[0] > 30.0


def test_grad_inversion_refuses_model_without_batchnorm(lenet_clf) -> None:
    with pytest.raises(ValueError, match="model has no BatchNorm layer"):
        GradInversionAttack(lenet_clf)
    with pytest.raises(ValueError, match=r"bn_weight must lie in \[0, 1e\+06\], got -1.0"):
        GradInversionAttack(make_classifier(bn_convnet(), (1, 32, 32)), bn_weight=-1.0)


def test_grad_inversion_refuses_a_group_term_over_one_restart_and_weights_past_float32() -> None:
    clf = make_classifier(bn_convnet(), (1, 32, 32))
    message = r"group_weight=0.01 pulls each restart towards the mean over the restarts, but num_restarts=1"
    with pytest.raises(ValueError, match=message):
        GradInversionAttack(clf, num_restarts=1, group_weight=1e-2)
    attack = GradInversionAttack(clf, num_restarts=2, group_weight=1e-2, verbose=False)
    with pytest.raises(ValueError, match=message):
        attack.set_params(num_restarts=1)
    assert attack.num_restarts == 2  # the refused value does not stay behind
    attack.set_params(num_restarts=1, group_weight=0.0)  # together: the final state is checked
    attack.set_params(group_weight=1e-2, num_restarts=3)
    assert (attack.num_restarts, attack.group_weight) == (3, 1e-2)
    for name in ("bn_weight", "group_weight"):
        with pytest.raises(ValueError, match=rf"{name} must lie in \[0, 1e\+06\], got 1e\+30"):
            GradInversionAttack(clf, **{name: 1e30})


def test_grad_inversion_reconstructs_with_bn_prior(digit) -> None:
    x, y = digit
    clf = make_classifier(bn_convnet(), (1, 32, 32))
    grads = client_gradients(clf, x, y)
    attack = GradInversionAttack(
        clf, max_iter=200, num_restarts=2, distance="cosine", bn_weight=1e-3, group_weight=1e-2, seed=0, verbose=False
    )
    result = attack.reconstruct(grads, y)
    # an all-black image scores about 11 dB on these digits; 200 steps of GI reach about 14 dB here
    assert psnr(result.images, x)[0] > 13.0


def test_batchnorm_statistics_prefer_real_batches() -> None:
    clf = make_classifier(bn_convnet(), (1, 32, 32))
    penalty = BatchNormStatistics(TargetModel(clf), batch_size=16)
    real = torch.as_tensor(load_mnist32("heldout")[0][:32])  # two restarts of 16 real digits
    noise = torch.rand(32, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    real_penalty, noise_penalty = penalty(real), penalty(noise)
    assert real_penalty.shape == (2,)
    assert float(real_penalty.max()) < 0.25 * float(noise_penalty.min())


def test_ggl_never_backpropagates(lenet_clf, digit, default_prior, monkeypatch) -> None:
    x, y = digit
    grads = client_gradients(lenet_clf, x, y)

    def forbidden(*args, **kwargs):
        raise AssertionError("GGL called backward")

    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    monkeypatch.setattr(torch.autograd, "backward", forbidden)
    attack = GGLAttack(lenet_clf, default_prior, max_iter=60, num_restarts=2, seed=0, verbose=False)
    result = attack.reconstruct(grads)
    monkeypatch.undo()
    target = TargetModel(lenet_clf)
    matcher = GradientMatcher(target, target.as_gradient_list(grads), torch.as_tensor(y), "cosine")
    start = default_prior(default_prior.sample_latent(2, torch.Generator().manual_seed(0)))
    assert result.best_loss < 0.5 * float(matcher.loss((start + 1) / 2).min())
    # 14.1 dB when measured with the sphere-constrained latent (60 generations; a black image scores about 11 dB)
    assert psnr(result.images, x)[0] > 13.0


def test_ggl_refuses_a_latent_too_large_for_cma_es(lenet_clf, digit) -> None:
    from art_gifd.priors.wrap import wrap_generator

    torch.manual_seed(0)
    wide = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(20_000, 1024), torch.nn.Unflatten(1, (1, 32, 32))))
    prior = wrap_generator(torch.nn.Sequential(*wide, torch.nn.Tanh()), latent_shape=(20_000,))
    x, y = digit
    attack = GGLAttack(lenet_clf, prior, max_iter=2, num_restarts=1, verbose=False)
    with pytest.raises(ValueError, match=r"CMA-ES would search 20,000 numbers .* covariance alone needs 3\.0 GiB"):
        attack.reconstruct(client_gradients(lenet_clf, x, y), y)


def test_ggl_scores_in_chunks_with_the_same_result(lenet_clf, digit, default_prior) -> None:
    x, y = digit
    grads = client_gradients(lenet_clf, x, y)
    results = [
        GGLAttack(
            lenet_clf, default_prior, max_iter=8, num_restarts=2, eval_batch_size=chunk, seed=0, verbose=False
        ).reconstruct(grads)
        for chunk in (None, 3)  # all 2 x 16 candidates of a generation in one call, or 3 at a time
    ]
    assert results[1].best_loss == pytest.approx(results[0].best_loss, rel=1e-4)
    np.testing.assert_allclose(results[1].images, results[0].images, atol=1e-4)
    with pytest.raises(ValueError, match=r"eval_batch_size must be a positive integer \(at most 100000000\) or None"):
        GGLAttack(lenet_clf, default_prior, eval_batch_size=0)


def test_gias_weight_stage_improves_on_latent(lenet_clf, digit, default_prior) -> None:
    x, y = digit
    grads = client_gradients(lenet_clf, x, y)
    before = [p.clone() for p in default_prior.parameters()]
    result = GIASAttack(
        lenet_clf, default_prior, steps_per_stage=60, num_restarts=2, seed=0, verbose=False
    ).reconstruct(grads)
    assert result.stage_names == ["latent", "generator"]
    latent_best, generator_best = result.stage_losses.min(axis=1)
    assert generator_best < 0.5 * latent_best
    # 20.9 dB when measured (17.7 dB without the latent sphere): a 3 dB regression fails
    assert psnr(result.images, x)[0] > 18.0
    for p, q in zip(default_prior.parameters(), before, strict=True):  # the shared prior itself is not fine-tuned
        torch.testing.assert_close(p, q)
