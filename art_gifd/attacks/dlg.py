"""
DLG (Zhu et al., NeurIPS 2019) and iDLG (Zhao et al., 2020): pixel-space L2 gradient matching with L-BFGS.

| Paper links: https://arxiv.org/abs/1906.08935, https://arxiv.org/abs/2001.02610
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from art_gifd.attacks.base import (
    GradientInversionAttack,
    SearchContext,
    SingleStageSearch,
    StageGenerator,
    single_stage_params,
)
from art_gifd.attacks.core import SearchStage, StageOutcome

if TYPE_CHECKING:
    import torch
    from art.estimators.classification import PyTorchClassifier


class DLGAttack(SingleStageSearch, GradientInversionAttack):
    """
    Deep Leakage from Gradients: optimise dummy images *and* dummy soft labels with L-BFGS so that their gradient
    matches the observed one in squared L2 distance. Images start from a standard normal draw, label logits too;
    the reconstructed label of each image is the arg-max of its optimised label distribution. Known labels passed
    to :meth:`infer` are used as given instead.

    Defaults follow the paper: L2 distance, L-BFGS with learning rate 1, no image prior. The search has no projection,
    so its images may leave ``clip_values``: the returned ones are clamped to it, while ``best_loss`` and
    ``stage_losses`` are the search's, of the images before clamping. The paper runs 300 L-BFGS
    iterations of up to 20 evaluations each; here ``max_iter`` counts objective evaluations (each one
    double-backward step, like one Adam step of the other attacks) so that budgets compare.

    | Paper link: https://arxiv.org/abs/1906.08935
    """

    attack_params = single_stage_params(
        GradientInversionAttack.attack_params, fixed=("tv_weight", "norm_weight", "norm_form", "schedule")
    )
    _infers_labels = False

    def __init__(
        self,
        estimator: PyTorchClassifier,
        max_iter: int = 1200,
        num_restarts: int = 1,
        learning_rate: float = 1.0,
        distance: str = "l2",
        **kwargs: Any,
    ) -> None:
        """
        Create a DLG attack.

        :param estimator: ART ``PyTorchClassifier`` of the FL model.
        :param max_iter: Objective evaluations of L-BFGS (line-search evaluations included; a line search under way
                         may end a few past it, and ``result.steps`` says how many ran).
        :param num_restarts: Random restarts, batched; they share L-BFGS's curvature memory and line search, so use
                             1 (the paper's setting) for the textbook algorithm.
        :param learning_rate: L-BFGS learning rate (paper: 1).
        :param distance: Gradient distance (paper: ``"l2"``).
        :param kwargs: Further parameters of :class:`~art_gifd.attacks.base.GradientInversionAttack`:
                       ``batch_size``, ``train_mode``, ``defense``, ``training``, ``simulation_steps``, ``device``,
                       ``seed``, ``verbose``.
        """
        self._refuse_fixed(kwargs, GradientInversionAttack.attack_params)
        super().__init__(
            estimator,
            steps_per_stage=max_iter,
            num_restarts=num_restarts,
            learning_rate=learning_rate,
            distance=distance,
            tv_weight=0.0,
            norm_weight=0.0,
            **kwargs,
        )
        self._check_params()

    def _stages(self, ctx: SearchContext) -> StageGenerator:
        import torch

        target = ctx.target
        images = torch.randn((ctx.num_candidates, *target.input_shape), generator=ctx.rng, device=target.device)
        if ctx.labels is not None:
            yield SearchStage("pixel", [images], lambda v: v[0], optimiser="lbfgs")
            return
        logits = torch.randn((ctx.num_candidates, target.nb_classes), generator=ctx.rng, device=target.device)
        yield SearchStage(
            "pixel+labels",
            [images, logits],
            lambda v: v[0],
            soft_labels=lambda v: v[1].softmax(dim=-1),
            optimiser="lbfgs",
        )

    def _result_labels(self, ctx: SearchContext, outcome: StageOutcome, restart: int) -> torch.Tensor:
        if ctx.labels is not None:
            return ctx.labels
        logits = outcome.representation[1].reshape(ctx.num_restarts, ctx.batch_size, -1)[restart]
        return logits.argmax(dim=-1)


class IDLGAttack(DLGAttack):
    """
    Improved DLG: DLG with the labels read from the gradient of the classifier head instead of optimised (exact for
    one image; see :mod:`art_gifd.labels` for batches), which makes the image search better posed.

    | Paper link: https://arxiv.org/abs/2001.02610
    """

    _infers_labels = True
