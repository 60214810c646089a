"""
The layered-generator interface that every generative prior implements.

A generator ``G`` is split into blocks ``G = G_n ∘ … ∘ G_1``. *Stage* ``k`` of the GIFD search optimises the input of
block ``k + 1``: stage 0 is the latent code, stage ``k >= 1`` the intermediate feature reached after ``k`` blocks.
"""

from __future__ import annotations

import abc

import torch
from torch import nn

#: Latent constraints a search can apply after every step. ``"sphere"``: each code rescaled to norm ``sqrt(d)``, where
#: a ``d``-dimensional standard normal code concentrates; ``"box"``: clamped to ``±latent_bound``; ``"none"``.
LATENT_CONSTRAINTS = ("sphere", "box", "none")


def project_latent(h: torch.Tensor, constraint: str, bound: float | None = None) -> torch.Tensor:
    """
    Project each latent code (row of ``h``) onto a constraint set of :data:`LATENT_CONSTRAINTS`.

    :param h: Latent codes ``(N, …)``.
    :param constraint: ``"sphere"``, ``"box"`` or ``"none"``.
    :param bound: Half-width of the box (needed for ``"box"``).
    :return: The projected codes, same shape.
    """
    if constraint == "none":
        return h
    if constraint == "sphere":
        flat = h.flatten(1)
        scale = flat.shape[1] ** 0.5 / (flat.norm(dim=1, keepdim=True) + 1e-12)
        return (flat * scale).reshape(h.shape)
    if constraint == "box":
        if bound is None or not bound > 0:
            raise ValueError(f"The 'box' latent constraint needs a positive bound, got {bound!r}.")
        return h.clamp(-bound, bound)
    raise ValueError(f"Unknown latent constraint '{constraint}': use one of {LATENT_CONSTRAINTS}.")


class LayeredGenerator(nn.Module, abc.ABC):
    """
    A pretrained generator split into blocks, so that the search can start from any intermediate feature.

    Subclasses set :attr:`num_blocks`, :attr:`image_shape`, :attr:`output_range`, :attr:`num_classes` and implement
    :meth:`sample_latent` and :meth:`forward_blocks`. Weights are frozen and the module is kept in eval mode.
    """

    #: Number of blocks ``n``; stages ``0 … n - 1`` can be searched.
    num_blocks: int
    #: Shape of one generated image, ``(C, H, W)``.
    image_shape: tuple[int, int, int]
    #: Range of the generator's output pixels, e.g. ``(-1.0, 1.0)`` for a tanh output.
    output_range: tuple[float, float] = (-1.0, 1.0)
    #: Number of classes of a class-conditional generator, ``None`` for an unconditional one.
    num_classes: int | None = None
    #: Number of stages GIFD searches when the attack does not say (``None`` = all blocks).
    default_max_stage: int | None = None
    #: Free-text description of the data the generator was trained on (stated in reports).
    training_domain: str = "unknown"
    #: Constraint that keeps a searched latent code where the prior's latent distribution puts its mass (see
    #: :data:`LATENT_CONSTRAINTS`): ``"sphere"`` for a standard normal latent, ``"box"`` for a truncated one,
    #: ``"none"`` where no simple set describes it (e.g. a StyleGAN2 ``w+`` code packed with noise maps).
    latent_constraint: str = "sphere"
    #: Half-width of the ``"box"`` constraint (the truncation bound of a truncated-normal latent).
    latent_bound: float | None = None
    #: Adam learning rate of GIFD's feature stages with this generator when the attack does not set one (``None``:
    #: the attack's ``learning_rate``). Intermediate features differ in scale between generators, and so does the
    #: step size that suits them.
    feature_learning_rate: float | None = None

    @abc.abstractmethod
    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """
        Draw ``n`` latent codes (the input of block 1) on the module's device.

        :param n: Number of codes.
        :param generator: Random number generator for reproducible draws.
        """

    @abc.abstractmethod
    def forward_blocks(
        self, h: torch.Tensor, start: int, stop: int, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Apply blocks ``start + 1 … stop`` to ``h``, the input of block ``start + 1``.

        :param h: Latent code (``start == 0``) or intermediate feature after ``start`` blocks.
        :param start: Stage whose input ``h`` is, ``0 <= start < num_blocks``.
        :param stop: Number of blocks applied in total afterwards, ``start <= stop <= num_blocks``.
        :param labels: Generator class indices, one per sample, for class-conditional generators.
        """

    @property
    def device(self) -> torch.device:
        """Device of the generator's weights (or buffers); the CPU for a generator that has neither."""
        tensor = next(self.parameters(), None)
        if tensor is None:
            tensor = next(self.buffers(), None)
        return torch.device("cpu") if tensor is None else tensor.device

    def forward_from(self, stage: int, h: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """
        Generate images from the input of stage ``stage``.

        :param stage: Stage index, ``0`` for the latent code.
        :param h: Latent code or intermediate feature.
        :param labels: Generator class indices for class-conditional generators.
        :return: Images in :attr:`output_range`, shape ``(N, *image_shape)``.
        """
        return self.forward_blocks(h, stage, self.num_blocks, labels)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Generate images from latent codes."""
        return self.forward_from(0, z, labels)

    def freeze(self) -> LayeredGenerator:
        """Put the generator in eval mode and stop gradients into its weights; returns ``self``."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def describe(self) -> dict[str, object]:
        """A JSON-serialisable description used in results and reports."""
        return {
            "class": type(self).__name__,
            "image_shape": list(self.image_shape),
            "num_blocks": self.num_blocks,
            "num_classes": self.num_classes,
            "training_domain": self.training_domain,
            "latent_constraint": self.latent_constraint,
        }
