"""ResNet-18 FL model: shapes, seeding, and fitness for gradient inversion (per-sample BatchNorm in eval mode)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art_gifd.attacks.core import GradientMatcher
from art_gifd.federated import TargetModel, client_gradients
from art_gifd.models import MODELS, build_model, make_classifier, resnet18


@pytest.mark.parametrize(("channels", "size"), [(3, 64), (1, 32), (3, 32)])
def test_output_shape_and_size(channels: int, size: int) -> None:
    net = build_model("resnet18", in_channels=channels, image_size=size, num_classes=7, seed=0)
    assert "resnet18" in MODELS
    assert not net.training
    with torch.no_grad():
        out = net(torch.rand(2, channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    # ResNet-18 with a 3x3 stem: about 11.2 M parameters (11.17 M for 3 channels, 10 classes).
    assert 11.0e6 < sum(p.numel() for p in net.parameters()) < 11.3e6


def test_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = resnet18(3, 32, seed=1)
    after = torch.rand(1)
    b = resnet18(3, 32, seed=1)
    c = resnet18(3, 32, seed=2)
    assert torch.equal(after, expected)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


@pytest.mark.parametrize(("kwargs", "message"), [({"in_channels": 0}, "in_channels"), ({"image_size": 4}, "8")])
def test_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resnet18(**kwargs)


def test_eval_mode_gradient_is_mean_of_per_sample_gradients() -> None:
    """In eval mode BatchNorm does not mix samples: a batch's gradient is the mean of its samples' gradients."""
    clf = make_classifier(resnet18(3, 16, seed=0), (3, 16, 16))
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 16, 16), dtype=np.float32)
    y = np.array([1, 4])
    batch = client_gradients(clf, x, y)
    singles = [client_gradients(clf, x[i : i + 1], y[i : i + 1]) for i in range(2)]
    for g, g0, g1 in zip(batch, *singles, strict=True):
        np.testing.assert_allclose(g, (g0 + g1) / 2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("train_mode", [False, True])
def test_matcher_vmaps_over_restarts(train_mode: bool) -> None:
    """The vectorised matching loss runs on ResNet-18: zero at the private batch, positive elsewhere."""
    clf = make_classifier(resnet18(3, 16, seed=0), (3, 16, 16))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = np.array([2, 5])
    target = TargetModel(clf, train_mode=train_mode)
    observed = target.as_gradient_list(client_gradients(clf, x.numpy(), y, train_mode=train_mode))
    matcher = GradientMatcher(target, observed, target.labels_to_indices(y), "cosine")
    candidates = torch.cat([x, torch.rand_like(x)]).requires_grad_(True)  # restart 0: the truth; restart 1: noise
    loss = matcher.loss(candidates)
    assert loss.shape == (2,)
    assert loss[0].item() < 1e-5 < loss[1].item()
    (grad,) = torch.autograd.grad(loss.sum(), candidates)
    assert torch.isfinite(grad).all() and grad[2:].abs().sum() > 0
