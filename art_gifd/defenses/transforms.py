"""
Defences that transform the gradient alone: pruning, clipping, quantisation, sign compression and additive noise.

Deterministic transforms are written once on a :data:`~art_gifd.defenses.base.GradientBatch` (a leading batch
dimension on every tensor), so the client (a batch of one) and the adaptive attacker (a batch of restarts) run the same
code.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import torch

from art_gifd.defenses.base import (
    Defense,
    DefenseContext,
    GradientBatch,
    flat_norm,
    kept_entries,
    pruned_count,
    straight_through,
)
from art_gifd.validation import GRADIENT_NORM_RANGE, check_choice, check_integer, check_number

PRUNE_SCOPES = ("layer", "global")
NOISE_DISTRIBUTIONS = ("gaussian", "laplace")


class GradientTransform(Defense):
    """A deterministic defence that is a function of the gradient alone."""

    replayable = True

    @abc.abstractmethod
    def transform(self, grads: GradientBatch) -> GradientBatch:
        """
        The defence on a batch of gradients.

        :param grads: Parameter name → gradient with a leading batch dimension, ``(N, *param_shape)``.
        :return: The defended gradients, same keys and shapes; row ``i`` depends on row ``i`` only.
        """

    def apply(self, grads: list[torch.Tensor], context: DefenseContext) -> list[torch.Tensor]:
        names = context.target.names
        out = self.transform({n: g.unsqueeze(0) for n, g in zip(names, grads, strict=True)})
        return [out[n][0] for n in names]

    def replay(self, grads: GradientBatch, observed: GradientBatch) -> GradientBatch:
        return self.transform(grads)


class Prune(GradientTransform):
    """
    Gradient pruning (sparsification, Zhu et al. 2019): zero the ``⌊ratio · n⌋`` smallest-magnitude entries of each
    parameter's gradient (``scope="layer"``) or of all ``n`` entries together (``scope="global"``).

    The attacker reads the mask off the zeros of the observed gradient and applies it to its dummy gradients; when a
    random defence applied afterwards (noise in a :class:`Compose`) filled the zeros, it keeps the entries of largest
    magnitude instead (:func:`~art_gifd.defenses.base.kept_entries`).
    """

    name = "prune"

    def __init__(self, ratio: float, scope: str = "layer") -> None:
        """
        :param ratio: Fraction of entries zeroed, in ``[0, 1)``.
        :param scope: ``"layer"`` (per parameter tensor) or ``"global"`` (over the whole update).
        """
        self.ratio = check_number("ratio", ratio, 0.0, 1.0)
        self.scope = check_choice("pruning scope", scope, PRUNE_SCOPES)

    def transform(self, grads: GradientBatch) -> GradientBatch:
        if self.scope == "layer":
            return {n: _prune_rows(g.flatten(1), self.ratio).reshape(g.shape) for n, g in grads.items()}
        sizes = [g[0].numel() for g in grads.values()]
        pruned = _prune_rows(torch.cat([g.flatten(1) for g in grads.values()], dim=1), self.ratio)
        parts = pruned.split(sizes, dim=1)
        return {n: p.reshape(g.shape) for (n, g), p in zip(grads.items(), parts, strict=True)}

    def replay(self, grads: GradientBatch, observed: GradientBatch) -> GradientBatch:
        magnitudes = [observed[n].abs().flatten() for n in grads]
        if self.scope == "layer":
            masks = [kept_entries(m, pruned_count(self.ratio, m.numel())) for m in magnitudes]
        else:
            every = torch.cat(magnitudes)
            masks = list(
                kept_entries(every, pruned_count(self.ratio, every.numel())).split([m.numel() for m in magnitudes])
            )
        return {
            n: g * mask.reshape(observed[n].shape).to(g.dtype)
            for (n, g), mask in zip(grads.items(), masks, strict=True)
        }

    def params(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "scope": self.scope}


def _prune_rows(flat: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero the ``⌊ratio · n⌋`` smallest-magnitude entries of every row of ``flat`` ``(N, n)``."""
    k = pruned_count(ratio, flat.shape[1])
    smallest = flat.abs().topk(k, dim=1, largest=False).indices
    return flat.scatter(1, smallest, 0.0)


