"""Layered generators: block composition, the embedded prior's checksum, safe and strict checkpoint loading."""

from __future__ import annotations

import argparse
import importlib.util
import shutil

import numpy as np
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


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", r"is not a PyTorch checkpoint: the file is empty"),
        ("text", r"is not a PyTorch checkpoint: the file is neither a zip archive nor a pickle"),
        ("truncated", r"damaged or truncated"),
        ("torchscript", r"is a TorchScript archive, not a state dict"),
    ],
)
def test_unreadable_checkpoint_files_are_named_for_what_they_are(tmp_path, kind, message) -> None:
    path = tmp_path / "g.pt"
    layer = torch.nn.Linear(2, 2)
    if kind == "text":
        path.write_bytes(b"<html>not found</html>")  # e.g. an error page saved under the checkpoint's name
    elif kind == "truncated":
        torch.save(layer.state_dict(), path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "torchscript":
        torch.jit.save(torch.jit.script(layer), path)
    else:
        path.write_bytes(b"")
    with pytest.raises(ValueError, match=message) as caught:
        load_state_dict_file(path)
    assert "weights_only" not in str(caught.value)  # torch's advice to unpickle is never passed on


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


class _UserPrior(LayeredGenerator):
    """A user's two-block generator (8 → 16 → 1×32×32) whose declarations a test gets wrong one at a time."""

    num_blocks = 2
    image_shape = (1, 32, 32)

    def __init__(self, last: str = "tanh", latent: str = "normal", stage: str = "tensor") -> None:
        super().__init__()
        self.first, self.second = torch.nn.Linear(8, 16), torch.nn.Linear(16, 32 * 32)
        self.last, self.latent, self.stage = last, latent, stage

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        generator = None if self.latent == "unseeded" else generator  # the global generator: not the one given
        z = torch.randn(n, 8, generator=generator)
        return z if self.latent in ("normal", "unseeded") else torch.rand(n, 8, generator=generator) * 2 - 1

    def forward_blocks(self, h, start, stop, labels=None):
        if start == 0 and stop >= 1:
            h = torch.relu(self.first(h))
            h = (h, h) if self.stage == "tuple" and stop == 1 else h
        if start <= 1 < stop:
            h = self.second(h[0] if isinstance(h, tuple) else h)
            h = (torch.sigmoid(h) if self.last == "sigmoid" else torch.tanh(h)).reshape(-1, *self.image_shape)
        return h


def test_what_a_user_prior_declares_wrongly_is_named_before_any_search(lenet_clf) -> None:
    from art_gifd import GIFDAttack
    from art_gifd.federated import client_gradients

    x, y = np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32), np.array([3])
    gradient = client_gradients(lenet_clf, x, y)

    def attack(prior: LayeredGenerator, **kwargs):
        return GIFDAttack(lenet_clf, prior, steps_per_stage=1, num_restarts=1, verbose=False, **kwargs)

    attack(_UserPrior()).reconstruct(gradient, y)  # declared as it is: runs
    with pytest.warns(UserWarning, match=r"within one half of output_range=\(-1, 1\)"):  # a Sigmoid left at (-1, 1)
        attack(_UserPrior("sigmoid")).reconstruct(gradient, y)
    tanh_declared_01 = _UserPrior()
    tanh_declared_01.output_range = (0.0, 1.0)
    with pytest.raises(ValueError, match=r"beyond output_range=\(0, 1\): set output_range to its real range"):
        attack(tanh_declared_01).reconstruct(gradient, y)
    with pytest.raises(ValueError, match=r"draws codes of mean norm .* but its latent_constraint 'sphere'"):
        attack(_UserPrior(latent="uniform")).reconstruct(gradient, y)
    attack(_UserPrior(latent="uniform"), latent_constraint="none").reconstruct(gradient, y)  # the user's choice
    with pytest.raises(ValueError, match=r"sample_latent draws other codes from two equally seeded generators"):
        attack(_UserPrior(latent="unseeded")).reconstruct(gradient, y)
    with pytest.raises(ValueError, match=r"forward_blocks\(h, 0, 1\) returns a tuple: a stage must be one floating"):
        attack(_UserPrior(stage="tuple")).reconstruct(gradient, y)
    for attribute, value, message in (
        ("num_blocks", 2.0, r"_UserPrior.num_blocks must be a positive integer .* got 2.0"),
        ("default_max_stage", 4, r"_UserPrior.default_max_stage must be None or an integer in \[1, 2\] .* got 4"),
        ("image_shape", (1, 32), r"_UserPrior.image_shape must be \(C, H, W\)"),
        ("latent_constraint", "ball", r"_UserPrior.latent_constraint must be one of"),
    ):
        prior = _UserPrior()
        setattr(prior, attribute, value)
        with pytest.raises(ValueError, match=message):
            attack(prior)
    with pytest.raises(ValueError, match=r"_UserPrior's weights or buffers are torch.float64; .* call prior.float\(\)"):
        attack(_UserPrior().double())


