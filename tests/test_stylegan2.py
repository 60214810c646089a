"""StyleGAN2 prior: checkpoint round trip in the rosinality layout, block composition, per-restart noise, gradients."""

from __future__ import annotations

import pytest
import torch

from art_gifd.priors.stylegan2 import StyleGAN2Generator, load_stylegan2, upsample_2x

TINY = {"size": 16, "style_dim": 8, "n_mlp": 2, "channels": {4: 6, 8: 4, 16: 4}}


def tiny(dtype: torch.dtype = torch.float32, seed: int = 0, **kwargs: object) -> StyleGAN2Generator:
    """A tiny StyleGAN2 with every parameter random (noise strengths and biases too, which start at 0)."""
    torch.manual_seed(seed)
    gen = StyleGAN2Generator(**{**TINY, **kwargs}).to(dtype)
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if name.endswith(("noise.weight", "bias")):
                p.normal_(0.0, 0.5)
    return gen.freeze()


def test_checkpoint_round_trip_in_g_ema_layout(tmp_path) -> None:
    gen = tiny()
    state = gen.state_dict()
    for key in (
        "style.1.weight",
        "style.2.bias",
        "input.input",
        "conv1.conv.weight",
        "conv1.conv.modulation.weight",
        "conv1.noise.weight",
        "conv1.activate.bias",
        "to_rgb1.conv.weight",
        "to_rgb1.bias",
        "convs.0.conv.blur.kernel",
        "convs.3.conv.weight",
        "to_rgbs.1.upsample.kernel",
        "noises.noise_4",
    ):
        assert key in state, key
    assert tuple(state["conv1.conv.weight"].shape) == (1, 6, 6, 3, 3)
    assert tuple(state["to_rgb1.bias"].shape) == (1, 3, 1, 1)
    assert tuple(state["noises.noise_4"].shape) == (1, 1, 16, 16)
    path = tmp_path / "stylegan2-tiny.pt"
    torch.save({"g_ema": state, "latent_avg": torch.zeros(8)}, path)
    loaded = load_stylegan2(path, size=16, style_dim=8, n_mlp=2, channels=TINY["channels"])
    z = gen.sample_latent(3, torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded(z), gen(z), rtol=0, atol=0)
    # the same seed draws the same latents and noise from either copy
    torch.testing.assert_close(loaded.sample_latent(3, torch.Generator().manual_seed(1)), z)


