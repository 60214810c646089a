"""
BigGAN-deep (Brock et al. 2019) from the ``pytorch-pretrained-biggan`` package, as a class-conditional layered prior.

The package is an optional dependency (``pip install pytorch-pretrained-biggan``). Weights are read from a local
directory holding ``config.json`` and ``pytorch_model.bin`` (the names that package uses); nothing is downloaded, and
the state dict is loaded strictly (the package's own ``from_pretrained`` ignores missing keys).

**Stages.** Stage 0 is the noise vector ``z`` (``z_dim``); the class enters through the conditioning vector
``[z, embedding(one_hot(label))]`` that every conditional batch norm reads. Block 1 is the linear map to the 4×4
feature; every further block is one residual block of the generator (a self-attention layer is part of the block
that follows it); the last block also holds the output head (batch norm, ReLU, to-RGB convolution, tanh). The state
after ``k >= 1`` blocks is packed into **one flat tensor per sample**: ``[feature (C × R × R), conditioning vector]``
(the GIFD core optimises one tensor per stage), so feature stages search the conditioning vector too, within the
same l1 ball.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from art_gifd.priors.base import LayeredGenerator
from art_gifd.priors.checkpoints import load_state_dict_file, load_strict, replaced_initialisation
from art_gifd.validation import check_integer, check_number

if TYPE_CHECKING:
    from pytorch_pretrained_biggan import BigGANConfig

INSTALL_HINT = "pip install pytorch-pretrained-biggan"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "pytorch_model.bin"
#: Bound of the truncated normal that BigGAN's noise is drawn from (before scaling by the truncation).
TRUNCATION_BOUND = 2.0


def _biggan_module() -> Any:
    """Import ``pytorch_pretrained_biggan`` or explain how to install it."""
    try:
        import pytorch_pretrained_biggan
    except ImportError as err:
        raise ImportError(
            f"The BigGAN prior needs the optional package 'pytorch-pretrained-biggan': run '{INSTALL_HINT}'."
        ) from err
    return pytorch_pretrained_biggan


def _check_config(config: BigGANConfig) -> None:
    """The config's sizes are positive integers and its layers ``[upsample, in, out]`` triples (before any is built)."""
    for name in ("output_dim", "z_dim", "class_embed_dim", "channel_width", "num_classes", "n_stats"):
        check_integer(name, getattr(config, name, None), 1)
    layers = getattr(config, "layers", None)
    triples = isinstance(layers, list | tuple) and all(
        isinstance(layer, list | tuple) and len(layer) == 3 and all(isinstance(v, int) for v in layer)
        for layer in layers
    )
    if not triples or not layers or any(v < 1 for layer in layers for v in layer[1:]):
        raise ValueError(f"layers must be a non-empty list of [upsample, in, out] triples (in, out >= 1): {layers!r}.")
    check_integer("attention_layer_position", getattr(config, "attention_layer_position", None), 0, len(layers))


