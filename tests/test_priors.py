"""Layered generators: block composition, the embedded prior's checksum, safe and strict checkpoint loading."""

from __future__ import annotations

import argparse
import importlib.util
import shutil

import pytest
import torch

from art_gifd.configfile import Checker, parse_document
from art_gifd.priors.base import LayeredGenerator
from art_gifd.priors.checkpoints import load_state_dict_file, load_strict
from art_gifd.priors.dcgan import DCGANGenerator
from art_gifd.priors.embedded import EMBEDDED_PRIORS, embedded_weights_path, load_default_prior
from art_gifd.priors.faces import load_face_dcgan
from art_gifd.priors.registry import read_prior_spec


@pytest.mark.parametrize(("size", "nc", "classes"), [(32, 1, None), (64, 3, None), (16, 1, 5)])
def test_blocks_compose_to_forward(size: int, nc: int, classes: int | None) -> None:
    gen = DCGANGenerator(nz=8, ngf=8, nc=nc, image_size=size, num_classes=classes).freeze()
    z = gen.sample_latent(3, torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2]) if classes else None
    full = gen(z, labels)
    assert full.shape == (3, nc, size, size)
    assert full.abs().max() <= 1.0
    for k in range(gen.num_blocks):
        h = gen.forward_blocks(z, 0, k, labels)
        torch.testing.assert_close(gen.forward_from(k, h, labels), full)


def test_bad_generator_arguments() -> None:
    with pytest.raises(ValueError, match=r"image_size must be 4 \* 2\*\*k"):
        DCGANGenerator(image_size=48)
    gen = DCGANGenerator(nz=8, ngf=8, num_classes=3)
    with pytest.raises(ValueError, match="class-conditional"):
        gen(gen.sample_latent(1))


def test_embedded_prior_loads_with_checksum(default_prior) -> None:
    spec = EMBEDDED_PRIORS["mnist32"]
    assert embedded_weights_path().stat().st_size < 5 * 2**20
    assert default_prior.image_shape == (1, 32, 32)
    assert not default_prior.training and not any(p.requires_grad for p in default_prior.parameters())
    images = default_prior(default_prior.sample_latent(64, torch.Generator().manual_seed(0)))
    # a trained digit prior draws mostly dark background with bright strokes, unlike an untrained one
    assert (images < -0.5).float().mean() > 0.6
    assert (images > 0.5).float().mean() > 0.05
    assert len(str(spec["sha256"])) == 64


def test_corrupted_weights_file_is_refused(tmp_path) -> None:
    bad = tmp_path / "mnist32_dcgan.pt"
    shutil.copy(embedded_weights_path(), bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"Checksum mismatch .* corrupted"):
        load_default_prior(weights_path=bad)
    with pytest.raises(FileNotFoundError, match="Weights file not found"):
        load_default_prior(weights_path=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="Unknown embedded prior 'cifar'"):
        load_default_prior("cifar")


def test_untrusted_pickle_refused(tmp_path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"state": {"w": torch.zeros(1)}, "obj": argparse.Namespace(a=1)}, path)
    with pytest.raises(ValueError, match="trust_checkpoint=True"):
        load_state_dict_file(path, key="state")
    assert set(load_state_dict_file(path, key="state", trust_checkpoint=True)) == {"w"}
    torch.save({"other": {}}, path)
    with pytest.raises(ValueError, match=r"no entry 'netG_state_dict' \(found: \['other'\]\)"):
        load_state_dict_file(path, key="netG_state_dict")


def test_strict_loading_names_keys() -> None:
    gen = DCGANGenerator(nz=8, ngf=8)
    state = gen.state_dict()
    state["extra.weight"] = state.pop("main.0.weight")
    with pytest.raises(ValueError, match=r"missing keys \['main.0.weight'\], unexpected keys \['extra.weight'\]"):
        load_strict(gen, state, "test")
    other = DCGANGenerator(nz=8, ngf=16).state_dict()
    with pytest.raises(ValueError, match="shape mismatches"):
        load_strict(gen, other, "test")


def test_face_dcgan_round_trip(tmp_path) -> None:
    source = DCGANGenerator(nz=100, ngf=64, nc=3, image_size=64).eval()
    path = tmp_path / "weights.tar"
    torch.save({"netG_state_dict": source.state_dict()}, path)
    loaded = load_face_dcgan(path)
    z = torch.randn(2, 100, 1, 1)
    torch.testing.assert_close(loaded(z), source(z))
    assert loaded.num_blocks == 5


