"""
GIAS (Jeon et al., NeurIPS 2021): search the generator's latent code, then fine-tune the generator's weights per
image.

| Paper link: https://arxiv.org/abs/2110.14962
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from art_gifd.attacks.base import SearchContext, StageGenerator
from art_gifd.attacks.core import SearchStage
from art_gifd.attacks.generative import GenerativePriorAttack
from art_gifd.attacks.label_mapping import LabelMapping
from art_gifd.validation import MAX_RATE

if TYPE_CHECKING:
    import torch
    from art.estimators.classification import PyTorchClassifier

    from art_gifd.priors.base import LayeredGenerator


def _first_sentence(err: BaseException) -> str:
    """The first sentence of an error's message, on one line (torch's vmap errors go on to ask for an issue)."""
    return " ".join(str(err).split()).split(". ")[0][:200]


class GIASAttack(GenerativePriorAttack):
    """
    Gradient Inversion in Alternative Spaces: stage 1 optimises the latent code (Adam); stage 2 starts from the best
    latent of each restart and optimises it together with a private copy of the generator's weights for every
    image (all copies batched with ``torch.func.vmap``), so the reconstruction can leave the pretrained generator's
    range. The weights move with a much smaller learning rate than the latent code.

    Defaults: latent learning rate 0.1 and generator-weight learning rate 1e-4 with Adam and cosine decay, cosine
    gradient distance with TV 1e-4, 4 restarts.

    | Paper link: https://arxiv.org/abs/2110.14962
    """

    attack_params = [*GenerativePriorAttack.attack_params, "weight_learning_rate"]

    def __init__(
        self,
        estimator: PyTorchClassifier,
        prior: LayeredGenerator | None = None,
        steps_per_stage: int = 1000,
        num_restarts: int = 4,
        learning_rate: float = 0.1,
        weight_learning_rate: float = 1e-4,
        distance: str = "cosine",
        tv_weight: float = 1e-4,
        norm_weight: float = 0.0,
        label_mapping: LabelMapping = None,
        **kwargs: Any,
    ) -> None:
        """
        Create a GIAS attack.

        :param estimator: ART ``PyTorchClassifier`` of the FL model.
        :param prior: Layered generator; ``None`` loads the embedded default.
        :param steps_per_stage: Adam steps of the latent stage and of the weight stage each.
        :param num_restarts: Random restarts, batched.
        :param learning_rate: Peak learning rate of the latent code.
        :param weight_learning_rate: Peak learning rate of the generator weights.
        :param distance: Gradient distance, ``"cosine"`` or ``"l2"``.
        :param tv_weight: Weight of the total-variation prior.
        :param norm_weight: Weight of the norm prior (a per-image mean, see ``norm_form``).
        :param label_mapping: Task label → generator class, for class-conditional priors.
        :param kwargs: Further parameters of :class:`~art_gifd.attacks.generative.GenerativePriorAttack`:
                       ``latent_pool``, ``batch_size``, ``train_mode``, ``defense``, ``training``,
                       ``simulation_steps``, ``schedule``, ``device``, ``seed``, ``verbose``.
        """
        self._refuse_other_length(kwargs)
        self.weight_learning_rate = weight_learning_rate
        super().__init__(
            estimator,
            prior,
            label_mapping,
            steps_per_stage=steps_per_stage,
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
        self._check_numbers(("weight_learning_rate",), positive=True, high=MAX_RATE)

    def _num_stages(self) -> int:
        return 2

    def _per_image_generator(
        self, count: int, labels: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], Callable[[tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor]]:
        """``count`` copies of the prior's weights, and the vmapped decoder taking (copies, latents) to images."""
        from torch.func import functional_call, vmap

        prior = self.prior
        names = [name for name, _ in prior.named_parameters()]
        buffers = dict(prior.named_buffers())
        weights = [p.detach().unsqueeze(0).repeat(count, *([1] * p.dim())) for p in prior.parameters()]

        def one_image(params: tuple[torch.Tensor, ...], z: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
            label_batch = None if label is None else label.unsqueeze(0)
            state = (dict(zip(names, params, strict=True)), buffers)
            return functional_call(prior, state, (z.unsqueeze(0), label_batch))[0]

        per_image = vmap(one_image, in_dims=(0, 0, None if labels is None else 0))
        return weights, lambda params, z: per_image(params, z, labels)

    def _prepare(self, ctx: SearchContext) -> None:
        """As the base class, and the per-image generator tried once: a prior it cannot run fails before any search."""
        import torch

        super()._prepare(ctx)
        device = self.prior.device
        labels = torch.zeros(1, dtype=torch.long, device=device) if self.prior.num_classes is not None else None
        weights, per_image = self._per_image_generator(1, labels)
        z = self.project_latent(self.prior.sample_latent(1, generator=torch.Generator(device=device).manual_seed(0)))
        try:
            with torch.no_grad():
                per_image(tuple(weights), z)
        except RuntimeError as err:
            raise ValueError(
                f"GIASAttack optimises one copy of the generator's weights per image under torch.func.vmap, and this "
                f"prior ({type(self.prior).__name__}) cannot run there ({_first_sentence(err)}): remove "
                "data-dependent Python control flow (an `if` on a tensor's value, .item()) from its forward pass, or "
                "use GIFDAttack or GGLAttack."
            ) from None

    def _stages(self, ctx: SearchContext) -> StageGenerator:
        project = self._latent_projection()
        outcome = yield SearchStage(
            "latent", [self.initial_latent(ctx)], self._decoder(0, ctx), project, pool=self.latent_pool
        )
        weights, per_image = self._per_image_generator(ctx.num_candidates, self.generator_labels(ctx.num_candidates))

        def decode(variables: list[torch.Tensor]) -> torch.Tensor:
            return self._to_clip(per_image(tuple(variables[1:]), variables[0]), ctx.clip_values)

        rates = [self.learning_rate] + [self.weight_learning_rate] * len(weights)
        yield SearchStage("generator", [outcome.representation[0], *weights], decode, project, learning_rates=rates)
