"""
Turn any generator whose forward pass is a chain of blocks into a :class:`~art_gifd.priors.LayeredGenerator`.

::

    from art_gifd.priors import wrap_generator

    prior = wrap_generator(my_sequential, latent_shape=(64,), image_shape=(1, 32, 32))
    prior = wrap_generator(my_module, blocks=["fc", "up1", "up2", "to_image"], latent_shape=(64,),
                           image_shape=(3, 64, 64), output_range=(0.0, 1.0))

Stage 0 is the latent (standard normal of ``latent_shape``); stage ``k`` is the output of the first ``k`` blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from art_gifd.priors.base import LayeredGenerator, check_output_range
from art_gifd.validation import check_integer, check_number


def _shape(name: str, value: Sequence[int], rank: int | None = None) -> tuple[int, ...]:
    """A shape of positive integers (``rank`` of them if given)."""
    wanted = "(C, H, W)" if rank == 3 else "a tuple of positive integers"
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"{name} must be {wanted}, got {value!r}.")
    if rank is not None and len(value) != rank:
        raise ValueError(f"{name} must be {wanted}, got {tuple(value)}.")
    return tuple(check_integer(f"{name}[{i}]", v, 1) for i, v in enumerate(value))


#: Random latents the wrapper runs through the generator to check its output shape and range.
SAMPLES = 16
#: How far outputs may overshoot ``output_range``, as a fraction of its width (float rounding of a bounded activation).
RANGE_TOLERANCE = 1e-3


class LayeredSequential(LayeredGenerator):
    """
    A user's generator applied as a chain of blocks: the children of an ``nn.Sequential``, or named submodules.

    Only unconditional generators whose forward pass is exactly ``blocks[-1](… blocks[0](z))`` fit; for anything else
    (class conditioning, skips across blocks) subclass :class:`~art_gifd.priors.LayeredGenerator`.
    """

    def __init__(
        self,
        module: nn.Module,
        latent_shape: Sequence[int],
        image_shape: Sequence[int],
        blocks: Sequence[str] | None = None,
        output_range: tuple[float, float] = (-1.0, 1.0),
        training_domain: str = "unknown",
    ) -> None:
        """
        :param module: The generator (its weights are frozen and it is put in eval mode).
        :param latent_shape: Shape of one latent code, e.g. ``(64,)`` or ``(100, 1, 1)``.
        :param image_shape: Shape of one generated image, ``(C, H, W)``.
        :param blocks: Names of the submodules applied in order (dotted paths allowed); ``None``: the children of an
                       ``nn.Sequential``.
        :param output_range: Range of the output pixels (``(-1, 1)`` for tanh, ``(0, 1)`` for sigmoid).
        :param training_domain: Description of the training data (stated in reports).
        :raises ValueError: If a shape or range is malformed, a block name is unknown, the blocks are empty, the
                            module has no parameters, or the outputs of a test pass on random latents differ from
                            ``image_shape``, are not finite or leave ``output_range``.
        :warns UserWarning: If those outputs all lie in one half of ``output_range`` (a range declared too wide).
        """
        super().__init__()
        if blocks is None:
            if not isinstance(module, nn.Sequential):
                raise ValueError(
                    f"{type(module).__name__} is not an nn.Sequential: pass blocks=[names of its submodules, in the "
                    "order its forward pass applies them]."
                )
            chain = list(module)
        else:
            known = {name for name, _ in module.named_modules() if name}
            unknown = [name for name in blocks if name not in known]
            if unknown:
                children = [name for name, _ in module.named_children()]
                raise ValueError(f"Unknown block names {unknown}: {type(module).__name__} has children {children}.")
            chain = [module.get_submodule(name) for name in blocks]
        if not chain:
            raise ValueError("The generator has no blocks to search.")
        if next(module.parameters(), None) is None:
            raise ValueError(
                f"{type(module).__name__} has no parameters: a prior is a trained generator, pass the module that "
                "holds its weights."
            )
        self.latent_shape = _shape("latent_shape", latent_shape)
        self.image_shape = _shape("image_shape", image_shape, rank=3)
        if isinstance(output_range, str | bytes) or not hasattr(output_range, "__len__") or len(output_range) != 2:
            raise ValueError(f"output_range must be (low, high), e.g. (-1, 1) for a Tanh output, got {output_range!r}.")
        low = check_number("output_range low", output_range[0])
        high = check_number("output_range high", output_range[1], low, closed="neither")
        self.module = module
        self.chain = chain
        self.output_range = (low, high)
        self.training_domain = training_domain
        self.num_blocks = len(chain)
        self.freeze()
        self._check_outputs()

    def _check_outputs(self) -> None:
        """Run the blocks on a few random latents: the images must have ``image_shape`` and fit ``output_range``."""
        n = SAMPLES
        try:
            with torch.no_grad():
                out = self(self.sample_latent(n, torch.Generator(device=self.device).manual_seed(0)))
        except (RuntimeError, TypeError) as err:
            raise ValueError(
                f"The blocks cannot run on a latent of shape {self.latent_shape} ({err}). Check latent_shape and the "
                "block order; each block takes one tensor (a class-conditional generator needs a LayeredGenerator "
                "subclass)."
            ) from None
        if tuple(out.shape[1:]) != self.image_shape:
            raise ValueError(
                f"The generator outputs images of shape {tuple(out.shape[1:])}, not image_shape={self.image_shape}. "
                "Check image_shape, or the blocks (the last one must produce the image)."
            )
        if not bool(out.isfinite().all()):
            raise ValueError(
                "The generator outputs NaN or infinite values on random latents: check its weights and latent_shape."
            )
        check_output_range(
            float(out.min()), float(out.max()), self.output_range, f"outputs of {n} samples", RANGE_TOLERANCE, 5
        )

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, *self.latent_shape, device=self.device, generator=generator)

    def forward_blocks(
        self, h: torch.Tensor, start: int, stop: int, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply blocks ``start + 1 … stop``; ``labels`` is ignored (unconditional)."""
        if not 0 <= start <= stop <= self.num_blocks:
            raise ValueError(f"Need 0 <= start <= stop <= {self.num_blocks}, got start={start}, stop={stop}.")
        for index, block in enumerate(self.chain[start:stop], start=start):
            h = block(h)
            if not isinstance(h, torch.Tensor):
                raise ValueError(
                    f"Block {index + 1} of the generator returns a {type(h).__name__}, not a tensor: each block must "
                    "map one tensor to one tensor (wrap a block that returns (image, extra) to return the image)."
                )
        return h

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "module": type(self.module).__name__, "latent_shape": list(self.latent_shape)}


def wrap_generator(
    module: nn.Module,
    blocks: Sequence[str] | None = None,
    latent_shape: Sequence[int] = (64,),
    image_shape: Sequence[int] = (1, 32, 32),
    output_range: tuple[float, float] = (-1.0, 1.0),
    training_domain: str = "unknown",
) -> LayeredSequential:
    """
    Wrap a generator whose forward pass is a chain of blocks as a layered prior (see :class:`LayeredSequential`).

    :param module: The generator; an ``nn.Sequential`` (each child one block) or any module with ``blocks``.
    :param blocks: Names of the submodules applied in order; ``None`` for an ``nn.Sequential``.
    :param latent_shape: Shape of one latent code.
    :param image_shape: Shape of one generated image, ``(C, H, W)``.
    :param output_range: Range of the output pixels.
    :param training_domain: Description of the training data (stated in reports).
    :return: The frozen layered generator.
    :raises ValueError: See :class:`LayeredSequential`.
    """
    return LayeredSequential(module, latent_shape, image_shape, blocks, output_range, training_domain)
