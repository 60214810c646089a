"""
GGL (Li et al., CVPR 2022): gradient-free search over a generator's latent code with CMA-ES.

| Paper link: https://arxiv.org/abs/2203.05471
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from art_gifd.attacks.base import (
    MAX_POPULATION,
    MAX_RESTARTS,
    SearchContext,
    SingleStageSearch,
    StageGenerator,
    single_stage_params,
)
from art_gifd.attacks.core import SearchStage
from art_gifd.attacks.generative import GenerativePriorAttack
from art_gifd.attacks.label_mapping import LabelMapping
from art_gifd.validation import MAX_RATE

if TYPE_CHECKING:
    from art.estimators.classification import PyTorchClassifier

    from art_gifd.priors.base import LayeredGenerator


class GGLAttack(SingleStageSearch, GenerativePriorAttack):
    """
    Generative Gradient Leakage: treat the gradient-matching loss as a black box of the generator's latent code and
    minimise it with CMA-ES (the ``cma`` package). No gradient flows back to the latent code: the search works even
    when the matching loss is not differentiable (e.g. behind a non-differentiable defence). Each restart is its
    own CMA-ES run; all restarts' populations are scored in one batched call per generation.

    Defaults: 500 generations (the paper's budget with nevergrad's CMA), the ``cma`` package's default population
    ``4 + ⌊3 ln d⌋`` for a latent of dimension ``d``, initial step size 0.5 (latents are standard normal), cosine
    gradient distance.

    | Paper link: https://arxiv.org/abs/2203.05471
    """

    attack_params = [
        *single_stage_params(
            GenerativePriorAttack.attack_params,
            fixed=("learning_rate", "tv_weight", "norm_weight", "norm_form", "schedule"),
        ),
        "population_size",
        "sigma",
        "eval_batch_size",
    ]

    def __init__(
        self,
        estimator: PyTorchClassifier,
        prior: LayeredGenerator | None = None,
        max_iter: int = 500,
        num_restarts: int = 1,
        population_size: int | None = None,
        sigma: float = 0.5,
        distance: str = "cosine",
        label_mapping: LabelMapping = None,
        eval_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Create a GGL attack.

        :param estimator: ART ``PyTorchClassifier`` of the FL model.
        :param prior: Layered generator; ``None`` loads the embedded default.
        :param max_iter: CMA-ES generations.
        :param num_restarts: Independent CMA-ES runs, scored together.
        :param population_size: Candidates per generation and restart, at most 10,000 (``None``: the ``cma`` default).
        :param sigma: Initial CMA-ES step size in latent units.
        :param distance: Gradient distance, ``"cosine"`` or ``"l2"``.
        :param label_mapping: Task label → generator class, for class-conditional priors.
        :param eval_batch_size: Candidates scored per batched call (``None``: all restarts' populations of a
                                generation at once). Each candidate needs its own dummy gradient of the FL model, so
                                memory grows with it; lower it when memory runs short (a ResNet-18 at 64×64 went past
                                20 GB on CPU with 4 restarts × 17 candidates at batch size 4). The result is the same.
        :param kwargs: Further parameters of :class:`~art_gifd.attacks.generative.GenerativePriorAttack`:
                       ``latent_pool`` (the CMA-ES means start from the best draws), ``batch_size``,
                       ``train_mode``, ``defense``, ``training``, ``simulation_steps``, ``device``, ``seed``,
                       ``verbose``.
        """
        self.population_size = population_size
        self.sigma = sigma
        self.eval_batch_size = eval_batch_size
        self._refuse_fixed(kwargs, GenerativePriorAttack.attack_params)
        super().__init__(
            estimator,
            prior,
            label_mapping,
            steps_per_stage=max_iter,
            num_restarts=num_restarts,
            learning_rate=1.0,
            distance=distance,
            tv_weight=0.0,
            norm_weight=0.0,
            **kwargs,
        )
        self._check_params()

    def _check_params(self) -> None:
        super()._check_params()
        self._check_numbers(("sigma",), positive=True, high=MAX_RATE)
        self._check_integers(("population_size",), minimum=2, optional=True, high=MAX_POPULATION)
        # at most every candidate of a generation: a larger value scores them all at once too
        self._check_integers(("eval_batch_size",), optional=True, high=MAX_RESTARTS * MAX_POPULATION)

    def _memory_drivers(self) -> tuple[str, str]:
        images = f"candidate batches of {self.batch_size} image(s)"
        if self.eval_batch_size is not None:
            return f"eval_batch_size = {self.eval_batch_size} {images}", "eval_batch_size (the result is the same)"
        # every candidate of a generation at once
        population = "the cma default" if self.population_size is None else self.population_size
        held = f"num_restarts × population_size = {self.num_restarts} × {population} {images}"
        lower = "population_size or num_restarts, or set eval_batch_size (scores a generation in parts, same result)"
        return held, lower

    def _stages(self, ctx: SearchContext) -> StageGenerator:
        yield SearchStage(
            "latent-cma",
            [self.initial_latent(ctx)],
            self._decoder(0, ctx, project=True),
            optimiser="cma",
            cma_sigma=self.sigma,
            cma_population=self.population_size,
            cma_chunk=self.eval_batch_size,
            pool=self.latent_pool,
        )