class Clip(GradientTransform):
    """Clip the norm of the whole update (all parameters together) to ``max_norm``."""

    name = "clip"

    def __init__(self, max_norm: float) -> None:
        """
        :param max_norm: Bound on the Euclidean norm of the shared update, positive.
        """
        # the clipped update's norm must stay where float32 holds it (a clip at 1e-300 shares zeros)
        self.max_norm = check_number("max_norm", max_norm, *GRADIENT_NORM_RANGE, closed="both")

    def transform(self, grads: GradientBatch) -> GradientBatch:
        factor = (self.max_norm / (flat_norm(grads) + 1e-12)).clamp(max=1.0)
        return {n: g * factor.reshape(-1, *([1] * (g.dim() - 1))) for n, g in grads.items()}

    def params(self) -> dict[str, Any]:
        return {"max_norm": self.max_norm}


class Quantize(GradientTransform):
    """
    Deterministic uniform quantisation to ``bits`` bits per entry: each parameter's gradient is rounded to the
    ``2^(bits-1) - 1`` symmetric levels of its largest magnitude (one scale per tensor is shared).

    The attacker replays it with a straight-through estimator (quantised forward, identity backward).
    """

    name = "quantize"

    def __init__(self, bits: int) -> None:
        """
        :param bits: Bits per entry, 2 … 16 (for one bit use :class:`SignCompression`).
        """
        self.bits = check_integer("bits", bits, 2, 16)

    def transform(self, grads: GradientBatch) -> GradientBatch:
        levels = 2 ** (self.bits - 1) - 1
        out = {}
        for n, g in grads.items():
            scale = g.flatten(1).abs().amax(dim=1).reshape(-1, *([1] * (g.dim() - 1))) / levels
            out[n] = torch.where(scale > 0, torch.round(g / scale.clamp_min(1e-30)) * scale, torch.zeros_like(g))
        return out

    def replay(self, grads: GradientBatch, observed: GradientBatch) -> GradientBatch:
        return straight_through(grads, self.transform)

    def params(self) -> dict[str, Any]:
        return {"bits": self.bits}


class SignCompression(GradientTransform):
    """
    Scaled sign compression (signSGD with the l1 scale of Karimireddy et al. 2019): each entry is replaced by its sign
    times the mean magnitude of its parameter tensor, which keeps each tensor's l1 norm.

    The attacker replays it with a straight-through estimator.
    """

    name = "sign"

    def transform(self, grads: GradientBatch) -> GradientBatch:
        return {
            n: torch.sign(g) * g.flatten(1).abs().mean(dim=1).reshape(-1, *([1] * (g.dim() - 1)))
            for n, g in grads.items()
        }

    def replay(self, grads: GradientBatch, observed: GradientBatch) -> GradientBatch:
        return straight_through(grads, self.transform)


class AdditiveNoise(Defense):
    """
    Add i.i.d. zero-mean noise of standard deviation ``sigma`` to every gradient entry (no formal privacy guarantee:
    the gradient is not clipped; see :class:`~art_gifd.defenses.dp.DPSGD` for that).
    """

    name = "noise"

    def __init__(self, sigma: float, distribution: str = "gaussian") -> None:
        """
        :param sigma: Standard deviation of the noise, non-negative.
        :param distribution: ``"gaussian"`` or ``"laplace"`` (scale ``sigma / √2``, so its std is ``sigma``).
        """
        self.sigma = check_number("sigma", sigma, 0.0)
        self.distribution = check_choice("noise distribution", distribution, NOISE_DISTRIBUTIONS)
        self.name = f"{distribution}-noise"

    def apply(self, grads: list[torch.Tensor], context: DefenseContext) -> list[torch.Tensor]:
        return [g + self.sigma * self._unit_noise(g, context.generator) for g in grads]

    def _unit_noise(self, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Noise of unit standard deviation, shaped like ``like``."""
        if self.distribution == "gaussian":
            return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        pair = torch.empty((2, *like.shape), device=like.device, dtype=like.dtype).exponential_(generator=generator)
        return (pair[0] - pair[1]) / math.sqrt(2.0)  # Laplace(0, 1/√2): the difference of two Exp(1)

    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "distribution": self.distribution}


class GaussianNoise(AdditiveNoise):
    """Additive Gaussian noise of standard deviation ``sigma``."""

    def __init__(self, sigma: float) -> None:
        """
        :param sigma: Standard deviation, non-negative.
        """
        super().__init__(sigma, "gaussian")


class LaplacianNoise(AdditiveNoise):
    """Additive Laplacian noise of standard deviation ``sigma``."""

    def __init__(self, sigma: float) -> None:
        """
        :param sigma: Standard deviation, non-negative.
        """
        super().__init__(sigma, "laplace")
