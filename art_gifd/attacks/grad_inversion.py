"""
GradInversion ("GI", Yin et al., CVPR 2021): pixel-space gradient matching with BatchNorm-statistics matching and an
optional group-consistency term.

| Paper link: https://arxiv.org/abs/2104.07586
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from art_gifd.attacks.base import (
    GradientInversionAttack,
    SearchContext,
    SingleStageSearch,
    StageGenerator,
    single_stage_params,
)
from art_gifd.federated import TargetModel
from art_gifd.validation import MAX_WEIGHT

if TYPE_CHECKING:
    import torch
    from art.estimators.classification import PyTorchClassifier


class BatchNormStatistics:
    """
    Distance between the batch statistics that each candidate batch induces at the inputs of the model's BatchNorm
    layers and the layers' running statistics: ``Σ_l ||μ_l(x) − μ_l||₂ + ||σ²_l(x) − σ²_l||₂`` per restart.
    """

    def __init__(self, target: TargetModel, batch_size: int) -> None:
        """
        :param target: The FL model (its BatchNorm layers must track running statistics).
        :param batch_size: Client batch size ``B``.
        :raises ValueError: If the model has no BatchNorm layer or its layers keep no running statistics.
        """
        self.target = target
        self.batch_size = batch_size
        self.layers = [m for m in target.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise ValueError(
                "GradInversionAttack matches BatchNorm statistics, but the model has no BatchNorm layer. Use "
                "InvertingGradientsAttack for models without BatchNorm."
            )
        if any(m.running_mean is None or m.running_var is None for m in self.layers):
            raise ValueError(
                "GradInversionAttack needs BatchNorm running statistics, but the model's BatchNorm layers keep none "
                "(track_running_stats=False or train_mode=True)."
            )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Penalty per restart for candidate images ``(R * B, …)``."""
        inputs: list[tuple[nn.Module, torch.Tensor]] = []
        hooks = [m.register_forward_hook(lambda m, args, _out: inputs.append((m, args[0]))) for m in self.layers]
        try:
            self.target.module(self.target.preprocess(images))
        finally:
            for hook in hooks:
                hook.remove()
        if not inputs:
            raise ValueError(
                "GradInversionAttack matches BatchNorm statistics, but none of the model's BatchNorm layers runs in "
                "its forward pass in this mode (e.g. only in an auxiliary head used in training). Use "
                "InvertingGradientsAttack."
            )
        penalty = images.new_zeros(images.shape[0] // self.batch_size)
        # every call of a layer: a module may run twice in one forward pass, and one that does not run adds nothing
        for layer, feature in inputs:
            per_restart = feature.reshape(-1, self.batch_size, *feature.shape[1:]).transpose(1, 2)
            flat = per_restart.flatten(2)  # (R, C, B * spatial)
            mean, var = flat.mean(dim=2), flat.var(dim=2, unbiased=False)
            penalty = penalty + (mean - layer.running_mean).norm(dim=1) + (var - layer.running_var).norm(dim=1)
        return penalty


def group_consistency(batch_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Penalty pulling each restart's batch towards the (detached) mean over restarts, per restart."""

    def penalty(images: torch.Tensor) -> torch.Tensor:
        per_restart = images.reshape(-1, batch_size, *images.shape[1:])
        consensus = per_restart.mean(dim=0, keepdim=True).detach()
        return (per_restart - consensus).pow(2).flatten(1).mean(dim=1)

    return penalty


class GradInversionAttack(SingleStageSearch, GradientInversionAttack):
    """
    GradInversion: optimise pixels (Adam) to match the gradient, with BatchNorm-statistics matching (the model's
    running statistics as a prior on the batch), TV and norm priors, and optionally the group-consistency term
    that pulls the restarts towards their mean. The paper's image registration of the group is not implemented:
    the consensus is the plain mean over restarts.

    Defaults follow the paper where it states them: squared L2 gradient distance, BN weight 1e-2, TV 1e-4, norm
    1e-6, group weight 1e-2 when used, Adam with learning rate 0.1 and cosine decay.

    | Paper link: https://arxiv.org/abs/2104.07586
    """

    attack_params = [*single_stage_params(GradientInversionAttack.attack_params), "bn_weight", "group_weight"]

    def __init__(
        self,
        estimator: PyTorchClassifier,
        max_iter: int = 4000,
        num_restarts: int = 4,
        learning_rate: float = 0.1,
        distance: str = "l2",
        bn_weight: float = 1e-2,
        group_weight: float = 0.0,
        tv_weight: float = 1e-4,
        norm_weight: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        """
        Create a GradInversion attack.

        :param estimator: ART ``PyTorchClassifier`` of an FL model with BatchNorm layers (in eval mode).
        :param max_iter: Adam steps.
        :param num_restarts: Random restarts, batched (the group of the group-consistency term).
        :param learning_rate: Peak Adam learning rate.
        :param distance: Gradient distance, ``"l2"`` (paper) or ``"cosine"``.
        :param bn_weight: Weight of the BatchNorm-statistics term.
        :param group_weight: Weight of the group-consistency term (0 disables it; it needs ``num_restarts >= 2``, since
                             it pulls each restart towards the mean over the restarts).
        :param tv_weight: Weight of the total-variation prior.
        :param norm_weight: Weight of the norm prior ``mean_b mean(x_b²)`` (per-image mean, see ``norm_form``).
        :param kwargs: Further parameters of :class:`~art_gifd.attacks.base.GradientInversionAttack`:
                       ``batch_size``, ``train_mode``, ``defense``, ``training``, ``simulation_steps``, ``schedule``,
                       ``device``, ``seed``, ``verbose``.
        """
        self._refuse_fixed(kwargs, GradientInversionAttack.attack_params)
        self.bn_weight = bn_weight
        self.group_weight = group_weight
        super().__init__(
            estimator,
            steps_per_stage=max_iter,
            num_restarts=num_restarts,
            learning_rate=learning_rate,
            distance=distance,
            tv_weight=tv_weight,
            norm_weight=norm_weight,
            **kwargs,
        )
        self._check_params()

    def _check_params(self) -> None:
        super()._check_params()
        self._check_numbers(("bn_weight", "group_weight"), positive=False, high=MAX_WEIGHT)
        if self.group_weight > 0 and self.num_restarts == 1:
            raise ValueError(
                f"group_weight={self.group_weight!r} pulls each restart towards the mean over the restarts, but "
                "num_restarts=1: the mean is that one restart and the term is always 0. Set num_restarts to 2 or more, "
                "or group_weight=0."
            )
        # raises for a model without BatchNorm, or without running statistics in the client's mode
        BatchNormStatistics(TargetModel(self.estimator, train_mode=self.train_mode), self.batch_size)

    def _regularisers(self, ctx: SearchContext) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        bn = BatchNormStatistics(ctx.target, ctx.batch_size)
        terms = [lambda images: self.bn_weight * bn(images)]
        if self.group_weight > 0:
            group = group_consistency(ctx.batch_size)
            terms.append(lambda images: self.group_weight * group(images))
        return terms

    def _stages(self, ctx: SearchContext) -> StageGenerator:
        yield ctx.pixel_stage()
