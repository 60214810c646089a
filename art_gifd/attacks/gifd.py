"""
GIFD: Gradient Inversion over Feature Domains (Fang et al., ICCV 2023), as an ART inference attack.

| Paper link: https://arxiv.org/abs/2308.04699
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from art_gifd.attacks.base import SearchContext, StageGenerator
from art_gifd.attacks.core import SearchStage, project_l1_ball
from art_gifd.attacks.generative import GenerativePriorAttack
from art_gifd.attacks.label_mapping import LabelMapping
from art_gifd.validation import MAX_RATE, check_choice, check_number

if TYPE_CHECKING:
    import torch
    from art.estimators.classification import PyTorchClassifier

    from art_gifd.defenses.base import Defense
    from art_gifd.federated import LocalTraining
    from art_gifd.priors.base import LayeredGenerator

logger = logging.getLogger(__name__)

RADIUS_SCALES = ("per_element", "absolute")
#: Named ways to split GIFD's step budget over its stages (see :func:`split_steps`).
STEP_SPLITS = ("equal", "last-heavy")


def split_steps(total: int, stages: int, split: str | Sequence[float]) -> list[int]:
    """
    Steps of each stage from a total budget.

    ``"equal"``: the same for every stage (the paper's protocol). ``"last-heavy"``: half to the last stage, a quarter
    to the one before, the last quarter evenly to the others (1/8, 1/8, 1/4, 1/2 for four stages; 1/4, 1/4, 1/2 for
    three). A sequence: one weight per stage, normalised. Counts are rounded by largest remainder so that they sum to
    ``total``, and every stage runs at least one step.
    """
    if isinstance(split, str):
        if split == "equal" or stages <= 2:
            weights = [1.0] * stages
        else:
            weights = [0.25 / (stages - 2)] * (stages - 2) + [0.25, 0.5]
    else:
        weights = [float(w) for w in split]
    relative = np.asarray(weights) / max(weights)  # scaled to at most 1 first: a sum of huge weights would overflow
    shares = relative / relative.sum() * total
    counts = np.floor(shares).astype(int)
    for i in np.argsort(-(shares - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    counts = np.maximum(counts, 1)
    while counts.sum() > total and counts.max() > 1:  # a stage raised to one step: the largest gives it back
        counts[int(np.argmax(counts))] -= 1
    return [int(c) for c in counts]


class GIFDAttack(GenerativePriorAttack):
    """
    Reconstruct a client's images by searching a pretrained generator's latent code, then its intermediate features.

    Stage 0 optimises the latent input of the generator. Stage ``k >= 1`` starts from the feature reached after ``k``
    blocks by the best candidate of stage ``k - 1`` and optimises that feature directly, projecting its deviation
    from the starting point onto an l1 ball after every step: the reconstruction may leave the generator's range while
    staying close to its manifold. The output is the best candidate over all stages and restarts by gradient-matching
    loss. ``max_stage=1`` is the latent-only search of GGL/GIAS-style attacks.

    Restarts: all ``num_restarts`` random latent codes run as one batched computation through every stage
    (``feature_restarts=None``, the strongest search). ``feature_restarts="halving"`` carries every restart into the
    first feature stage and then only the best half (by matching loss) into each next one: on the tuning split of
    ``benchmarks/ablation.py`` it stayed within 0.0–1.1 dB of the full search at 60–80% of its CPU time, while keeping
    a single restart right after the latent stage lost 1–4 dB.
    The latent code stays on the prior's latent constraint (``latent_constraint``), the sphere of radius ``sqrt(d)``
    for a standard normal latent. The restarts start from the best of ``latent_pool`` (16) latent batches each, by
    matching loss: on the tuning split of ``benchmarks/ablation.py`` (``benchmarks/results/ablation_pool.md``) this
    gained 2.1 ± 1.3 dB on the ConvNet at B=4 and 0.6 ± 0.8 on the LeNet at B=4, and stayed within 0.6 dB elsewhere
    (−0.2 ± 0.1 dB on 64×64 RGB at B=1), for a few steps' worth of CPU. At B=2 (``benchmarks/shared_labels.py``) it
    was no gain on average, and lost 1.1 ± 0.5 dB on LeNet's pairs of two labels. With a prior far from the private
    images (a digits prior on clothes, ``benchmarks/ood.py``) it lost 2.8–4.0 dB: ``latent_pool=1`` there.

    Steps: the budget of ``max_stage × steps_per_stage`` Adam steps goes mostly to the last stages
    (``step_split="last-heavy"``: 1/8, 1/8, 1/4, 1/2 of it for four stages). On the tuning split of
    ``benchmarks/ablation.py`` this beat the paper's equal split by 5.2 ± 0.4 dB (LeNet, B=1), 3.1 ± 1.6 (LeNet,
    B=4), 3.2 ± 0.9 (ConvNet, B=1) and 0.8 ± 0.1 (64×64 RGB, B=1 and B=4), and lost 1.7 ± 1.8 dB on the ConvNet at
    B=4 (3 of 8 runs better).

    | Paper link: https://arxiv.org/abs/2308.04699
    """

    attack_params = [
        *GenerativePriorAttack.attack_params,
        "max_stage",
        "l1_radius",
        "radius_scale",
        "feature_restarts",
        "feature_learning_rate",
        "step_split",
    ]

    def __init__(
        self,
        estimator: PyTorchClassifier,
        prior: LayeredGenerator | None = None,
        max_stage: int | None = None,
        steps_per_stage: int = 500,
        num_restarts: int = 4,
        learning_rate: float = 0.1,
        feature_learning_rate: float | None = None,
        l1_radius: float | Sequence[float] = 0.2,
        radius_scale: str = "per_element",
        distance: str = "cosine",
        tv_weight: float = 1e-4,
        norm_weight: float = 0.0,
        batch_size: int = 1,
        label_mapping: LabelMapping = None,
        feature_restarts: int | Sequence[int] | str | None = None,
        step_split: str | Sequence[float] = "last-heavy",
        latent_constraint: str = "auto",
        latent_pool: int = 16,
        norm_form: str = "mean_square",
        schedule: str = "cosine",
        train_mode: bool = False,
        device: str | torch.device | None = None,
        seed: int | None = None,
        verbose: bool = True,
        defense: Defense | None = None,
        training: LocalTraining | None = None,
        simulation_steps: int | None = None,
    ) -> None:
        """
        Create a GIFD attack.

        :param estimator: ART ``PyTorchClassifier`` of the FL model (architecture and current weights).
        :param prior: Layered generator; ``None`` loads the embedded default (a 32×32 grey MNIST DCGAN).
        :param max_stage: Number of stages searched, ``1 … prior.num_blocks``; ``None`` = the prior's default;
                          ``1`` = latent only.
        :param steps_per_stage: Adam steps per stage (the paper uses 1000 on GPU).
        :param num_restarts: Random restarts of the latent stage, run as one batched computation (the paper uses 4).
        :param learning_rate: Peak Adam learning rate (of every stage unless ``feature_learning_rate`` is set).
        :param feature_learning_rate: Peak Adam learning rate of the feature stages; ``None``: the prior's
                                      :attr:`~art_gifd.priors.LayeredGenerator.feature_learning_rate`, else
                                      ``learning_rate``.
        :param l1_radius: Radius of the l1 ball around each feature stage's starting point: one value for every
                          feature stage or one per feature stage (``max_stage - 1`` values).
        :param radius_scale: ``"per_element"``: the radius is multiplied by the feature's number of elements per
                             sample (a mean absolute deviation, one default for every generator); ``"absolute"``: the
                             radius is used as given (as in the reference implementation).
        :param distance: Gradient distance, ``"cosine"`` or ``"l2"``.
        :param tv_weight: Weight of the total-variation prior (per image the mean absolute horizontal plus
                          the mean absolute vertical neighbour difference, averaged over the batch).
        :param norm_weight: Weight of the norm prior (a per-image mean, see ``norm_form``; 0 disables it).
        :param batch_size: Client batch size behind the gradient.
        :param label_mapping: For a class-conditional prior: ``None`` (task label = generator class), a dict task
                              label → generator class, a callable doing the same, or ``"auto"`` /
                              :class:`~art_gifd.attacks.label_mapping.AutoLabelMapping` (candidate classes scored
                              per batch; scores in ``extra["label_mapping_scores"]``).
        :param feature_restarts: How many restarts each feature stage continues, the best by matching loss of the
                                 stage before: ``"halving"`` (all into the first feature stage, then half as many,
                                 rounded up, into each next one: 4, 2, 1 for 4 restarts and 3 feature stages), one
                                 count for every feature stage, one per feature stage (``max_stage - 1``
                                 non-increasing counts), each at most ``num_restarts``, or ``None``: every restart
                                 through every stage.
        :param step_split: How the budget of ``max_stage × steps_per_stage`` steps is split over the stages:
                           ``"last-heavy"`` (default: half to the last stage, a quarter to the one before, see
                           :func:`split_steps`), ``"equal"`` (the paper's protocol) or one weight per stage.
        :param latent_constraint: ``"auto"`` (the prior's), ``"sphere"``, ``"box"`` or ``"none"``: the set the
                                  latent code is projected onto after every step of the latent stage.
        :param latent_pool: Latent draws per restart; the ``num_restarts`` batches of draws that match the observed
                            gradient best start the search (1: the first draws, as the paper).
        :param norm_form: Form of the norm prior: ``"mean_square"`` or ``"rms"``.
        :param schedule: Adam learning-rate schedule of every stage: ``"cosine"`` (warm-up, then cosine decay) or
                         ``"step"``.
        :param train_mode: Whether the client computed its gradient with the model in train mode.
        :param device: Device of the search (default: the estimator's device); the prior is moved there.
        :param seed: Seed of the random initialisations.
        :param verbose: Show a progress bar.
        :param defense: The client's defence, known to the attacker (replayed on the dummy gradients where it is
                        deterministic: the adaptive attacker).
        :param training: A FedAvg client's local training: the observation is its weight update over ``batch_size``
                         samples, and candidates are put through the same training (``None``: a FedSGD gradient).
        :param simulation_steps: Replay at most this many local steps, merging consecutive ones (``None``: all).
        """
        self.max_stage = max_stage
        self.l1_radius = l1_radius
        self.radius_scale = radius_scale
        self.feature_restarts = feature_restarts
        self.feature_learning_rate = feature_learning_rate
        self.step_split = step_split
        super().__init__(
            estimator,
            prior,
            label_mapping,
            latent_constraint=latent_constraint,
            latent_pool=latent_pool,
            norm_form=norm_form,
            schedule=schedule,
            steps_per_stage=steps_per_stage,
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
            defense=defense,
            training=training,
            simulation_steps=simulation_steps,
        )
        self._check_params()

    @property
    def stages(self) -> int:
        """Number of stages the search runs."""
        return self.max_stage if self.max_stage is not None else (self.prior.default_max_stage or self.prior.num_blocks)

    @property
    def resolved_feature_learning_rate(self) -> float:
        """The feature stages' learning rate: ``feature_learning_rate``, else the prior's, else ``learning_rate``."""
        if self.feature_learning_rate is not None:
            return float(self.feature_learning_rate)
        if self.prior.feature_learning_rate is not None:
            return float(self.prior.feature_learning_rate)
        return float(self.learning_rate)

    def radii(self) -> list[float]:
        """The l1 radius of each feature stage ``1 … stages - 1`` as configured (before per-element scaling)."""
        several = isinstance(self.l1_radius, Sequence | np.ndarray) and np.ndim(self.l1_radius) == 1
        values = list(self.l1_radius) if several else [self.l1_radius] * (self.stages - 1)
        if isinstance(self.l1_radius, str) or not all(
            isinstance(r, int | float | np.number) and not isinstance(r, bool) for r in values
        ):
            raise ValueError(f"l1_radius must be a positive number or one per feature stage, got {self.l1_radius!r}.")
        return [float(r) for r in values]

    def _check_params(self) -> None:
        super()._check_params()
        n = self.prior.num_blocks
        if self.max_stage is not None and (
            isinstance(self.max_stage, bool) or not isinstance(self.max_stage, int | np.integer)
        ):
            raise ValueError(f"max_stage must be an integer in [1, {n}] or None, got {self.max_stage!r}.")
        if not 1 <= self.stages <= n:
            raise ValueError(f"max_stage must lie in [1, {n}] for this prior ({n} blocks), got {self.stages}.")
        check_choice("radius_scale", self.radius_scale, RADIUS_SCALES)
        radii = self.radii()
        if len(radii) != self.stages - 1:
            raise ValueError(
                f"l1_radius has {len(radii)} values but the search has {self.stages - 1} feature stages: give one "
                "value, or one per feature stage."
            )
        if any(not np.isfinite(r) or r <= 0 for r in radii):
            raise ValueError(f"l1_radius values must be positive, got {radii}.")
        split = (
            list(self.step_split)
            if isinstance(self.step_split, np.ndarray) and self.step_split.ndim == 1
            else self.step_split
        )
        if isinstance(split, str):
            if split not in STEP_SPLITS:
                raise ValueError(f"Unknown step_split '{split}': use one of {STEP_SPLITS} or one weight per stage.")
        elif not isinstance(split, Sequence) or len(split) != self.stages:
            raise ValueError(
                f"step_split must be one of {STEP_SPLITS} or {self.stages} weights (one per stage), got {split!r}."
            )
        else:
            for weight in split:
                check_number("step_split weights", weight, 0.0, closed="neither")
        if self.feature_learning_rate is not None:
            check_number("feature_learning_rate", self.feature_learning_rate, 0.0, MAX_RATE, closed="right")
        self._check_restart_schedule()

    def _check_restart_schedule(self) -> None:
        if isinstance(self.feature_restarts, np.ndarray | np.integer):  # numpy counts: stored as Python ints
            self.feature_restarts = self.feature_restarts.tolist()
        counts = self.feature_restarts
        if counts is None or (isinstance(counts, str) and counts == "halving"):
            return
        values = list(counts) if isinstance(counts, Sequence) and not isinstance(counts, str) else [counts]
        if any(isinstance(c, bool) or not isinstance(c, int | np.integer) or c < 1 for c in values):
            raise ValueError(
                "feature_restarts must be 'halving', a positive integer, one per feature stage, or None, "
                f"got {counts!r}."
            )
        if isinstance(counts, Sequence):
            if len(values) != self.stages - 1:
                raise ValueError(
                    f"feature_restarts has {len(values)} counts but the search has {self.stages - 1} feature stages: "
                    "give one count, or one per feature stage."
                )
            if any(b > a for a, b in itertools.pairwise(values)):
                raise ValueError(f"feature_restarts must not increase from stage to stage, got {list(values)}.")
        if max(values, default=0) > self.num_restarts:  # a stage can only continue restarts the search has
            raise ValueError(
                f"feature_restarts={counts!r} carries more restarts than the search has (num_restarts="
                f"{self.num_restarts}): give counts of at most num_restarts, or raise num_restarts."
            )

    def restart_schedule(self) -> list[int]:
        """Restarts each feature stage ``1 … stages - 1`` continues (``feature_restarts``)."""
        counts = self.feature_restarts
        if counts is None:
            counts = [self.num_restarts] * (self.stages - 1)
        elif isinstance(counts, str):  # "halving", the one string _check_restart_schedule lets through
            counts = [max(1, -(-int(self.num_restarts) // 2**k)) for k in range(self.stages - 1)]
        elif not isinstance(counts, Sequence):
            counts = [counts] * (self.stages - 1)
        return [int(c) for c in counts]

    def stage_steps(self) -> list[int]:
        """Steps of each stage: ``max_stage × steps_per_stage`` split by ``step_split``."""
        return split_steps(int(self.steps_per_stage) * self.stages, self.stages, self.step_split)

    def _num_stages(self) -> int:
        return self.stages

    def _feature_stages(self) -> int:
        return self.stages - 1

    def _extra(self, ctx: SearchContext) -> dict[str, object]:
        return {
            **super()._extra(ctx),
            "radius_scale": self.radius_scale,
            "l1_radius": self.radii(),
            "feature_restarts": self.restart_schedule(),
            "feature_learning_rate": self.resolved_feature_learning_rate,
            "stage_steps": self.stage_steps(),
        }

    def _stages(self, ctx: SearchContext) -> StageGenerator:
        import torch

        steps = self.stage_steps()
        outcome = yield SearchStage(
            "latent",
            [self.initial_latent(ctx)],
            self._decoder(0, ctx),
            self._latent_projection(),
            steps=steps[0],
            pool=self.latent_pool,
        )
        for k, (radius, keep) in enumerate(zip(self.radii(), self.restart_schedule(), strict=True), start=1):
            carried, restart_ids = outcome.take(outcome.best_restarts(keep))
            with torch.no_grad():
                h = carried[0]
                start = self.prior.forward_blocks(h, k - 1, k, self.generator_labels(h.shape[0]))
            per_sample = start[0].numel() if self.radius_scale == "per_element" else 1
            ball = radius * per_sample

            def project(h: list[torch.Tensor], start: torch.Tensor = start, ball: float = ball) -> list[torch.Tensor]:
                return [start + project_l1_ball(h[0] - start, ball)]

            outcome = yield SearchStage(
                f"feature-{k}",
                [start],
                self._decoder(k, ctx),
                project,
                learning_rates=[self.resolved_feature_learning_rate],
                restart_ids=restart_ids,
                steps=steps[k],
            )
