"""
StyleGAN2 (Karras et al. 2020) in plain PyTorch, as a layered prior, loading checkpoints of the widely used PyTorch
port (rosinality/stylegan2-pytorch, ``g_ema`` state dict).

No custom CUDA ops: the up-sampling FIR filter (``upfirdn2d``) is a zero insertion followed by a depthwise
``conv2d``, and the fused leaky ReLU is ``leaky_relu(x + bias) * sqrt(2)``; the module runs on any device.

**Stages.** Stage 0 is the ``w+`` code; block 1 is the constant input, the first styled convolution and the first
to-RGB layer (4×4); every further block doubles the resolution (two styled convolutions and a to-RGB skip). The state
after ``k`` blocks is everything the remaining blocks consume, packed into **one flat tensor per sample** (the GIFD
core optimises one tensor per stage):

* stage 0: ``[w+ (n_latent × style_dim), noise maps of every layer]``;
* stage ``k >= 1``: ``[feature (C × R × R), skip image (3 × R × R), w codes of the remaining layers, noise maps of the
  remaining layers]``.

:meth:`StyleGAN2Generator.pack` and :meth:`StyleGAN2Generator.unpack` convert between the flat tensor and its parts.
Everything in the stage tensor is searched: at feature stages the l1 ball bounds the deviation of the whole packed
state (feature, skip, remaining ``w`` codes and noise), as intermediate-layer optimisation does for StyleGAN2.

**Noise.** The noise maps are per-sample state inside the stage tensor, drawn afresh by every call of
:meth:`StyleGAN2Generator.sample_latent` (so every restart gets its own noise, from the caller's random generator).
No module buffer is read or written during a search, so nothing leaks between restarts or attacks. The checkpoint's
stored noise maps (``noises.noise_N``) are loaded (strict key checking) and used only with ``noise="stored"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from art_gifd.priors.base import LayeredGenerator
from art_gifd.priors.checkpoints import load_state_dict_file, load_strict, replaced_initialisation
from art_gifd.validation import check_integer, check_number

#: The FIR filter of StyleGAN2's up-sampling (outer product with itself, normalised).
BLUR_KERNEL = (1.0, 3.0, 3.0, 1.0)
NOISE_MODES = ("random", "stored")
SQRT2 = math.sqrt(2.0)


def channel_widths(channel_multiplier: int = 2) -> dict[int, int]:
    """Channels of each resolution, as in the reference StyleGAN2 config F (512 up to 32×32, then halving)."""
    cm = channel_multiplier
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}


def make_kernel(taps: Sequence[float]) -> torch.Tensor:
    """2-D separable FIR kernel from 1-D taps, normalised to sum 1."""
    k = torch.as_tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def fir_filter(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """
    Pad ``x`` by ``pad`` (before, after) on both spatial axes and convolve each channel with ``kernel``.

    This is ``upfirdn2d(x, kernel, up=1, down=1, pad=pad)`` of the reference code, for non-negative pads.
    """
    c = x.shape[1]
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).expand(c, 1, *kernel.shape)
    return F.conv2d(F.pad(x, [pad[0], pad[1], pad[0], pad[1]]), weight, groups=c)


def upsample_2x(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """``upfirdn2d(x, kernel, up=2, pad=pad)``: insert a zero after every pixel, then :func:`fir_filter`."""
    n, c, h, w = x.shape
    zeros_inserted = F.pad(x.reshape(n, c, h, 1, w, 1), [0, 1, 0, 0, 0, 1]).reshape(n, c, 2 * h, 2 * w)
    return fir_filter(zeros_inserted, kernel, pad)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weights scaled at run time), optional fused leaky ReLU."""

    def __init__(
        self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activation: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale)
        out = out + self.bias * self.lr_mul
        return F.leaky_relu(out, 0.2) * SQRT2 if self.activation else out