def test_installed_face_dcgan() -> None:
    if importlib.util.find_spec("gan_face_generate") is None:
        pytest.skip("optional: pip install --no-deps gan-face-generate==1.1.1")
    gen = load_face_dcgan()
    assert gen(gen.sample_latent(1)).shape == (1, 3, 64, 64)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"main.0.weight": [1.0, 2.0]}, r"not a state dict of tensors: main.0.weight \(list\)"),
        ({"main.0.weight": torch.tensor([float("nan")])}, "holds NaN or infinite weights"),
    ],
)
def test_checkpoint_with_foreign_values_or_nan_is_refused(tmp_path, state, message) -> None:
    path = tmp_path / "g.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=message):
        load_state_dict_file(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nz": 64.5}, "nz must be a positive integer, got 64.5"),
        ({"ngf": 0}, "ngf must be a positive integer, got 0"),
        ({"image_size": 32.0}, "image_size must be a positive integer, got 32.0"),
        ({"num_classes": -1}, "num_classes must be a positive integer or None, got -1"),
        ({"num_classes": 3, "embed_dim": True}, "embed_dim must be a positive integer, got True"),
    ],
)
def test_dcgan_sizes_must_be_positive_integers(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        DCGANGenerator(**kwargs)


def test_a_generator_without_weights_or_buffers_is_on_the_cpu() -> None:
    class Identity(LayeredGenerator):
        num_blocks, image_shape = 1, (1, 2, 2)

        def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
            return torch.zeros(n, 1, 2, 2)

        def forward_blocks(self, h, start, stop, labels=None):
            return h

    assert Identity().device == torch.device("cpu")


class _Declared(LayeredGenerator):
    """A user's prior that declares 1×32×32 images in (-1, 1); what it really generates is set per test."""

    num_blocks, image_shape = 1, (1, 32, 32)

    def __init__(self, size: int = 32, dtype: torch.dtype = torch.float32, output_range=(-1.0, 1.0)) -> None:
        super().__init__()
        self.size, self.dtype, self.output_range = size, dtype, output_range

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, 8, generator=generator)

    def forward_blocks(self, h, start, stop, labels=None):
        return torch.zeros(h.shape[0], 1, self.size, self.size, dtype=self.dtype)


@pytest.mark.parametrize(
    ("prior", "message"),
    [
        (_Declared(size=16), r"declares image_shape \(1, 32, 32\) but generates shape \(2, 1, 16, 16\)"),
        (_Declared(dtype=torch.float64), r"generates shape \(2, 1, 32, 32\), torch\.float64"),
        (_Declared(output_range=(0.0, 0.0)), r"output_range must be \(low, high\) with finite low < high"),
    ],
)
def test_a_prior_is_checked_against_what_it_declares(lenet_clf, heldout, prior, message) -> None:
    from art_gifd import GIFDAttack, client_gradients

    grads = client_gradients(lenet_clf, heldout[0][:1], heldout[1][:1])
    with pytest.raises(ValueError, match=message):
        GIFDAttack(lenet_clf, prior, max_stage=1, steps_per_stage=1, num_restarts=1, verbose=False).infer(grads)


@pytest.mark.parametrize("truncation", [0, 1.5])
def test_prior_table_truncation_is_reported_under_its_key(tmp_path, truncation) -> None:
    (tmp_path / "g.pt").write_bytes(b"")
    text = f'type = "stylegan2"\nweights = "g.pt"\nsize = 32\ntruncation = {truncation}\n'
    check = Checker(parse_document(text, "toml"), tmp_path)
    assert read_prior_spec(check, check.document.data, ("priors", "p")) is None
    assert [(p.key, p.message) for p in check.problems] == [
        ("priors.p.truncation", f"must lie in (0, 1], got {truncation}.")
    ]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{not json", r"config\.json' is not a JSON file \(Expecting"),
        ("[1, 2]", r"config\.json' is not a BigGAN config"),
        ('{"layers": []}', r"BigGAN config: layers must be a non-empty list of \[upsample, in, out\] triples"),
        ('{"layers": [[true, 16]]}', r"BigGAN config: layers .* triples \(in, out >= 1\): \[\[True, 16\]\]"),
        ('{"z_dim": -1}', r"BigGAN config: z_dim must be a positive integer, got -1"),
    ],
)
def test_a_bad_biggan_config_names_its_file(tmp_path, config, message) -> None:
    pytest.importorskip("pytorch_pretrained_biggan")
    from art_gifd.priors.biggan import load_biggan

    (tmp_path / "config.json").write_text(config, encoding="utf-8")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=message):
        load_biggan(tmp_path)
    with pytest.raises(ValueError, match=r"truncation must lie in \(0, 1\], got 0"):
        load_biggan(tmp_path, truncation=0)