def test_checkpoint_key_errors_are_named(tmp_path) -> None:
    state = tiny().state_dict()
    del state["conv1.noise.weight"]
    state["convs.9.conv.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save({"g_ema": state}, path)
    with pytest.raises(ValueError, match=r"missing keys \['conv1.noise.weight'\].*unexpected keys \['convs.9.conv"):
        load_stylegan2(path, size=16, style_dim=8, n_mlp=2, channels=TINY["channels"])
    with pytest.raises(ValueError, match="has no entry 'g_ema'"):
        torch.save(state, path)
        load_stylegan2(path, size=16, style_dim=8, n_mlp=2, channels=TINY["channels"])
    with pytest.raises(ValueError, match="size must be a power of two"):
        StyleGAN2Generator(size=48)
    for kwargs, message in (
        ({"size": "16"}, "size must be an integer >= 8, got '16'"),
        ({"size": 16, "style_dim": 0}, "style_dim must be a positive integer, got 0"),
        ({"size": 16, "style_dim": 8.0}, "style_dim must be a positive integer, got 8.0"),
        ({"size": 16, "n_mlp": 0}, "n_mlp must be a positive integer"),
    ):
        with pytest.raises(ValueError, match=message):
            StyleGAN2Generator(**kwargs)


def test_blocks_compose_to_forward_at_every_stage() -> None:
    gen = tiny()
    assert gen.num_blocks == 3 and gen.image_shape == (3, 16, 16)
    z = gen.sample_latent(2, torch.Generator().manual_seed(0))
    full = gen(z)
    assert full.shape == (2, 3, 16, 16)
    torch.testing.assert_close(gen(z[1:]), full[1:])  # samples are independent (grouped modulated convolutions)
    for k in range(gen.num_blocks):
        h = gen.forward_blocks(z, 0, k)
        parts = gen.unpack(h, k)
        assert [tuple(p.shape[1:]) for p in parts] == gen.stage_parts(k)
        torch.testing.assert_close(gen.forward_from(k, h), full)
        for j in range(k, gen.num_blocks):  # any split point composes
            torch.testing.assert_close(gen.forward_from(j, gen.forward_blocks(h, k, j)), full)
    # stage-1 parts: the 4x4 feature, the 4x4 skip image, w codes 1..5, noise maps of layers 1..4
    assert gen.stage_parts(1) == [(6, 4, 4), (3, 4, 4), (5, 8), (1, 8, 8), (1, 8, 8), (1, 16, 16), (1, 16, 16)]


def test_noise_is_per_sample_and_redrawn_per_call() -> None:
    gen = tiny()
    rng = torch.Generator().manual_seed(0)
    first, second = gen.sample_latent(2, rng), gen.sample_latent(2, rng)
    noise_a = gen.unpack(first, 0)[1:]
    noise_b = gen.unpack(second, 0)[1:]
    assert all(not torch.equal(a, b) for a, b in zip(noise_a, noise_b, strict=True))
    assert not torch.equal(noise_a[0][0], noise_a[0][1])  # two rows (restarts) never share noise
    buffers = {k: v.clone() for k, v in gen.named_buffers()}
    gen(first)
    assert all(torch.equal(v, dict(gen.named_buffers())[k]) for k, v in buffers.items())  # no module state touched
    # noise matters: the same w with other noise gives another image
    mixed = gen.pack([gen.unpack(first, 0)[0], *noise_b])
    assert (gen(mixed) - gen(first)).abs().max() > 1e-3
    stored = tiny(noise="stored")
    z = stored.sample_latent(2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(stored.unpack(z, 0)[-1][0], stored.noises.noise_4[0])


def test_truncation_pulls_towards_mean_w() -> None:
    free, truncated = tiny(), tiny(truncation=0.5)
    z_free = free.unpack(free.sample_latent(64, torch.Generator().manual_seed(0)), 0)[0][:, 0]
    z_trunc = truncated.unpack(truncated.sample_latent(64, torch.Generator().manual_seed(0)), 0)[0][:, 0]
    centre = free.mean_w()
    torch.testing.assert_close(z_trunc - centre, 0.5 * (z_free - centre), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_gradcheck_through_forward_from(stage: int) -> None:
    gen = tiny(torch.float64, size=8, channels={4: 2, 8: 2}, style_dim=4)
    h = gen.forward_blocks(gen.sample_latent(1, torch.Generator().manual_seed(0)), 0, stage).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: gen.forward_from(stage, v), (h,), eps=1e-6, atol=1e-5)


def test_upsample_matches_reference_filter() -> None:
    # up-sampling a constant image keeps it constant away from the border; the output is twice the size
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = taps[None] * taps[:, None] / 64 * 4  # the FIR kernel, gain 4 for the inserted zeros
    out = upsample_2x(torch.full((1, 2, 6, 6), 3.0), kernel, (2, 1))
    assert out.shape == (1, 2, 12, 12)
    torch.testing.assert_close(out[..., 2:-2, 2:-2], torch.full((1, 2, 8, 8), 3.0))
    # a single impulse spreads as the separable [1, 3, 3, 1] filter
    impulse = torch.zeros(1, 1, 4, 4)
    impulse[0, 0, 1, 1] = 1.0
    spread = upsample_2x(impulse, kernel, (2, 1))[0, 0]
    torch.testing.assert_close(spread.sum(), torch.tensor(4.0))
    torch.testing.assert_close(spread[1:5, 1:5], kernel)


def test_gifd_searches_stylegan2_stages() -> None:
    from art_gifd import GIFDAttack, client_gradients
    from art_gifd.models import make_classifier

    torch.manual_seed(0)
    clf = make_classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10)), (3, 16, 16))
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)).numpy()
    grads = client_gradients(clf, x, [4])
    attack = GIFDAttack(clf, tiny(), steps_per_stage=5, num_restarts=2, seed=0, verbose=False)
    result = attack.reconstruct(grads)
    assert result.stage_names == ["latent", "feature-1", "feature-2"]
    assert result.images.shape == (1, 3, 16, 16) and 0.0 <= result.images.min() <= result.images.max() <= 1.0
    assert result.best_loss == pytest.approx(result.stage_losses.min())
