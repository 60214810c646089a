"""
DCGAN generator (Radford et al. 2016) as a layered prior.

The module layout (``main`` = ConvTranspose/BatchNorm/ReLU groups ending in ConvTranspose/Tanh) is the standard
PyTorch DCGAN layout, so checkpoints of that layout (e.g. the face DCGAN of ``gan-face-generate``) load strictly.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from art_gifd.priors.base import LayeredGenerator
from art_gifd.validation import check_integer

logger = logging.getLogger(__name__)


class DCGANGenerator(LayeredGenerator):
    """
    DCGAN generator for square images of side ``4 * 2**k``, split into one block per resolution.

    Block 1 maps the latent ``(nz, 1, 1)`` to a ``4×4`` feature; every further block doubles the resolution; the last
    block outputs the image through ``tanh``. A class-conditional variant concatenates a learned class embedding to
    the latent code.
    """

    def __init__(
        self,
        nz: int = 64,
        ngf: int = 64,
        nc: int = 1,
        image_size: int = 32,
        num_classes: int | None = None,
        embed_dim: int = 16,
        training_domain: str = "unknown",
    ) -> None:
        """
        :param nz: Latent dimension.
        :param ngf: Width of the last hidden block; earlier blocks double it.
        :param nc: Number of image channels.
        :param image_size: Side of the square output image, ``4 * 2**k`` with ``k >= 1``.
        :param num_classes: Number of classes for a class-conditional generator, ``None`` for unconditional.
        :param embed_dim: Size of the class embedding concatenated to the latent code.
        :param training_domain: Description of the training data (stated in reports).
        :raises ValueError: If a size is not a positive integer, or ``image_size`` is not ``4 * 2**k``.
        """
        super().__init__()
        nz, ngf, nc = (check_integer(name, v, 1) for name, v in (("nz", nz), ("ngf", ngf), ("nc", nc)))
        image_size = check_integer("image_size", image_size, 1)
        num_classes = check_integer("num_classes", num_classes, 1, optional=True)
        embed_dim = check_integer("embed_dim", embed_dim, 1)
        n_up = math.log2(image_size / 4) if image_size >= 8 else 0
        if n_up < 1 or not float(n_up).is_integer():
            raise ValueError(f"image_size must be 4 * 2**k with k >= 1 (8, 16, 32, 64, …), got {image_size}.")
        self.nz, self.ngf, self.nc = nz, ngf, nc
        self.num_classes = num_classes
        self.embed_dim = embed_dim if num_classes else 0
        self.image_shape = (nc, image_size, image_size)
        self.training_domain = training_domain
        self.num_blocks = int(n_up) + 1
        self.default_max_stage = self.num_blocks
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None

        layers: list[nn.Module] = []
        in_ch, out_ch = nz + self.embed_dim, ngf * 2 ** (self.num_blocks - 2)
        self._block_ends: list[int] = []
        for block in range(self.num_blocks):
            last = block == self.num_blocks - 1
            stride, pad = (1, 0) if block == 0 else (2, 1)
            if last:
                out_ch = nc
            layers.append(nn.ConvTranspose2d(in_ch, out_ch, 4, stride, pad, bias=False))
            layers.extend([nn.Tanh()] if last else [nn.BatchNorm2d(out_ch), nn.ReLU(True)])
            self._block_ends.append(len(layers))
            in_ch, out_ch = out_ch, out_ch // 2
        self.main = nn.Sequential(*layers)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.nz, 1, 1, device=self.device, generator=generator)

    def forward_blocks(
        self, h: torch.Tensor, start: int, stop: int, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not 0 <= start <= stop <= self.num_blocks:
            raise ValueError(f"Need 0 <= start <= stop <= {self.num_blocks}, got start={start}, stop={stop}.")
        if start == 0 and stop > 0 and self.embed is not None:
            if labels is None:
                raise ValueError("This generator is class-conditional: pass one generator class per sample.")
            emb = self.embed(labels.to(h.device).long()).view(h.shape[0], self.embed_dim, 1, 1)
            h = torch.cat([h, emb], dim=1)
        first = 0 if start == 0 else self._block_ends[start - 1]
        last = 0 if stop == 0 else self._block_ends[stop - 1]
        for layer in self.main[first:last]:
            h = layer(h)
        return h

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "nz": self.nz, "ngf": self.ngf}