class PixelNorm(nn.Module):
    """Normalise each latent vector to unit root mean square."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class Blur(nn.Module):
    """The FIR low-pass filter applied after a transposed (up-sampling) convolution."""

    def __init__(self, pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(BLUR_KERNEL) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fir_filter(x, self.kernel, self.pad)


class Upsample(nn.Module):
    """2× up-sampling of the to-RGB skip image (zero insertion + FIR filter)."""

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(BLUR_KERNEL) * factor**2)
        p = len(BLUR_KERNEL) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_2x(x, self.kernel, self.pad)


class ModulatedConv2d(nn.Module):
    """Convolution whose weights are scaled per sample by the style (modulation) and optionally demodulated."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int, demodulate: bool = True, upsample: bool = False
    ) -> None:
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size**2)
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            p = (len(BLUR_KERNEL) - 2) - (kernel_size - 1)
            self.blur = Blur(((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        weight = self.scale * self.weight * self.modulation(style).view(n, 1, self.in_ch, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + 1e-8).view(n, self.out_ch, 1, 1, 1)
        x = x.reshape(1, n * self.in_ch, h, w)  # one grouped convolution: each sample has its own weights
        k = self.kernel_size
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(n * self.in_ch, self.out_ch, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=n)
            return self.blur(out.reshape(n, self.out_ch, *out.shape[2:]))
        out = F.conv2d(x, weight.reshape(n * self.out_ch, self.in_ch, k, k), padding=k // 2, groups=n)
        return out.reshape(n, self.out_ch, *out.shape[2:])


class NoiseInjection(nn.Module):
    """Adds a noise map scaled by a learned strength."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    """``leaky_relu(x + bias, 0.2) * sqrt(2)`` with a learned per-channel bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias.view(1, -1, 1, 1), 0.2) * SQRT2


class StyledConv(nn.Module):
    """Modulated 3×3 convolution, noise injection and activation."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """Modulated 1×1 convolution to RGB, added to the up-sampled skip image of the previous resolution."""

    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        return out if skip is None else out + self.upsample(skip)


class ConstantInput(nn.Module):
    """The learned 4×4 constant the synthesis network starts from."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, n: int) -> torch.Tensor:
        return self.input.expand(n, -1, -1, -1)


class StyleGAN2Generator(LayeredGenerator):
    """
    StyleGAN2 generator (config F, skip architecture) with the module layout of the rosinality PyTorch port.

    ``num_blocks = log2(size) - 1`` (one block per resolution 4, 8, …, size). See the module documentation for how
    the state of each stage (feature, skip image, remaining ``w`` codes and noise) is packed into one tensor.
    The stage-0 tensor packs ``w+`` (the mapping network's output, not a normal code) with noise maps, so no sphere
    or box describes it: ``latent_constraint`` is ``"none"``.
    """

    latent_constraint = "none"
    output_bounded = False

    def __init__(
        self,
        size: int,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        channels: dict[int, int] | None = None,
        truncation: float = 1.0,
        noise: str = "random",
        training_domain: str = "unknown",
    ) -> None:
        """
        :param size: Output resolution, a power of two ``>= 8``.
        :param style_dim: Dimension of ``z`` and ``w``.
        :param n_mlp: Layers of the mapping network.
        :param channel_multiplier: Channel multiplier of the reference config (2 for config F).
        :param channels: Channels per resolution, overriding the reference widths (e.g. a small test network).
        :param truncation: ``psi`` of the truncation trick in :meth:`sample_latent` (``1`` = none): ``w`` is pulled
                           towards the mean ``w`` by ``w_mean + psi (w - w_mean)``.
        :param noise: ``"random"``: fresh noise maps per sample at every :meth:`sample_latent`; ``"stored"``: the
                      checkpoint's fixed noise maps (``noises.noise_N``) for every sample.
        :param training_domain: Description of the training data (stated in reports).
        """
        super().__init__()
        size = check_integer("size", size, 8)
        style_dim = check_integer("style_dim", style_dim, 1)
        n_mlp = check_integer("n_mlp", n_mlp, 1)
        channel_multiplier = check_integer("channel_multiplier", channel_multiplier, 1)
        log_size = math.log2(size)
        if log_size < 3 or not float(log_size).is_integer():
            raise ValueError(f"size must be a power of two >= 8 (the checkpoint's resolution), got {size}.")
        truncation = check_number("truncation", truncation, 0.0, 1.0, closed="right")
        if noise not in NOISE_MODES:
            raise ValueError(f"Unknown noise mode '{noise}': use one of {NOISE_MODES}.")
        self.log_size = int(log_size)
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.truncation, self.noise_mode = truncation, noise
        self.widths = dict(channels) if channels is not None else channel_widths(channel_multiplier)
        missing = [2**i for i in range(2, self.log_size + 1) if 2**i not in self.widths]
        if missing:
            raise ValueError(f"channels has no width for resolutions {missing}.")
        self.image_shape = (3, size, size)
        self.training_domain = training_domain
        self.num_blocks = self.log_size - 1
        self.default_max_stage = min(4, self.num_blocks)  # the reference searches 4 stages of StyleGAN2
        self.n_latent = self.log_size * 2 - 2
        self.num_layers = (self.log_size - 2) * 2 + 1

        self.style = nn.Sequential(
            PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=0.01, activation=True) for _ in range(n_mlp)]
        )
        self.input = ConstantInput(self.widths[4])
        self.conv1 = StyledConv(self.widths[4], self.widths[4], style_dim)
        self.to_rgb1 = ToRGB(self.widths[4], style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer in range(self.num_layers):
            self.noises.register_buffer(f"noise_{layer}", torch.randn(1, *self._noise_shape(layer)))
        in_ch = self.widths[4]
        for i in range(3, self.log_size + 1):
            out_ch = self.widths[2**i]
            self.convs.append(StyledConv(in_ch, out_ch, style_dim, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, style_dim))
            self.to_rgbs.append(ToRGB(out_ch, style_dim))
            in_ch = out_ch

    # -- the packed stage state -------------------------------------------------------------------------------------

    @staticmethod
    def _noise_shape(layer: int) -> tuple[int, int, int]:
        """Per-sample shape of layer ``layer``'s noise map (layer 0 is 4×4, then two layers per resolution)."""
        res = 2 ** ((layer + 5) // 2)
        return (1, res, res)

    def stage_parts(self, stage: int) -> list[tuple[int, ...]]:
        """
        Per-sample shapes of the parts packed in the stage-``stage`` tensor, in packing order.

        Stage 0: ``w+``, then one noise map per layer. Stage ``k >= 1``: feature, skip image, remaining ``w`` codes,
        remaining noise maps.
        """
        if not 0 <= stage <= self.num_blocks:
            raise ValueError(f"stage must lie in [0, {self.num_blocks}], got {stage}.")
        if stage == 0:
            return [(self.n_latent, self.style_dim)] + [self._noise_shape(i) for i in range(self.num_layers)]
        res = 2 ** (stage + 1)
        first = 2 * stage - 1  # the first w code / noise layer not consumed yet
        return [
            (self.widths[res], res, res),
            (3, res, res),
            (self.n_latent - first, self.style_dim),
            *[self._noise_shape(i) for i in range(first, self.num_layers)],
        ]

    def pack(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Flatten the parts of a stage (each ``(N, …)``) into one tensor ``(N, D)``."""
        return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)

    def unpack(self, h: torch.Tensor, stage: int) -> list[torch.Tensor]:
        """Split a stage tensor ``(N, D)`` into its parts (see :meth:`stage_parts`)."""
        shapes = self.stage_parts(stage)
        sizes = [math.prod(s) for s in shapes]
        if h.dim() != 2 or h.shape[1] != sum(sizes):
            raise ValueError(
                f"A stage-{stage} tensor of this StyleGAN2 has shape (N, {sum(sizes)}), got {tuple(h.shape)}."
            )
        return [p.reshape(h.shape[0], *s) for p, s in zip(torch.split(h, sizes, dim=1), shapes, strict=True)]

    # -- latent sampling --------------------------------------------------------------------------------------------

    def mean_w(self, n: int = 4096) -> torch.Tensor:
        """Mean ``w`` of ``n`` mapped standard-normal ``z`` (fixed seed), the centre of the truncation trick."""
        rng = torch.Generator(device=self.device).manual_seed(0)
        with torch.no_grad():
            z = torch.randn(n, self.style_dim, device=self.device, generator=rng, dtype=self.input.input.dtype)
            return self.style(z).mean(dim=0)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """
        Draw ``n`` stage-0 tensors: ``z ~ N(0, I)`` mapped to ``w`` (truncated if ``truncation < 1``) and repeated to
        ``w+``, packed with noise maps drawn here (``noise="random"``) or the stored ones (``noise="stored"``).
        """
        dtype = self.input.input.dtype
        with torch.no_grad():
            w = self.style(torch.randn(n, self.style_dim, device=self.device, generator=generator, dtype=dtype))
            if self.truncation < 1.0:
                centre = self.mean_w()
                w = centre + self.truncation * (w - centre)
            parts = [w.unsqueeze(1).repeat(1, self.n_latent, 1)]
            for layer in range(self.num_layers):
                shape = self._noise_shape(layer)
                if self.noise_mode == "stored":
                    parts.append(getattr(self.noises, f"noise_{layer}").expand(n, *shape))
                else:
                    parts.append(torch.randn(n, *shape, device=self.device, generator=generator, dtype=dtype))
        return self.pack(parts)

    # -- synthesis --------------------------------------------------------------------------------------------------

    def forward_blocks(
        self, h: torch.Tensor, start: int, stop: int, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Apply blocks ``start + 1 … stop``; returns the packed stage-``stop`` tensor, or images when
        ``stop == num_blocks``. ``labels`` is ignored (unconditional).
        """
        if not 0 <= start <= stop <= self.num_blocks:
            raise ValueError(f"Need 0 <= start <= stop <= {self.num_blocks}, got start={start}, stop={stop}.")
        if start == stop:
            return h
        parts = self.unpack(h, start)
        if start == 0:
            w, noise = parts[0], parts[1:]
            out = self.conv1(self.input(h.shape[0]), w[:, 0], noise[0])
            skip = self.to_rgb1(out, w[:, 1])
            w, noise = w[:, 1:], noise[1:]  # w code 1 is shared by to_rgb1 and the next block's first convolution
        else:
            out, skip, w, noise = parts[0], parts[1], parts[2], parts[3:]
        for block in range(max(start, 1), stop):  # block index b >= 1 uses convs 2b-2, 2b-1 and to_rgbs b-1
            out = self.convs[2 * block - 2](out, w[:, 0], noise[0])
            out = self.convs[2 * block - 1](out, w[:, 1], noise[1])
            skip = self.to_rgbs[block - 1](out, w[:, 2], skip)
            w, noise = w[:, 2:], noise[2:]
        if stop == self.num_blocks:
            return skip
        return self.pack([out, skip, w, *noise])

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "style_dim": self.style_dim,
            "n_mlp": self.n_mlp,
            "truncation": self.truncation,
            "noise": self.noise_mode,
        }


def load_stylegan2(
    path: str | Path,
    size: int,
    style_dim: int = 512,
    n_mlp: int = 8,
    channel_multiplier: int = 2,
    key: str | None = "g_ema",
    channels: dict[int, int] | None = None,
    truncation: float = 1.0,
    noise: str = "random",
    sha256: str | None = None,
    trust_checkpoint: bool = False,
    training_domain: str = "unknown",
    device: str | torch.device = "cpu",
) -> StyleGAN2Generator:
    """
    Load a StyleGAN2 generator from a checkpoint of the rosinality PyTorch port, strictly.

    The usual file (e.g. ``stylegan2-ffhq-config-f.pt``) is a dict with entries ``g``, ``d``, ``g_ema``, ``latent_avg``;
    the generator to use is ``g_ema``. Keys look like ``style.1.weight``, ``input.input``, ``conv1.conv.weight``,
    ``convs.0.conv.modulation.weight``, ``to_rgbs.0.upsample.kernel``, ``noises.noise_0``.

    :param path: Checkpoint path (loaded with ``weights_only=True``).
    :param size: Resolution of the checkpoint (e.g. 256 or 1024).
    :param style_dim: Dimension of ``z`` and ``w`` (512 for the released models).
    :param n_mlp: Layers of the mapping network (8 for the released models).
    :param channel_multiplier: 2 for config F.
    :param key: Entry holding the generator state dict (``None``: the file is the state dict).
    :param channels: Channels per resolution, overriding the reference widths.
    :param truncation: Truncation ``psi`` used by :meth:`StyleGAN2Generator.sample_latent`.
    :param noise: ``"random"`` (fresh noise per sample and restart) or ``"stored"`` (the checkpoint's noise maps).
    :param sha256: Expected SHA-256 of the file.
    :param trust_checkpoint: Allow a full pickle load for a file from a source you trust.
    :param training_domain: Description of the training data (stated in reports).
    :param device: Device to load it on.
    :return: The frozen generator in eval mode.
    :raises ValueError: If keys are missing, unexpected or mis-shaped (they are named).
    """
    path = Path(path)
    with replaced_initialisation():
        generator = StyleGAN2Generator(
            size,
            style_dim,
            n_mlp,
            channel_multiplier,
            channels=channels,
            truncation=truncation,
            noise=noise,
            training_domain=training_domain,
        )
    state = load_state_dict_file(path, key=key, sha256=sha256, trust_checkpoint=trust_checkpoint)
    load_strict(generator, state, f"'{path}' (StyleGAN2, size={size}, style_dim={style_dim}, n_mlp={n_mlp})")
    return generator.to(device).freeze()