class BigGANGenerator(LayeredGenerator):
    """
    A ``pytorch_pretrained_biggan.BigGAN`` split into blocks (see the module documentation for the stage layout).

    :attr:`biggan` is the wrapped package module; its state dict has the package's key layout.
    """

    def __init__(
        self, config: BigGANConfig | dict[str, Any], truncation: float = 0.4, training_domain: str = "ImageNet"
    ) -> None:
        """
        :param config: A ``BigGANConfig`` or its dict (the content of ``config.json``).
        :param truncation: Truncation in ``(0, 1]``: ``z`` is a normal truncated to ``[-2, 2]`` times ``truncation``,
                           and the batch norms use the statistics recorded for it.
        :param training_domain: Description of the training data (stated in reports).
        """
        super().__init__()
        package = _biggan_module()
        if isinstance(config, dict):
            config = package.BigGANConfig.from_dict(config)
        _check_config(config)
        truncation = check_number("truncation", truncation, 0.0, 1.0, closed="right")
        self.biggan = package.BigGAN(config)
        self.config = config
        self.truncation = float(truncation)
        self.training_domain = training_domain
        # z is a truncated normal: keep a searched z inside the support it was drawn from.
        self.latent_constraint = "box"
        self.latent_bound = TRUNCATION_BOUND * self.truncation
        self.num_classes = int(config.num_classes)
        self.z_dim = int(config.z_dim)
        self.cond_dim = 2 * self.z_dim

        # group the generator's layers into blocks: an attention layer joins the residual block after it
        self._groups: list[list[tuple[torch.nn.Module, bool]]] = [[]]  # (layer, is it a conditional block)
        for layer in self.biggan.generator.layers:
            conditional = isinstance(layer, package.model.GenBlock)
            self._groups[-1].append((layer, conditional))
            if conditional:
                self._groups.append([])
        self._groups.pop()
        ch, res = int(config.channel_width), 4
        self._feature_shapes = [(16 * ch, res, res)]
        for up, _, out in config.layers:
            res = res * 2 if up else res
            self._feature_shapes.append((ch * out, res, res))
        if res != int(config.output_dim) or ch < 3 or config.layers[0][1] != 16 or config.layers[-1][2] != 1:
            raise ValueError(
                f"Inconsistent BigGAN config: the layers must start at 16 and end at 1 channel_width multiples (got "
                f"{config.layers[0][1]} and {config.layers[-1][2]}), channel_width must be >= 3 (got {ch}), and they "
                f"generate {res}x{res} images while output_dim is {config.output_dim}."
            )
        self.image_shape = (3, res, res)
        self.num_blocks = 1 + len(self._groups)
        self.default_max_stage = min(9, self.num_blocks)  # the reference searches 9 blocks of BigGAN-deep

    def stage_size(self, stage: int) -> int:
        """Per-sample size of the stage-``stage`` tensor (``z_dim`` for stage 0, feature + conditioning after)."""
        if stage == 0:
            return self.z_dim
        return math.prod(self._feature_shapes[stage - 1]) + self.cond_dim

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``z`` from a standard normal truncated to ``[-2, 2]``, scaled by :attr:`truncation`."""
        z = torch.randn(n, self.z_dim, device=self.device, generator=generator)
        outside = z.abs() > TRUNCATION_BOUND
        while outside.any():
            z = torch.where(outside, torch.randn(z.shape, device=z.device, generator=generator), z)
            outside = z.abs() > TRUNCATION_BOUND
        return z * self.truncation

    def forward_blocks(
        self, h: torch.Tensor, start: int, stop: int, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Apply blocks ``start + 1 … stop``: returns the packed stage-``stop`` tensor, or images at
        ``stop == num_blocks``. ``labels`` (ImageNet class indices) are needed when ``start == 0``.
        """
        if not 0 <= start <= stop <= self.num_blocks:
            raise ValueError(f"Need 0 <= start <= stop <= {self.num_blocks}, got start={start}, stop={stop}.")
        if start == stop:
            return h
        if h.dim() != 2 or h.shape[1] != self.stage_size(start):
            raise ValueError(
                f"A stage-{start} tensor of this BigGAN has shape (N, {self.stage_size(start)}), got {tuple(h.shape)}."
            )
        gen = self.biggan.generator
        if start == 0:
            if labels is None:
                raise ValueError("BigGAN is class-conditional: pass one generator class per sample.")
            one_hot = F.one_hot(labels.to(h.device).long(), self.num_classes).to(h.dtype)
            cond = torch.cat([h, self.biggan.embeddings(one_hot)], dim=1)
            x = gen.gen_z(cond).view(-1, 4, 4, self._feature_shapes[0][0]).permute(0, 3, 1, 2)
        else:
            size = math.prod(self._feature_shapes[start - 1])
            x = h[:, :size].reshape(h.shape[0], *self._feature_shapes[start - 1])
            cond = h[:, size:]
        for group in self._groups[max(start, 1) - 1 : stop - 1]:
            for layer, conditional in group:
                x = layer(x, cond, self.truncation) if conditional else layer(x)
        if stop < self.num_blocks:
            return torch.cat([x.reshape(x.shape[0], -1), cond], dim=1)
        x = gen.relu(gen.bn(x, self.truncation))
        return torch.tanh(gen.conv_to_rgb(x)[:, :3])

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "z_dim": self.z_dim, "truncation": self.truncation}


def load_biggan(
    directory: str | Path,
    truncation: float = 0.4,
    sha256: str | None = None,
    trust_checkpoint: bool = False,
    training_domain: str = "ImageNet",
    device: str | torch.device = "cpu",
) -> BigGANGenerator:
    """
    Load a BigGAN-deep generator from a local directory, strictly.

    :param directory: Directory holding ``config.json`` and ``pytorch_model.bin`` (e.g. the files the package names
                      ``biggan-deep-128-config.json`` and ``biggan-deep-128-pytorch_model.bin``, renamed).
    :param truncation: Truncation in ``(0, 1]``.
    :param sha256: Expected SHA-256 of ``pytorch_model.bin``.
    :param trust_checkpoint: Allow a full pickle load for a file from a source you trust.
    :param training_domain: Description of the training data (stated in reports).
    :param device: Device to load it on.
    :return: The frozen generator in eval mode.
    :raises FileNotFoundError: If a file is missing (both expected names are given).
    :raises ValueError: If ``truncation`` is out of range, ``config.json`` is not a BigGAN config (the file is
                        named), or keys are missing, unexpected or mis-shaped (they are named).
    """
    # Checked before the config is read, so that the config's own errors below can be put down to its file.
    check_number("truncation", truncation, 0.0, 1.0, closed="right")
    directory = Path(directory)
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"BigGAN directory '{directory}' lacks {missing}: it must hold '{CONFIG_NAME}' and '{WEIGHTS_NAME}' "
            "(the pytorch-pretrained-biggan files, renamed). Nothing is downloaded: copy them there."
        )
    config_path = directory / CONFIG_NAME
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"'{config_path}' is not a JSON file ({err}): copy the package's BigGAN config there."
        ) from None
    try:
        with replaced_initialisation():
            generator = BigGANGenerator(config, truncation=truncation, training_domain=training_domain)
    except (TypeError, AttributeError, KeyError, ValueError) as err:
        raise ValueError(f"'{config_path}' is not a BigGAN config: {err}") from None
    path = directory / WEIGHTS_NAME
    state = load_state_dict_file(path, sha256=sha256, trust_checkpoint=trust_checkpoint)
    load_strict(generator.biggan, state, f"'{path}' (BigGAN, config '{config_path}')")
    return generator.to(device).freeze()
