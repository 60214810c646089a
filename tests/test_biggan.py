"""BigGAN prior: a tiny random config saved and reloaded strictly from a local directory, blocks, class conditioning."""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("pytorch_pretrained_biggan")

from pytorch_pretrained_biggan import BigGANConfig

from art_gifd.priors.biggan import BigGANGenerator, load_biggan

TINY = BigGANConfig(
    output_dim=16,
    z_dim=8,
    class_embed_dim=8,
    channel_width=4,
    num_classes=1000,
    layers=[(True, 16, 8), (False, 8, 4), (True, 4, 2), (False, 2, 1)],
    attention_layer_position=2,
)


def tiny_directory(tmp_path) -> BigGANGenerator:
    """Save a tiny BigGAN with every weight and statistic random to ``tmp_path`` in the package's file layout."""
    torch.manual_seed(0)
    gen = BigGANGenerator(TINY.to_dict())
    with torch.no_grad():
        for name, tensor in gen.biggan.state_dict().items():
            if "running_vars" in name:
                tensor.uniform_(0.5, 1.5)
            elif not name.endswith(("weight_u", "weight_v")):
                tensor.normal_(0.0, 0.3)
    (tmp_path / "config.json").write_text(TINY.to_json_string(), encoding="utf-8")
    torch.save(gen.biggan.state_dict(), tmp_path / "pytorch_model.bin")
    return gen.freeze()


def test_round_trip_blocks_and_class_conditioning(tmp_path) -> None:
    original = tiny_directory(tmp_path)
    gen = load_biggan(tmp_path, truncation=0.4)
    assert gen.num_classes == 1000 and gen.image_shape == (3, 16, 16) and gen.num_blocks == 5
    assert not gen.training and not any(p.requires_grad for p in gen.parameters())
    z = gen.sample_latent(3, torch.Generator().manual_seed(0))
    assert z.abs().max() <= 2.0 * 0.4
    labels = torch.tensor([1, 500, 999])
    images = gen(z, labels)
    torch.testing.assert_close(images, original(z, labels), rtol=0, atol=0)
    # the blocks reproduce the package's own forward pass, and compose at every stage
    one_hot = torch.nn.functional.one_hot(labels, 1000).float()
    torch.testing.assert_close(images, gen.biggan(z, one_hot, 0.4))
    for k in range(1, gen.num_blocks):
        h = gen.forward_blocks(z, 0, k, labels)
        assert h.shape == (3, gen.stage_size(k))
        torch.testing.assert_close(gen.forward_from(k, h), images)
    # the class changes the image
    assert (gen(z, torch.tensor([2, 501, 998])) - images).abs().max() > 1e-3
    with pytest.raises(ValueError, match="class-conditional"):
        gen(z)


def test_missing_files_and_keys_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"lacks \['config.json', 'pytorch_model.bin'\]"):
        load_biggan(tmp_path)
    gen = tiny_directory(tmp_path)
    state = gen.biggan.state_dict()
    del state["embeddings.weight"]
    state["generator.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"missing keys \['embeddings.weight'\], unexpected keys \['generator.extra"):
        load_biggan(tmp_path)
    with pytest.raises(ValueError, match="truncation must lie in"):
        BigGANGenerator(TINY.to_dict(), truncation=0.0)


def test_missing_package_names_the_install_command(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pytorch_pretrained_biggan", None)
    with pytest.raises(ImportError, match="pip install pytorch-pretrained-biggan"):
        BigGANGenerator(TINY.to_dict())


def test_gifd_searches_biggan_with_a_label_mapping(tmp_path) -> None:
    from art_gifd import GIFDAttack, client_gradients
    from art_gifd.models import make_classifier

    prior = tiny_directory(tmp_path)
    torch.manual_seed(0)
    clf = make_classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10)), (3, 16, 16))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).numpy()
    grads = client_gradients(clf, x, [1, 6])
    mapping = {t: 100 * t + 7 for t in range(10)}
    attack = GIFDAttack(
        clf, prior, batch_size=2, max_stage=3, steps_per_stage=3, num_restarts=2, label_mapping=mapping, verbose=False
    )
    result = attack.reconstruct(grads, y=[1, 6])
    assert result.extra["generator_labels"] == [107, 607]
    assert result.stage_names == ["latent", "feature-1", "feature-2"] and result.images.shape == (2, 3, 16, 16)


def test_latent_is_kept_in_the_truncated_normal_support() -> None:
    biggan = BigGANGenerator(TINY.to_dict(), truncation=0.4)
    assert biggan.latent_constraint == "box" and biggan.latent_bound == pytest.approx(0.8)
    assert biggan.sample_latent(50).abs().max() <= 0.8
