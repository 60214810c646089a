"""wrap_generator: a user's block-chain generator as a layered prior, validated, and searched by GIFD."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from art_gifd import GIFDAttack, client_gradients
from art_gifd.models import lenet, make_classifier
from art_gifd.priors.wrap import LayeredSequential, wrap_generator


def small_generator() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Linear(8, 16 * 4 * 4), nn.Unflatten(1, (16, 4, 4)), nn.ReLU()),
        nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(8, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(4, 1, 3, padding=1), nn.Tanh()),
    )


class NamedGenerator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        seq = small_generator()
        self.fc, self.up1, self.up2, self.to_image = seq[0], seq[1], seq[2], seq[3]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.to_image(self.up2(self.up1(self.fc(z))))


def test_sequential_and_named_blocks_compose() -> None:
    seq = small_generator()
    prior = wrap_generator(seq, latent_shape=(8,), image_shape=(1, 32, 32))
    assert isinstance(prior, LayeredSequential) and prior.num_blocks == 4
    assert not seq.training and not any(p.requires_grad for p in seq.parameters())
    z = prior.sample_latent(3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(prior(z), seq(z))
    for k in range(prior.num_blocks):
        torch.testing.assert_close(prior.forward_from(k, prior.forward_blocks(z, 0, k)), seq(z))
    assert prior.forward_blocks(z, 0, 2).shape == (3, 8, 8, 8)
    named = NamedGenerator()
    wrapped = wrap_generator(named, blocks=["fc", "up1", "up2", "to_image"], latent_shape=(8,), image_shape=(1, 32, 32))
    torch.testing.assert_close(wrapped(z), named(z))


def test_bad_wrapping_is_explained() -> None:
    with pytest.raises(ValueError, match=r"Unknown block names \['up3'\]: NamedGenerator has children \['fc'"):
        wrap_generator(NamedGenerator(), blocks=["fc", "up3"], latent_shape=(8,), image_shape=(1, 32, 32))
    with pytest.raises(ValueError, match=r"is not an nn\.Sequential: pass blocks="):
        wrap_generator(NamedGenerator(), latent_shape=(8,), image_shape=(1, 32, 32))
    with pytest.raises(ValueError, match=r"outputs images of shape \(1, 32, 32\), not image_shape=\(3, 32, 32\)"):
        wrap_generator(small_generator(), latent_shape=(8,), image_shape=(3, 32, 32))
    with pytest.raises(ValueError, match=r"cannot run on a latent of shape \(5,\)"):
        wrap_generator(small_generator(), latent_shape=(5,), image_shape=(1, 32, 32))


class _WithAux(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.block(h)
        return out, out.mean()


class _Conditional(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.block(h)


def test_blocks_that_do_not_map_a_tensor_to_a_tensor_are_explained() -> None:
    blocks = list(small_generator())
    with pytest.raises(ValueError, match=r"Block 4 of the generator returns a tuple, not a tensor"):
        wrap_generator(nn.Sequential(*blocks[:3], _WithAux(blocks[3])), latent_shape=(8,), image_shape=(1, 32, 32))
    with pytest.raises(ValueError, match=r"each block takes one tensor \(a class-conditional generator needs a Layer"):
        wrap_generator(nn.Sequential(_Conditional(blocks[0]), *blocks[1:]), latent_shape=(8,), image_shape=(1, 32, 32))


def test_gifd_searches_a_wrapped_generator(heldout) -> None:
    clf = make_classifier(lenet(seed=0), (1, 32, 32))
    x, y = heldout[0][:1], heldout[1][:1]
    grads = client_gradients(clf, x, y)
    prior = wrap_generator(small_generator(), latent_shape=(8,), image_shape=(1, 32, 32))
    attack = GIFDAttack(clf, prior, steps_per_stage=10, num_restarts=2, seed=0, verbose=False)
    result = attack.reconstruct(grads)
    assert result.stage_names == ["latent", "feature-1", "feature-2", "feature-3"]
    assert result.images.shape == (1, 1, 32, 32) and result.images.dtype == np.float32
    assert result.extra["prior"]["class"] == "LayeredSequential"
    # feature stages start from the previous best and can only improve the best matching loss
    assert np.all(np.diff(result.stage_losses.min(axis=1)) <= 1e-7)
    assert result.best_loss < result.stage_losses[0].max()


def test_an_empty_block_and_an_in_place_block_start_are_named_before_the_search(heldout) -> None:
    clf = make_classifier(lenet(seed=0), (1, 32, 32))
    grads = client_gradients(clf, heldout[0][:1], heldout[1][:1])
    blocks = [*small_generator()]
    padded = wrap_generator(nn.Sequential(*blocks[:2], nn.Sequential(), *blocks[2:]), latent_shape=(8,))  # 5 declared
    attack = GIFDAttack(clf, padded, max_stage=5, steps_per_stage=1, num_restarts=1, latent_pool=1, verbose=False)
    with pytest.raises(ValueError, match=r"forward_blocks\(h, 2, 3\) returns its input unchanged: block 2 computes"):
        attack.reconstruct(grads)
    padded = wrap_generator(nn.Sequential(*small_generator(), nn.Sequential()), latent_shape=(8,))  # empty last
    attack = GIFDAttack(clf, padded, max_stage=5, steps_per_stage=1, num_restarts=1, latent_pool=1, verbose=False)
    with pytest.raises(ValueError, match=r"forward_from\(4, h\) returns its input unchanged: the blocks after stage 4"):
        attack.reconstruct(grads)
    attack.set_params(max_stage=4)
    assert len(attack.reconstruct(grads).stage_names) == 4
    blocks = small_generator()
    blocks[2].insert(0, nn.ReLU(inplace=True))  # overwrites the feature of stage 2 that the search differentiates
    inplace = wrap_generator(blocks, latent_shape=(8,))
    attack = GIFDAttack(clf, inplace, steps_per_stage=1, num_restarts=1, latent_pool=1, verbose=False)
    with pytest.raises(ValueError, match=r"cannot be differentiated from its stage 2 .* use inplace=False there"):
        attack.reconstruct(grads)


def generator_ending_in(last: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1024), nn.Unflatten(1, (1, 32, 32)), last)


@pytest.mark.parametrize(
    ("last", "output_range", "message"),
    [
        (nn.Identity(), (-0.1, 0.1), r"outputs of 16 samples lie in \[-.*\], beyond output_range=\(-0\.1, 0\.1\)"),
        (nn.Sigmoid(), (0, 0.5), r"beyond output_range=\(0, 0\.5\): set output_range to its real range"),
        (nn.Threshold(1e9, float("nan")), (-1, 1), "The generator outputs NaN or infinite values"),
    ],
)
def test_outputs_beyond_the_declared_range_are_refused(last, output_range, message) -> None:
    with pytest.raises(ValueError, match=message):
        wrap_generator(generator_ending_in(last), latent_shape=(8,), output_range=output_range)


def test_a_range_declared_too_wide_warns() -> None:
    with pytest.warns(UserWarning, match=r"within one half of output_range=\(-1, 1\): .*output_range=\(0, 1\)"):
        wrap_generator(generator_ending_in(nn.Sigmoid()), latent_shape=(8,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrap_generator(generator_ending_in(nn.Sigmoid()), latent_shape=(8,), output_range=(0, 1))
        wrap_generator(small_generator(), latent_shape=(8,))  # untrained: a narrow spread around tanh's middle


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"latent_shape": (8.0,)}, r"latent_shape\[0\] must be a positive integer, got 8\.0"),
        ({"image_shape": (32, 32)}, r"image_shape must be \(C, H, W\), got \(32, 32\)"),
        ({"output_range": (1, -1)}, r"output_range high must lie in \(1, inf\), got -1"),
        ({"output_range": "0-1"}, "output_range must be \\(low, high\\)"),
    ],
)
def test_malformed_shapes_and_ranges_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        wrap_generator(small_generator(), **{"latent_shape": (8,), **kwargs})


def test_a_generator_without_parameters_is_refused() -> None:
    upsampler = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Upsample(scale_factor=4), nn.Tanh())
    with pytest.raises(ValueError, match="Sequential has no parameters: a prior is a trained generator"):
        wrap_generator(upsampler)
