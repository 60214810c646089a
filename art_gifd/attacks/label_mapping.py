"""
Label mapping: which generator class a class-conditional prior uses for each task label of the client batch, given
by the caller or chosen per batch by scoring the candidate classes (:class:`AutoLabelMapping`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from art_gifd.validation import check_integer, check_number

if TYPE_CHECKING:
    from art_gifd.attacks.core import Objective

logger = logging.getLogger(__name__)

#: How ``"auto"`` scores a candidate generator class for a task label (see :class:`AutoLabelMapping`).
AUTO_SCORERS = ("confidence", "matching")
#: Probability lead of the best candidate class below which the confidence scorer warns.
CONFIDENCE_MARGIN = 0.05
#: Default :attr:`AutoLabelMapping.chunk_size`: at most this many generated images at once (a 1000-class prior at 16
#: samples per class would otherwise decode 16,000 in one pass).
DEFAULT_CHUNK_SIZE = 256


@dataclass(frozen=True)
class AutoLabelMapping:
    """
    Settings of the automatic label mapping (``label_mapping="auto"`` uses the defaults).

    For each task label of the batch, every candidate generator class gets a score (higher is better) and the best
    one is kept:

    * ``"confidence"`` (default): the target model's mean probability of the task label on ``samples`` images
      generated from the candidate class. Needs an FL model that already recognises the classes (any model past the
      first rounds of training); on an untrained model the scores barely differ and a warning is logged.
    * ``"matching"``: a short latent search (``steps`` Adam steps, ``restarts`` starts per class, all
      candidates batched as restarts) with the rows of that task label generated from the candidate class; the score
      is minus the best gradient-matching loss. With several task labels in the batch they are scored one after the
      other (one coordinate sweep), the others held at their best class so far (the first candidate before).
      Works on any model but is a weak signal: a short search can leave the candidate class's region.

    Cost per task label of the batch, with ``C`` candidate classes (all the generator's by default: 1000 for a
    BigGAN) and client batch size ``B``: ``"confidence"`` decodes and classifies ``C × samples`` images without
    gradients, ``chunk_size`` at a time; ``"matching"`` runs ``C × restarts`` restarts of ``steps`` search steps,
    split into searches of as many whole candidate classes as fit in ``chunk_size`` images (``restarts × B`` images
    per class, at least one class per search), each holding its images' gradients like an attack search with that
    many restarts. Time grows linearly with ``C``; restrict ``candidates`` to cut it, lower ``chunk_size`` to cut the
    memory. The scores do not depend on ``chunk_size`` (up to float rounding), except the confidence scores against a
    model in train mode with BatchNorm (``train_mode=True``), which classifies each chunk with its batch statistics.

    Measured on a class-conditional digit generator whose classes are a known permutation of the task's (10 task
    labels, batch size 1, 32×32 MNIST, CPU): ``"confidence"`` recovered 10/10 classes with a trained ConvNet (mean
    probability margin +0.98 over the runner-up class, 0.5 s per label), ``"matching"`` 6/10 (30 steps × 2 restarts,
    6 s per label); on untrained models ``"matching"`` recovered 5/10 (LeNet) and 2/10 (ConvNet), ``"confidence"``
    0/10.

    :param scorer: ``"matching"`` or ``"confidence"``.
    :param candidates: Generator classes to consider (default: all).
    :param steps: Adam steps of each matching search.
    :param restarts: Random starts per candidate class (matching).
    :param learning_rate: Peak Adam learning rate of the matching search.
    :param samples: Generated images per candidate class (confidence).
    :param chunk_size: Most images decoded at once (confidence), or held by one matching search (at least one
                       candidate class's ``restarts × B``).
    """

    scorer: str = "confidence"
    candidates: Sequence[int] | None = None
    steps: int = 30
    restarts: int = 2
    learning_rate: float = 0.1
    samples: int = 16
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def check(self, num_generator_classes: int) -> None:
        """Raise ``ValueError`` for a bad setting or a candidate that is not a generator class."""
        if self.scorer not in AUTO_SCORERS:
            raise ValueError(f"Unknown label-mapping scorer '{self.scorer}': use one of {AUTO_SCORERS}.")
        for name in ("steps", "restarts", "samples", "chunk_size"):
            check_integer(f"AutoLabelMapping.{name}", getattr(self, name), 1)
        check_number("AutoLabelMapping.learning_rate", self.learning_rate, 0.0, closed="neither")
        if self.candidates is not None:
            bad = [
                c
                for c in self.candidates
                if isinstance(c, bool | np.bool_)
                or not (isinstance(c, int | np.integer) and 0 <= c < num_generator_classes)
            ]
            if bad or not len(self.candidates):
                raise ValueError(
                    f"AutoLabelMapping.candidates must be generator classes in [0, {num_generator_classes - 1}], got "
                    f"{list(self.candidates)[:10]}."
                )


#: What ``label_mapping=`` accepts: ``None`` (identity), a dict task label → generator class, a callable, or
#: ``"auto"`` / an :class:`AutoLabelMapping` (chosen per batch by scoring candidate classes).
LabelMapping = None | str | AutoLabelMapping | Mapping[int, int] | Callable[[int], int]


def map_labels(labels: torch.Tensor, mapping: LabelMapping, num_generator_classes: int) -> torch.Tensor:
    """
    Map task labels to generator classes.

    :param labels: Task labels.
    :param mapping: ``None`` (identity), a dict task label → generator class, or a callable doing the same.
    :param num_generator_classes: Number of classes of the generator.
    :raises ValueError: If a label has no mapping or maps outside the generator's classes.
    """
    out = []
    for label in labels.tolist():
        if mapping is None:
            target = label
        elif isinstance(mapping, Mapping):
            if label not in mapping:
                text_keys = any(isinstance(k, str) for k in mapping)  # e.g. read from JSON, where keys are strings
                raise ValueError(
                    f"label_mapping has no entry for task label {label}"
                    + (": its keys are strings (such as '3'); use integer task labels." if text_keys else ".")
                )
            target = mapping[label]
        else:
            try:
                target = mapping(label)
            except Exception as err:  # the user's function: name the label it failed on
                raise ValueError(f"label_mapping raised {err!r} for task label {label}.") from err
        whole = isinstance(target, int | np.integer) and not isinstance(target, bool | np.bool_)
        if not whole:
            raise ValueError(
                f"label_mapping maps task label {label} to {target!r}, a {type(target).__name__}: a generator class "
                "is an integer index (return a Python or numpy int)."
            )
        if not 0 <= int(target) < num_generator_classes:
            raise ValueError(
                f"label_mapping maps task label {label} to {target!r}, which is not a generator class in "
                f"[0, {num_generator_classes - 1}]."
            )
        out.append(int(target))
    return torch.as_tensor(out, dtype=torch.long, device=labels.device)


def score_classes_by_matching(
    spec: AutoLabelMapping,
    batch_labels: torch.Tensor,
    task_label: int,
    assignment: Mapping[int, int],
    candidates: Sequence[int],
    sample_latent: Callable[[int], torch.Tensor],
    decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    objective: Objective,
) -> torch.Tensor:
    """
    Score each candidate class for ``task_label`` by a short latent search (minus its best matching loss).

    :param spec: Search settings (``chunk_size`` images per search).
    :param batch_labels: Task labels of the client batch, ``(B,)``.
    :param task_label: The task label being mapped.
    :param assignment: Generator class of every other task label of the batch.
    :param candidates: Candidate generator classes.
    :param sample_latent: Draws ``n`` latent codes.
    :param decode: Latent codes and generator classes (one per row) → images in the estimator's range.
    :param objective: Matching objective of the client's gradient, per restart.
    :return: One score per candidate, higher is better.
    """
    from art_gifd.attacks.core import SearchSettings, SearchStage, run_stage

    base = torch.as_tensor([assignment[int(t)] for t in batch_labels.tolist()], device=batch_labels.device)
    per_class = spec.restarts * batch_labels.shape[0]
    # the restarts are independent (losses summed, Adam per element): searching the candidates a group at a time
    # from the same starting latents gives the scores of one search over all of them
    latent = sample_latent(len(candidates) * per_class)

    def search(group: Sequence[int], start: torch.Tensor) -> torch.Tensor:
        classes = torch.cat(
            [torch.where(batch_labels == task_label, int(c), base) for c in group for _ in range(spec.restarts)]
        )
        stage = SearchStage(f"label-{task_label}", [start], lambda v: decode(v[0], classes), optimiser="adam")
        outcome = run_stage(
            stage, objective, SearchSettings(spec.steps, spec.learning_rate, len(group) * spec.restarts)
        )
        return -outcome.loss.reshape(len(group), spec.restarts).min(dim=1).values

    size = max(1, spec.chunk_size // per_class)
    groups = [candidates[i : i + size] for i in range(0, len(candidates), size)]
    return torch.cat([search(g, z) for g, z in zip(groups, latent.split(size * per_class), strict=True)])


def score_classes_by_confidence(
    spec: AutoLabelMapping,
    task_label: int,
    candidates: Sequence[int],
    sample_latent: Callable[[int], torch.Tensor],
    decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    classify: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """
    Score each candidate class for ``task_label`` by the target model's mean probability of ``task_label`` on images
    generated from that class.

    :param spec: Settings (``samples`` images per class, ``chunk_size`` at a time).
    :param task_label: The task label being mapped.
    :param candidates: Candidate generator classes.
    :param sample_latent: Draws ``n`` latent codes.
    :param decode: Latent codes and generator classes (one per row) → images in the estimator's range.
    :param classify: Images → class probabilities of the target model, ``(N, nb_classes)``.
    :return: One score per candidate, higher is better.
    """
    latent = sample_latent(len(candidates) * spec.samples)
    classes = torch.as_tensor(list(candidates), device=latent.device).repeat_interleave(spec.samples)
    with torch.no_grad():
        probabilities = torch.cat(
            [
                classify(decode(z, c))[:, task_label]
                for z, c in zip(latent.split(spec.chunk_size), classes.split(spec.chunk_size), strict=True)
            ]
        )
    return probabilities.reshape(len(candidates), spec.samples).mean(dim=1)


def auto_label_mapping(
    spec: AutoLabelMapping,
    batch_labels: torch.Tensor,
    num_generator_classes: int,
    sample_latent: Callable[[int], torch.Tensor],
    decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    objective: Objective,
    classify: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[dict[int, int], dict[str, object]]:
    """
    Choose a generator class for every task label of the batch (see :class:`AutoLabelMapping`).

    :param spec: Settings.
    :param batch_labels: Task labels of the client batch, ``(B,)``.
    :param num_generator_classes: Number of classes of the generator.
    :param sample_latent: Draws ``n`` latent codes.
    :param decode: Latent codes and generator classes (one per row) → images in the estimator's range.
    :param objective: Matching objective of the client's gradient (``"matching"``).
    :param classify: Images → class probabilities of the target model (``"confidence"``).
    :return: The mapping task label → generator class, and a JSON-serialisable record of the scores.
    """
    spec.check(num_generator_classes)
    candidates = (
        [int(c) for c in spec.candidates] if spec.candidates is not None else list(range(num_generator_classes))
    )
    task_labels = sorted({int(t) for t in batch_labels.tolist()})
    assignment = dict.fromkeys(task_labels, candidates[0])
    scores: list[list[float]] = []
    for label in task_labels:
        if spec.scorer == "matching":
            score = score_classes_by_matching(
                spec, batch_labels, label, assignment, candidates, sample_latent, decode, objective
            )
        else:
            score = score_classes_by_confidence(spec, label, candidates, sample_latent, decode, classify)
        assignment[label] = candidates[int(score.argmax())]
        scores.append([float(v) for v in score.tolist()])
        top = torch.topk(score, min(2, score.numel())).values
        if spec.scorer == "confidence" and score.numel() > 1 and float(top[0] - top[1]) < CONFIDENCE_MARGIN:
            logger.warning(
                "Label mapping for task label %d: the best candidate class leads by only %.4f in probability, so "
                "the FL model barely tells the classes apart; consider AutoLabelMapping(scorer='matching') or an "
                "explicit mapping.",
                label,
                float(top[0] - top[1]),
            )
    record: dict[str, object] = {
        "scorer": spec.scorer,
        "candidates": candidates,
        "task_labels": task_labels,
        "scores": scores,
        "mapping": {str(t): c for t, c in assignment.items()},
    }
    return assignment, record
