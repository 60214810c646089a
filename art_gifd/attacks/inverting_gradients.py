"""
Inverting Gradients (Geiping et al., NeurIPS 2020): cosine gradient matching with a TV prior in pixel space.

| Paper link: https://arxiv.org/abs/2003.14053
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from art_gifd.attacks.base import (
    PIXEL_INITS,
    GradientInversionAttack,
    SearchContext,
    SingleStageSearch,
    StageGenerator,
    single_stage_params,
)
from art_gifd.validation import check_choice, check_flag

if TYPE_CHECKING:
    from art.estimators.classification import PyTorchClassifier


class InvertingGradientsAttack(SingleStageSearch, GradientInversionAttack):
    """
    Optimise the pixels of a dummy batch so that its gradient matches the observed one (cosine distance + TV), with
    Adam and random restarts; the best restart by matching loss is returned. Pixels start as standard normal noise in
    the model's input units, as in the paper, and are clamped to the estimator's ``clip_values`` after every step.

    | Paper link: https://arxiv.org/abs/2003.14053
    """

    attack_params = [*single_stage_params(GradientInversionAttack.attack_params), "signed_gradients", "init"]

    def __init__(
        self,
        estimator: PyTorchClassifier,
        max_iter: int = 4000,
        num_restarts: int = 4,
        learning_rate: float = 0.1,
        distance: str = "cosine",
        tv_weight: float = 1e-4,
        norm_weight: float = 0.0,
        signed_gradients: bool = True,
        schedule: str = "step",
        init: str = "randn",
        **kwargs: Any,
    ) -> None:
        """
        Create an Inverting Gradients attack.

        :param estimator: ART ``PyTorchClassifier`` of the FL model.
        :param max_iter: Adam steps (the paper uses 24,000 for ImageNet, 4,000–8,000 for CIFAR-10 on GPU).
        :param num_restarts: Random restarts, run as one batched computation.
        :param learning_rate: Peak Adam learning rate (the paper uses 0.1).
        :param distance: Gradient distance, ``"cosine"`` (paper) or ``"l2"``.
        :param tv_weight: Weight of the total-variation prior (paper: 1e-4 … 1e-2 depending on the data).
        :param norm_weight: Weight of the norm prior (a per-image mean, see ``norm_form``; 0 disables it).
        :param signed_gradients: Step Adam on the sign of the gradient, as the paper does.
        :param schedule: Learning-rate schedule: ``"step"`` (paper: ×0.1 at 3/8, 5/8 and 7/8 of the steps) or
                         ``"cosine"`` (linear warm-up, then cosine decay).
        :param init: Start images: ``"randn"`` (paper: standard normal in the model's input units, i.e. after the
                     estimator's mean/std standardisation, clamped to ``clip_values``) or ``"uniform"`` in
                     ``clip_values``.
        :param kwargs: Further parameters of :class:`~art_gifd.attacks.base.GradientInversionAttack`:
                       ``batch_size``, ``train_mode``, ``defense``, ``training``, ``simulation_steps``, ``device``,
                       ``seed``, ``verbose``.
        """
        self._refuse_fixed(kwargs, GradientInversionAttack.attack_params)
        self.signed_gradients = signed_gradients
        self.init = init
        super().__init__(
            estimator,
            steps_per_stage=max_iter,
            num_restarts=num_restarts,
            learning_rate=learning_rate,
            distance=distance,
            tv_weight=tv_weight,
            norm_weight=norm_weight,
            schedule=schedule,
            **kwargs,
        )
        self._check_params()

    def _check_params(self) -> None:
        super()._check_params()
        check_choice("init", self.init, PIXEL_INITS)
        check_flag("signed_gradients", self.signed_gradients)

    def _stages(self, ctx: SearchContext) -> StageGenerator:
        yield ctx.pixel_stage(signed=self.signed_gradients, init=self.init)
