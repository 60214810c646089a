"""
The layered-generator interface that every generative prior implements.

A generator ``G`` is split into blocks ``G = G_n ∘ … ∘ G_1``. *Stage* ``k`` of the GIFD search optimises the input of
block ``k + 1``: stage 0 is the latent code, stage ``k >= 1`` the intermediate feature reached after ``k`` blocks.
"""

from __future__ import annotations

import abc
import math
import warnings
from typing import Any

import numpy as np
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


def _whole(value: Any, low: int = 1) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_) and value >= low


def check_declarations(prior: LayeredGenerator) -> None:
    """
    Check what a prior declares about itself (a user's subclass sets these by hand): ``num_blocks``, ``image_shape``,
    ``num_classes``, ``default_max_stage``, ``output_range``, ``latent_constraint`` and float32 weights.

    :raises ValueError: Naming the prior's class, the attribute and what it must be.
    """
    name = type(prior).__name__
    missing = [a for a in ("num_blocks", "image_shape") if not hasattr(prior, a)]
    if missing:
        raise ValueError(f"{name} does not set {' and '.join(missing)}: a LayeredGenerator subclass declares them.")
    blocks = prior.num_blocks
    if not _whole(blocks):
        raise ValueError(f"{name}.num_blocks must be a positive integer (its number of blocks), got {blocks!r}.")
    shape = prior.image_shape
    if not (isinstance(shape, tuple | list) and len(shape) == 3 and all(_whole(v) for v in shape)):
        raise ValueError(f"{name}.image_shape must be (C, H, W), three positive integers, got {shape!r}.")
    if prior.num_classes is not None and not _whole(prior.num_classes):
        raise ValueError(f"{name}.num_classes must be None or a positive integer, got {prior.num_classes!r}.")
    default = prior.default_max_stage
    if default is not None and not (_whole(default) and default <= blocks):
        raise ValueError(
            f"{name}.default_max_stage must be None or an integer in [1, {blocks}] (its num_blocks), got {default!r}."
        )
    output_range = prior.output_range
    ordered = (
        isinstance(output_range, tuple | list)
        and len(output_range) == 2
        and all(
            isinstance(v, int | float | np.number) and not isinstance(v, bool) and math.isfinite(v)
            for v in output_range
        )
        and output_range[0] < output_range[1]
    )
    if not ordered:
        raise ValueError(
            f"{name}.output_range must be (low, high) with finite low < high (the range of its output pixels), got "
            f"{output_range!r}."
        )
    if prior.latent_constraint not in LATENT_CONSTRAINTS:
        raise ValueError(
            f"{name}.latent_constraint must be one of {LATENT_CONSTRAINTS}, got {prior.latent_constraint!r}."
        )
    tensors = [*prior.parameters(), *prior.buffers()]
    dtypes = sorted({str(t.dtype) for t in tensors if t.is_floating_point() and t.dtype != torch.float32})
    if dtypes:
        raise ValueError(
            f"{name}'s weights or buffers are {', '.join(dtypes)}; the attacks search in float32: call prior.float()."
        )


def check_output_range(
    low: float, high: float, output_range: tuple[float, float], found: str, tolerance: float, stacklevel: int = 3
) -> None:
    """
    Check generated pixels spanning ``[low, high]`` against the declared ``output_range``: beyond it by more than
    ``tolerance`` of its width is an error, all within one half of it a warning (an untrained generator's outputs
    may span little of the range, but they straddle its middle; outputs on one side of it mean a range declared too
    wide, e.g. a Sigmoid declared (-1, 1), and an attack, which maps output_range onto the model's input range,
    would reach only part of that).

    :param found: What was generated, for the messages (e.g. ``"outputs of 16 samples"``).
    :raises ValueError: If the pixels leave the declared range.
    """
    lo, hi = output_range
    declared = f"output_range=({lo:g}, {hi:g})"
    found = f"{found} lie in [{low:.3g}, {high:.3g}]"
    if low < lo - tolerance * (hi - lo) or high > hi + tolerance * (hi - lo):
        raise ValueError(
            f"The generator's {found}, beyond {declared}: set output_range to its real range (a Tanh output: "
            "output_range=(-1, 1), a Sigmoid output: output_range=(0, 1)), or end it with a bounded activation."
        )
    middle = (lo + hi) / 2
    if low >= middle or high <= middle:
        warnings.warn(
            f"The generator's {found}, within one half of {declared}: set output_range to its real range (a "
            "Sigmoid output: output_range=(0, 1)).",
            UserWarning,
            stacklevel=stacklevel,
        )


#: How far the mean norm of a prior's own latent draws may lie from ``sqrt(d)`` (as a ratio) before the
#: ``"sphere"`` constraint, which holds every searched code at that norm, is called wrong for it.
SPHERE_NORM_RATIO = 1.25


def check_latent_draws(prior: LayeredGenerator, draws: torch.Tensor, constraint: str) -> None:
    """
    Check that ``constraint`` holds the prior's own latent draws where they are: a sphere of radius ``sqrt(d)`` fits a
    standard normal latent (codes of another scale would all be moved off the generator's training distribution),
    a box of half-width ``latent_bound`` must contain them.

    :raises ValueError: Naming the draws' scale, the constraint and the fix.
    """
    name = type(prior).__name__
    flat = draws.detach().flatten(1).float()
    if constraint == "sphere":
        radius = flat.shape[1] ** 0.5
        mean = float(flat.norm(dim=1).mean())
        if not radius / SPHERE_NORM_RATIO <= mean <= radius * SPHERE_NORM_RATIO:
            raise ValueError(
                f"{name}.sample_latent draws codes of mean norm {mean:.3g}, but its latent_constraint 'sphere' holds "
                f"every searched code at norm sqrt({flat.shape[1]}) = {radius:.3g}, that of a standard normal latent: "
                "declare latent_constraint = 'box' (with latent_bound) or 'none' on the prior, or pass "
                "latent_constraint='none' to the attack."
            )
    elif constraint == "box" and prior.latent_bound is not None:
        largest = float(flat.abs().max())
        if largest > prior.latent_bound * (1 + 1e-6):
            raise ValueError(
                f"{name}.sample_latent draws entries up to {largest:.3g}, beyond its latent_bound "
                f"{prior.latent_bound:g}: the 'box' constraint would clip them; fix latent_bound or sample_latent."
            )


class LayeredGenerator(nn.Module, abc.ABC):
    """
    A pretrained generator split into blocks, so that the search can start from any intermediate feature.

    Subclasses set :attr:`num_blocks`, :attr:`image_shape`, :attr:`output_range`, :attr:`num_classes`,
    :attr:`latent_constraint` (unless their latent is standard normal) and implement :meth:`sample_latent` and
    :meth:`forward_blocks`; every stage is one tensor whose first dimension is the batch. Weights are float32, frozen,
    and the module is kept in eval mode. An attack checks these declarations (:func:`check_declarations`) and a few
    generated images (:func:`check_output_range`, :func:`check_latent_draws`) before it searches.
    """

    #: Number of blocks ``n``; stages ``0 … n - 1`` can be searched.
    num_blocks: int
    #: Shape of one generated image, ``(C, H, W)``.
    image_shape: tuple[int, int, int]
    #: Range of the generator's output pixels, e.g. ``(-1.0, 1.0)`` for a tanh output.
    output_range: tuple[float, float] = (-1.0, 1.0)
    #: Whether a bounded last activation (Tanh, Sigmoid) keeps the output within :attr:`output_range`; ``False`` for a
    #: generator whose last layer is linear (StyleGAN2's to-RGB), whose pixels may pass the range they mostly fill.
    output_bounded: bool = True
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