def test_a_checkpoint_rewritten_at_the_same_path_is_loaded_again(tmp_path) -> None:
    import os

    from art_gifd.priors.registry import load_prior

    path = tmp_path / "latest.pt"
    spec = {"type": "dcgan", "nz": 8, "ngf": 4, "nc": 1, "image_size": 32, "weights": str(path)}
    first = DCGANGenerator(nz=8, ngf=4, nc=1, image_size=32)
    torch.save(first.state_dict(), path)
    assert load_prior(spec, "cpu") is load_prior(spec, "cpu")  # one load per process while the file is unchanged
    loaded = load_prior(spec, "cpu")
    retrained = DCGANGenerator(nz=8, ngf=4, nc=1, image_size=32)
    with torch.no_grad():
        for p in retrained.parameters():
            p.add_(1.0)
    torch.save(retrained.state_dict(), path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # as a later save on a coarse clock
    again = load_prior(spec, "cpu")
    assert again is not loaded
    assert all(
        torch.equal(a, b) for a, b in zip(again.state_dict().values(), retrained.state_dict().values(), strict=True)
    )


def test_decoys_and_a_default_prior_take_what_the_constructor_takes(lenet_clf) -> None:
    from art_gifd import GIFDAttack

    attack = GIFDAttack(lenet_clf, load_default_prior("mnist32-conditional"), verbose=False)
    assert attack.decoys(2, 0, generator_labels=[3, np.int64(4)]).shape == (2, 1, 32, 32)
    for args, message in (
        ((2, 0, [3, 12]), r"decoys generator class must be an integer in \[0, 9\], got 12"),
        ((2, 0, [3, 1.5]), r"decoys generator class must be an integer in \[0, 9\], got 1.5"),
        ((2, 0, [3]), "1 generator classes for 2 images"),
        ((0, 0), "decoys count must be a positive integer, got 0"),
        ((2, None), r"decoys seed must be an integer in \[0, "),
    ):
        with pytest.raises(ValueError, match=message):
            attack.decoys(*args)
    unconditional = GIFDAttack(lenet_clf, load_default_prior(), verbose=False)
    with pytest.raises(ValueError, match="generator_labels were given but the prior is not class-conditional"):
        unconditional.decoys(2, 0, [1, 2])
    attack.set_params(prior=None)  # as GIFDAttack(clf, prior=None): the embedded default
    assert attack.prior.num_classes is None and attack.prior.image_shape == (1, 32, 32)


def test_gias_names_a_prior_it_cannot_run_per_image_before_any_search(lenet_clf) -> None:
    from art_gifd.attacks import GIASAttack
    from art_gifd.federated import client_gradients

    class Checked(_UserPrior):
        def forward_blocks(self, h, start, stop, labels=None):
            if not torch.isfinite(h).all():  # data-dependent control flow, which vmap cannot trace
                raise ValueError("non-finite input")
            return super().forward_blocks(h, start, stop, labels)

    x, y = np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32), np.array([3])
    attack = GIASAttack(lenet_clf, Checked(), steps_per_stage=2, num_restarts=1, verbose=False)
    searched = []
    attack._search_together = lambda searches, bar: searched.append(searches)
    with pytest.raises(ValueError, match=r"cannot run there \(vmap: .*data-dependent control flow\): remove"):
        attack.reconstruct(client_gradients(lenet_clf, x, y), y)
    assert searched == []  # refused before the latent stage ran
