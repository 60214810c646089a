"""
Inverting Gradients (Geiping et al., NeurIPS 2020): cosine gradient matching with a TV prior in pixel space.

| Paper link: https://arxiv.org/abs/2003.14053
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from art_gifd.attacks.base import GradientInversionAttack, SearchContext, StageGenerator
from art_gifd.attacks.core import SearchStage

if TYPE_CHECKING:
    import torch
    from art.estimators.classification import PyTorchClassifier


class InvertingGradientsAttack(GradientInversionAttack):
    """
    Optimise the pixels of a dummy batch so that its gradient matches the observed one (cosine distance + TV), with
    Adam and random restarts; the best restart by matching loss is returned. Pixels are clamped to the estimator's
    ``clip_values`` after every step.

    | Paper link: https://arxiv.org/abs/2003.14053
    """

    def __init__(
        self,
        estimator: PyTorchClassifier,
        max_iter: int = 4000,
        num_restarts: int = 4,
        learning_rate: float = 0.1,
        distance: str = "cosine",
        tv_weight: float = 1e-4,
        norm_weight: float = 0.0,
        batch_size: int = 1,
        train_mode: bool = False,
        device: str | torch.device | None = None,
        seed: int | None = None,
        verbose: bool = True,
    ) -> None:
        """
        Create an Inverting Gradients attack.

        :param estimator: ART ``PyTorchClassifier`` of the FL model.
        :param max_iter: Adam steps (the paper uses 24,000 for ImageNet, 4,000–8,000 for CIFAR-10 on GPU).
        :param num_restarts: Random restarts, run as one batched computation.
        :param learning_rate: Peak Adam learning rate (the paper uses 0.1).
        :param distance: Gradient distance, ``"cosine"`` (paper) or ``"l2"``.
        :param tv_weight: Weight of the total-variation prior (paper: 1e-4 … 1e-2 depending on the data).
        :param norm_weight: Weight of the squared-norm prior.
        :param batch_size: Client batch size behind the gradient.
        :param train_mode: Whether the client computed its gradient with the model in train mode.
        :param device: Device of the search (default: the estimator's device).
        :param seed: Seed of the random initialisation.
        :param verbose: Show a progress bar.
        """
        super().__init__(
            estimator,
            steps_per_stage=max_iter,
            num_restarts=num_restarts,
            learning_rate=learning_rate,
            distance=distance,
            tv_weight=tv_weight,
            norm_weight=norm_weight,
            batch_size=batch_size,
            train_mode=train_mode,
            device=device,
            seed=seed,
            verbose=verbose,
        )
        self._check_params()

    @property
    def max_iter(self) -> int:
        """Adam steps of the pixel search."""
        return self.steps_per_stage

    def _num_stages(self) -> int:
        return 1

    def _stages(self, ctx: SearchContext) -> StageGenerator:
        import torch

        lo, hi = ctx.clip_values
        shape = (ctx.num_candidates, *ctx.target.input_shape)
        init = lo + (hi - lo) * torch.rand(shape, generator=ctx.rng, device=ctx.target.device)
        yield SearchStage("pixel", init, lambda x: x, lambda x: x.clamp(lo, hi))
