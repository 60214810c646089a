"""
Shared machinery of the attacks that search a generative prior (GIFD, GGL, GIAS): the prior, its fit to the
estimator, class conditioning through a label mapping, and decoding generator outputs to the estimator's range.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from art_gifd.attacks.base import MAX_POPULATION, GradientInversionAttack, SearchContext
from art_gifd.attacks.label_mapping import AutoLabelMapping, LabelMapping, auto_label_mapping, map_labels
from art_gifd.priors.base import (
    LATENT_CONSTRAINTS,
    LayeredGenerator,
    check_declarations,
    check_latent_draws,
    check_output_range,
    project_latent,
)
from art_gifd.validation import (
    MATERIALISE,
    MAX_SEED,
    check_choice,
    check_integer,
    meta_entries,
    nonfinite_entries,
)

if TYPE_CHECKING:
    import torch
    from art.estimators.classification import PyTorchClassifier


#: Priors in use by running searches: id → [searches, the caller's training flag, gradient flags, device], so that the
#: last search to end hands the prior back as the first found it.
_PRIOR_USERS: dict[int, list[Any]] = {}
_PRIOR_LOCK = threading.Lock()


#: How far (a share of its width) a prior's images may overshoot its declared output_range before the declaration is
#: called wrong (a Tanh generator declared (0, 1) reaches -1, a quarter-width overshoot is no rounding).
OVERSHOOT = 0.25


def _default_prior() -> LayeredGenerator:
    """The embedded default prior, with weights the search can differentiate through wherever it is built."""
    import torch

    from art_gifd.priors.embedded import load_default_prior

    with torch.inference_mode(False):
        return load_default_prior()


class GenerativePriorAttack(GradientInversionAttack):
    """
    Base class of attacks that reconstruct through a :class:`~art_gifd.priors.LayeredGenerator`.

    ``prior=None`` loads the embedded default prior. For a class-conditional prior, each task label is mapped to a
    generator class with ``label_mapping`` (``None``: the same index; ``"auto"``: chosen per batch by scoring the
    candidate classes, scores in ``extra["label_mapping_scores"]``).

    The searched latent code is kept on the prior's latent constraint (``latent_constraint="auto"``; see
    :data:`~art_gifd.priors.base.LATENT_CONSTRAINTS`): after every gradient step, and for CMA-ES before decoding.
    """

    attack_params = [
        *GradientInversionAttack.attack_params,
        "prior",
        "label_mapping",
        "latent_constraint",
        "latent_pool",
    ]

    def __init__(
        self,
        estimator: PyTorchClassifier,
        prior: LayeredGenerator | None,
        label_mapping: LabelMapping,
        latent_constraint: str = "auto",
        latent_pool: int = 1,
        **kwargs: Any,
    ) -> None:
        """
        :param estimator: ART ``PyTorchClassifier`` of the FL model.
        :param prior: Layered generator; ``None`` loads the embedded default (a 32×32 grey MNIST DCGAN).
        :param label_mapping: For a class-conditional prior: ``None`` (task label = generator class), a dict task
                              label → generator class, a callable doing the same, or ``"auto"`` /
                              :class:`~art_gifd.attacks.label_mapping.AutoLabelMapping` (scored per batch).
        :param latent_constraint: ``"auto"`` (the prior's :attr:`~art_gifd.priors.LayeredGenerator.latent_constraint`:
                                  the sphere of radius ``sqrt(d)`` for a standard normal latent, a box for BigGAN's
                                  truncated one, none for StyleGAN2), or ``"sphere"``, ``"box"``, ``"none"``.
        :param latent_pool: Latent draws per restart, ``P``: ``P · R`` candidate batches are drawn and the ``R`` whose
                            decoded images match the observed gradient best start the search (1: the first ``R``
                            draws). Costs ``P`` graph-free matching evaluations per restart, a few steps' worth.
        :param kwargs: Parameters of :class:`~art_gifd.attacks.base.GradientInversionAttack`.
        """
        self.prior = _default_prior() if prior is None else prior
        self.label_mapping = label_mapping
        self.latent_constraint = latent_constraint
        self.latent_pool = latent_pool
        self._generator_labels: torch.Tensor | None = None
        self._mapping_scores: dict[str, object] | None = None
        super().__init__(estimator, **kwargs)

    def set_params(self, **kwargs: Any) -> None:
        """As the base class; ``prior=None`` means the embedded default, as in the constructor."""
        if "prior" in kwargs and kwargs["prior"] is None:
            kwargs = {**kwargs, "prior": _default_prior()}
        super().set_params(**kwargs)

    def _check_params(self) -> None:
        super()._check_params()
        if not isinstance(self.prior, LayeredGenerator):
            raise ValueError(
                f"prior must be a LayeredGenerator (see art_gifd.priors), got {type(self.prior).__name__}."
            )
        state = self.prior.state_dict()
        meta = meta_entries(state)
        if meta:
            raise ValueError(f"The prior's weights {meta[:3]} are on the meta device (no values): {MATERIALISE}.")
        broken = nonfinite_entries(state)
        if broken:
            raise ValueError(
                f"The prior's weights hold NaN or infinite values (in {broken[:3]}): load a valid checkpoint."
            )
        check_declarations(self.prior)
        expected = tuple(self.estimator.input_shape)
        if tuple(self.prior.image_shape) != expected:
            raise ValueError(
                f"The prior generates images of shape {tuple(self.prior.image_shape)} but the estimator expects "
                f"{expected}. Use a prior trained at the estimator's resolution and channel count."
            )
        check_choice("latent_constraint", self.latent_constraint, ("auto", *LATENT_CONSTRAINTS))
        self._check_integers(("latent_pool",), high=MAX_POPULATION)
        if self.resolved_latent_constraint == "box" and not (self.prior.latent_bound or 0) > 0:
            raise ValueError(
                "latent_constraint='box' needs a prior with a latent_bound (a truncated latent); this prior has none: "
                "use 'sphere', 'none' or 'auto'."
            )
        mapping = self.label_mapping
        if mapping is not None and self.prior.num_classes is None:
            raise ValueError("label_mapping was given but the prior is not class-conditional.")
        if isinstance(mapping, str) and mapping != "auto":
            raise ValueError(f"Unknown label_mapping '{mapping}': the only string accepted is 'auto'.")
        if mapping is not None and not (isinstance(mapping, dict | str | AutoLabelMapping) or callable(mapping)):
            raise ValueError(
                "label_mapping must be None, a dict task label -> generator class, a callable, 'auto' or an "
                "AutoLabelMapping."
            )
        if isinstance(mapping, AutoLabelMapping):
            mapping.check(self.prior.num_classes)
        if isinstance(mapping, dict):
            classes = self.prior.num_classes
            whole = (int, np.integer)
            bad = [
                (k, v)
                for k, v in mapping.items()
                if not (isinstance(v, whole) and not isinstance(v, bool | np.bool_) and 0 <= v < classes)
            ]
            if bad:
                raise ValueError(f"label_mapping names unknown generator classes: {bad[:5]}.")

    @contextlib.contextmanager
    def _searching(self) -> Iterator[None]:
        """
        As the base class; the prior is frozen (eval mode, no gradients into its weights) and moved to the model's
        device for the search, then handed back in its own mode, flags and device: it is the caller's module. Searches
        that share a prior (threads, copies of one attack) hand it back when the last of them ends.
        """
        prior = self.prior
        with _PRIOR_LOCK:
            state = _PRIOR_USERS.setdefault(
                id(prior), [0, prior.training, [p.requires_grad for p in prior.parameters()], prior.device]
            )
            state[0] += 1
        try:
            with super()._searching():
                yield
        finally:
            with _PRIOR_LOCK:
                state[0] -= 1
                if state[0] == 0:
                    del _PRIOR_USERS[id(prior)]
                    _, training, flags, device = state
                    prior.to(device).train(training)
                    for parameter, flag in zip(prior.parameters(), flags, strict=True):
                        parameter.requires_grad_(flag)

    def _prepare(self, ctx: SearchContext) -> None:
        if any(p.is_inference() for p in self.prior.parameters()):
            raise ValueError(
                "The prior's weights were created under torch.inference_mode(), so no gradient can flow through the "
                "generator: load it outside that block (torch.no_grad() is fine)."
            )
        self.prior.to(ctx.target.device).freeze()
        self._generator_labels = None
        self._mapping_scores = None
        self._check_output()  # before an automatic label mapping decodes and classifies the prior's images
        if self.prior.num_classes is not None:
            if ctx.labels is None:
                raise ValueError("A class-conditional prior needs the labels (given or inferred from the gradient).")
            mapping = self.label_mapping
            if mapping == "auto" or isinstance(mapping, AutoLabelMapping):
                mapping = self._auto_mapping(ctx, mapping if isinstance(mapping, AutoLabelMapping) else None)
            self._generator_labels = map_labels(ctx.labels, mapping, self.prior.num_classes)

    def _feature_stages(self) -> int:
        """How many intermediate features of the prior the search optimises (GIFD's feature stages)."""
        return 0

    def _check_output(self) -> None:
        """
        Generate two images, stage by stage through the features the search optimises: every stage must be one tensor
        per batch and the images what the prior declares (a user's subclass is trusted on nothing else); the prior's
        own latent draws must fit the latent constraint the search holds them on.
        """
        import torch

        device = self.prior.device
        name = type(self.prior).__name__

        def unchanged(new: torch.Tensor, old: torch.Tensor) -> bool:  # blocks that compute nothing
            return new is old or (new.shape == old.shape and torch.equal(new, old))

        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                draws = self.prior.sample_latent(16, generator=torch.Generator(device=device).manual_seed(0))
                again = self.prior.sample_latent(16, generator=torch.Generator(device=device).manual_seed(0))
                if not torch.equal(draws, again):  # then a seed would not make a search repeatable
                    raise TypeError(
                        "sample_latent draws other codes from two equally seeded generators: it must draw from the "
                        "generator it is given (e.g. torch.randn(..., generator=generator))"
                    )
                if self.latent_constraint == "auto":  # a constraint the user chose explicitly is theirs
                    check_latent_draws(self.prior, draws, self.resolved_latent_constraint)
                h = self.project_latent(draws[:2])
                classes = torch.zeros(2, dtype=torch.long, device=device) if self.prior.num_classes else None
                stages = [h]  # the variable of every stage the search optimises
                for stage in range(1, self._feature_stages() + 1):
                    h = self.prior.forward_blocks(h, stage - 1, stage, classes)
                    if not isinstance(h, torch.Tensor) or not h.is_floating_point() or h.dim() == 0 or len(h) != 2:
                        kind = f"shape {tuple(h.shape)}" if isinstance(h, torch.Tensor) else type(h).__name__
                        raise TypeError(
                            f"forward_blocks(h, {stage - 1}, {stage}) returns a {kind}: a stage must be one floating "
                            "tensor whose first dimension is the batch (pack several parts into one flat tensor, as "
                            "StyleGAN2Generator does)"
                        )
                    if unchanged(h, stages[-1]):
                        raise TypeError(
                            f"forward_blocks(h, {stage - 1}, {stage}) returns its input unchanged: block {stage - 1} "
                            f"computes nothing, so stage {stage} would search what stage {stage - 1} searched (the "
                            f"image itself past the last real block); set num_blocks to the blocks the prior has "
                            f"({self.prior.num_blocks} declared), or a smaller max_stage"
                        )
                    stages.append(h)
                out = self.prior.forward_from(self._feature_stages(), h, classes)
                if len(stages) > 1 and unchanged(out, h):
                    raise TypeError(
                        f"forward_from({len(stages) - 1}, h) returns its input unchanged: the blocks after stage "
                        f"{len(stages) - 1} compute nothing, so that stage would search the image itself; set "
                        f"num_blocks to the blocks the prior has ({self.prior.num_blocks} declared), or a smaller "
                        "max_stage"
                    )
        except (RuntimeError, TypeError, ValueError) as err:
            raise ValueError(
                f"The prior ({name}) fails to generate from its own latents: {' '.join(str(err).split())[:300]}"
            ) from None
        for stage, variable in enumerate(stages):  # the search differentiates from each stage's variable
            try:
                with torch.enable_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    self.prior.forward_from(stage, variable.detach().requires_grad_(), classes)
            except RuntimeError as err:
                raise ValueError(
                    f"The prior ({name}) cannot be differentiated from its stage {stage} "
                    f"({' '.join(str(err).split())[:200]}): an in-place operation on a block's input (e.g. "
                    "nn.ReLU(inplace=True) first in a block) overwrites the feature the search optimises; use "
                    "inplace=False there."
                ) from None
        expected = (2, *self.prior.image_shape)
        found = f"shape {tuple(out.shape)}, {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected or out.dtype != torch.float32:
            raise ValueError(
                f"The prior declares image_shape {tuple(self.prior.image_shape)} but generates {found} for 2 latents "
                f"(expected shape {expected}, float32): fix its image_shape or its blocks."
            )
        if not bool(out.isfinite().all()):
            raise ValueError("The prior generates NaN or infinite values from its own latents: check its weights.")
        # a bounded generator's images far beyond its declared range mean a wrong range; one with a linear last layer
        # may pass the range it mostly fills
        overshoot = OVERSHOOT if self.prior.output_bounded else math.inf
        check_output_range(
            float(out.min()), float(out.max()), self.prior.output_range, f"({name}) images", overshoot, 4
        )

    def _auto_mapping(self, ctx: SearchContext, spec: AutoLabelMapping | None) -> dict[int, int]:
        """Score the generator classes for every task label against the observed gradient; keep the best."""
        import torch

        assert ctx.labels is not None
        target = ctx.target

        def decode(h: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
            return self._to_clip(self.prior.forward_from(0, h, classes), ctx.clip_values)

        def classify(images: torch.Tensor) -> torch.Tensor:
            return torch.softmax(target.module(target.preprocess(images)), dim=1)

        mapping, self._mapping_scores = auto_label_mapping(
            spec or AutoLabelMapping(),
            ctx.labels,
            int(self.prior.num_classes),
            lambda n: self.project_latent(self.prior.sample_latent(n, generator=ctx.rng)),
            decode,
            self._objective(ctx.matcher),
            classify,
        )
        return mapping

    @property
    def resolved_latent_constraint(self) -> str:
        """The latent constraint the search applies (``"auto"`` resolved from the prior)."""
        return self.prior.latent_constraint if self.latent_constraint == "auto" else self.latent_constraint

    def project_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Project latent codes ``(N, …)`` onto the search's latent constraint."""
        return project_latent(latent, self.resolved_latent_constraint, self.prior.latent_bound)

    def decoys(self, count: int, seed: int, generator_labels: Sequence[int] | None = None) -> np.ndarray:
        """
        Images this attack could output without any gradient: ``count`` latents drawn from its prior and constrained
        as a search starts, decoded and mapped to the estimator's ``clip_values``. Scored against the private images
        as a reconstruction is, they give the chance level of a recognisable share (a prior of the data's domain
        produces look-alikes by itself, more often the more images a batch offers to match).

        :param count: Number of images.
        :param seed: Seed of the latent draws.
        :param generator_labels: Generator class of each image, for a class-conditional prior (e.g. a result's
                                 ``extra["generator_labels"]``: what known labels alone give the attacker);
                                 ``None``: classes drawn at random.
        :return: Float32 NCHW images.
        """
        import torch

        from art_gifd.federated import clip_range

        count = check_integer("decoys count", count, 1)
        seed = check_integer("decoys seed", seed, 0, MAX_SEED)
        if generator_labels is not None:
            if self.prior.num_classes is None:
                raise ValueError("decoys: generator_labels were given but the prior is not class-conditional.")
            if len(generator_labels) != count:
                raise ValueError(f"decoys: {len(generator_labels)} generator classes for {count} images.")
            last = int(self.prior.num_classes) - 1
            for label in generator_labels:
                check_integer("decoys generator class", label, 0, last)
        with self._searching(), torch.no_grad():
            prior = self.prior.freeze()
            latent = prior.sample_latent(count, generator=torch.Generator(device=prior.device).manual_seed(seed))
            classes = None
            if prior.num_classes is not None and generator_labels is None:
                draw = torch.Generator().manual_seed(seed)
                classes = torch.randint(int(prior.num_classes), (count,), generator=draw).to(prior.device)
            elif prior.num_classes is not None:
                classes = torch.as_tensor([int(v) for v in generator_labels], device=prior.device)
            lo, hi = clip_range(self.estimator)
            images = self._to_clip(prior.forward_from(0, self.project_latent(latent), classes), (lo, hi))
            return images.clamp(lo, hi).cpu().numpy().astype(np.float32)

    def initial_latent(self, ctx: SearchContext) -> torch.Tensor:
        """
        The latent draws that start the search, projected: ``latent_pool · R · B`` rows, ``latent_pool`` candidate
        batches per restart, to be given to the first stage with ``pool=latent_pool``: the ``R`` batches whose decoded
        images match the observed gradient best start it (:func:`~art_gifd.attacks.core.screen_pool`).
        """
        return self.project_latent(self.prior.sample_latent(ctx.num_candidates * self.latent_pool, generator=ctx.rng))

    def generator_labels(self, rows: int) -> torch.Tensor | None:
        """Generator classes for ``rows`` candidate rows (the batch's classes tiled), ``None`` if unconditional."""
        if self._generator_labels is None:
            return None
        return self._generator_labels.repeat(rows // self._generator_labels.shape[0])

    def _extra(self, ctx: SearchContext) -> dict[str, object]:
        extra: dict[str, object] = {
            "prior": self.prior.describe(),
            "latent_constraint": self.resolved_latent_constraint,
        }
        if self._generator_labels is not None:
            extra["generator_labels"] = self._generator_labels.cpu().tolist()
        if self._mapping_scores is not None:
            extra["label_mapping_scores"] = self._mapping_scores
        return extra

    def _to_clip(self, generated: torch.Tensor, clip_values: tuple[float, float]) -> torch.Tensor:
        """Map generator output from its ``output_range`` to the estimator's ``clip_values`` ``(lo, hi)``."""
        out_lo, out_hi = self.prior.output_range
        lo, hi = clip_values
        return lo + (generated - out_lo) * ((hi - lo) / (out_hi - out_lo))

    def _decoder(
        self, stage: int, ctx: SearchContext, project: bool = False
    ) -> Callable[[list[torch.Tensor]], torch.Tensor]:
        """
        Decoder of a stage whose single variable is the input of generator stage ``stage``; with ``project``, the
        (latent) variable is projected onto the latent constraint first (for gradient-free searches).
        """

        def decode(variables: list[torch.Tensor]) -> torch.Tensor:
            h = self.project_latent(variables[0]) if project else variables[0]
            return self._to_clip(self.prior.forward_from(stage, h, self.generator_labels(h.shape[0])), ctx.clip_values)

        return decode

    def _latent_projection(self) -> Callable[[list[torch.Tensor]], list[torch.Tensor]] | None:
        """Projection of a stage whose first variable is the latent code (``None`` when unconstrained)."""
        if self.resolved_latent_constraint == "none":
            return None
        return lambda variables: [self.project_latent(variables[0]), *variables[1:]]
