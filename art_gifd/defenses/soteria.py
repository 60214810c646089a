"""
Soteria (Sun et al., CVPR 2021): perturb the gradient of the representation layer.

| Paper link: https://arxiv.org/abs/2012.06043
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from art_gifd.defenses.base import (
    Defense,
    DefenseContext,
    GradientBatch,
    kept_entries,
    pruned_count,
)
from art_gifd.validation import check_integer, check_number


class Soteria(Defense):
    """
    Soteria prunes the gradient of the fully connected layer that reads the data representation ``r`` (the input of
    the named ``nn.Linear``): for every representation feature ``f`` it scores ``Σ_batch ‖∂r_f/∂x‖ / |r_f|`` (the
    authors' approximation of how little a reconstruction moves when ``r_f`` is perturbed, inverted) and zeroes the
    columns of the layer's weight gradient for the ``⌊ratio · F⌋`` features with the smallest score (the authors'
    percentile rule). Features with ``r_f = 0`` are never chosen. Other parameters' gradients are shared unchanged.

    The pruned columns show as zeros in the shared gradient, so the attacker can replay the mask; when noise applied
    afterwards filled them, it takes the columns of smallest norm (:func:`~art_gifd.defenses.base.kept_entries`).

    | Paper link: https://arxiv.org/abs/2012.06043
    """

    name = "soteria"
    replayable = True

    def __init__(self, layer: str, ratio: float, chunk_size: int | None = 64) -> None:
        """
        :param layer: Module name (as in ``model.named_modules()``) of the ``nn.Linear`` whose input is the
                      representation, e.g. ``"7"`` for the last layer of an ``nn.Sequential`` or ``"fc"``.
        :param ratio: Fraction of representation features whose weight-gradient columns are zeroed, in ``[0, 1)``.
        :param chunk_size: Representation features whose input gradients are computed together, one sample at a time
                           (``None``: all features at once). Memory grows with it: one backward pass through the
                           model per feature in the chunk. The scores do not depend on it.
        """
        if not isinstance(layer, str) or not layer:
            raise ValueError(
                f"Soteria needs the representation layer named: pass layer=<name in model.named_modules() of the "
                f"nn.Linear whose input is the representation>, got {layer!r}."
            )
        self.layer = layer
        self.ratio = check_number("ratio", ratio, 0.0, 1.0)
        self.chunk_size = None if chunk_size is None else check_integer("chunk_size", chunk_size, 1)

    def linear(self, module: nn.Module) -> nn.Linear:
        """The representation layer of ``module``; ``ValueError`` naming the model's linear layers if unknown."""
        candidate = dict(module.named_modules()).get(self.layer)
        if not isinstance(candidate, nn.Linear):
            linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
            raise ValueError(
                f"Unknown layer {self.layer!r} for Soteria: it must name the nn.Linear whose input is the "
                f"representation; the model's linear layers are {linears}."
            )
        return candidate

    def feature_scores(self, context: DefenseContext) -> torch.Tensor:
        """Soteria's score of every representation feature, ``(in_features,)``; small scores are pruned."""
        target = context.target
        linear = self.linear(target.module)

        def representation(sample: torch.Tensor) -> torch.Tensor:
            captured: list[torch.Tensor] = []
            handle = linear.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
            try:
                torch.func.functional_call(target.module, (target.params, target.buffers), (sample.unsqueeze(0),))
            finally:
                handle.remove()
            if len(captured) != 1:
                runs = "never runs" if not captured else f"runs {len(captured)} times"
                raise ValueError(
                    f"Soteria's layer {self.layer!r} {runs} in the model's forward pass: name the nn.Linear that reads "
                    "the representation, once per sample."
                )
            if captured[0].numel() != linear.in_features:  # e.g. a token-wise layer on a (B, tokens, features) input
                raise ValueError(
                    f"Soteria's layer {self.layer!r} reads an input of shape {tuple(captured[0].shape)} per sample, "
                    f"not one representation of its {linear.in_features} in_features: Soteria prunes the features "
                    "of a (B, in_features) input; name a linear layer that reads one vector per sample."
                )
            return captured[0].reshape(-1)

        x = target.preprocess(context.x).detach()
        rep = torch.func.vmap(representation)(x)
        jacobian = torch.func.jacrev(representation, chunk_size=self.chunk_size)
        sensitivity = torch.stack([jacobian(sample).flatten(1).norm(dim=1) for sample in x])  # (B, F)
        ratio = torch.where(rep != 0, sensitivity / rep.abs().clamp_min(torch.finfo(rep.dtype).tiny), math.inf)
        return ratio.sum(dim=0)

    def apply(self, grads: list[torch.Tensor], context: DefenseContext) -> list[torch.Tensor]:
        scores = self.feature_scores(context)
        weight = self._weight_name(context.target.names)
        pruned = scores.topk(pruned_count(self.ratio, scores.numel()), largest=False).indices
        mask = torch.ones_like(scores).index_fill(0, pruned, 0.0)
        return [g * mask if n == weight else g for n, g in zip(context.target.names, grads, strict=True)]

    def replay(self, grads: GradientBatch, observed: GradientBatch) -> GradientBatch:
        weight = self._weight_name(list(grads))
        columns = observed[weight].abs().sum(dim=0)
        zeroed = pruned_count(self.ratio, columns.numel())
        # the shared zeros where they are all there (any other zero entry included); else the strongest columns
        kept = observed[weight] != 0 if int((columns == 0).sum()) >= zeroed else kept_entries(columns, zeroed)
        mask = kept.to(grads[weight].dtype)
        return {n: g * mask if n == weight else g for n, g in grads.items()}

    def _weight_name(self, names: list[str]) -> str:
        name = f"{self.layer}.weight"
        if name not in names:
            raise ValueError(
                f"Unknown layer {self.layer!r} for Soteria: the model has no parameter {name!r}; name the nn.Linear "
                "whose input is the representation."
            )
        return name

    def params(self) -> dict[str, Any]:
        return {"layer": self.layer, "ratio": self.ratio}
