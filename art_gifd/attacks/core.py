"""
The gradient-matching core shared by every attack.

An attack is a sequence of :class:`SearchStage` s. Each stage optimises one *representation* (pixels, a latent code,
an intermediate generator feature) that a ``decode`` function turns into images, under an optional ``project``
constraint. All restarts (and all images of the client batch) are one tensor of shape ``(R * B, …)``: one Adam
optimiser moves them together, and :class:`GradientMatcher` computes the R dummy gradients in one vectorised call
(``torch.func.vmap`` over ``torch.func.grad``), so restarts cost one batched computation, not a Python loop.

Each stage hands on, per restart, its *best* iterate by matching loss (never just its last), and every stage's best
candidate competes for the final output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from art_gifd.federated import TargetModel

DISTANCES = ("cosine", "l2")


def project_l1_ball(v: torch.Tensor, radius: float | torch.Tensor) -> torch.Tensor:
    """
    Euclidean projection of each row of ``v`` onto the l1 ball of the given radius (sort-based, Duchi et al. 2008).

    :param v: Tensor of shape ``(N, …)``; each of the N samples is projected separately.
    :param radius: Ball radius (scalar, or one per sample), positive.
    :return: The projection, same shape as ``v``.
    """
    flat = v.reshape(v.shape[0], -1)
    radius_t = torch.as_tensor(radius, dtype=flat.dtype, device=flat.device).reshape(-1, 1).expand(flat.shape[0], 1)
    mags = flat.abs()
    sorted_mags = torch.sort(mags, dim=1, descending=True).values
    cumsum = sorted_mags.cumsum(dim=1)
    ks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    cond = sorted_mags - (cumsum - radius_t) / ks > 0
    rho = cond.to(flat.dtype).cumsum(dim=1).argmax(dim=1, keepdim=True)  # last index where cond holds
    theta = ((cumsum.gather(1, rho) - radius_t) / (rho + 1).to(flat.dtype)).clamp_min(0.0)
    inside = mags.sum(dim=1, keepdim=True) <= radius_t
    projected = torch.where(inside, flat, torch.sign(flat) * (mags - theta).clamp_min(0.0))
    return projected.reshape(v.shape)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation (mean absolute neighbour difference) of each image, shape ``(N,)``."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(dim=1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(dim=1)
    return dx + dy


def warmup_cosine(steps: int, warmup_fraction: float = 0.05) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over the first ``warmup_fraction`` of the steps, then cosine decay."""
    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


class GradientMatcher:
    """
    Matching loss between the gradients of R candidate batches and the observed gradient.

    ``loss(images)`` takes images of shape ``(R * B, *input_shape)`` and returns one loss per restart, ``(R,)``:
    ``1 − cos`` of all parameter gradients concatenated (``"cosine"``) or their squared L2 distance (``"l2"``),
    differentiable with respect to the images (double backward).
    """

    def __init__(self, target: TargetModel, observed: list[torch.Tensor], labels: torch.Tensor, distance: str):
        """
        :param target: The FL model.
        :param observed: Observed per-parameter gradients, in parameter order, on the target's device.
        :param labels: Labels of the client batch, shape ``(B,)``.
        :param distance: ``"cosine"`` or ``"l2"``.
        """
        if distance not in DISTANCES:
            raise ValueError(f"Unknown distance '{distance}': use one of {DISTANCES}.")
        self.target = target
        self.observed = dict(zip(target.names, observed, strict=True))
        self.observed_norm = torch.sqrt(sum((g * g).sum() for g in observed))
        self.labels = labels
        self.batch_size = int(labels.shape[0])
        self.distance = distance
        self._grads = torch.func.vmap(torch.func.grad(target.loss), in_dims=(None, 0, None))

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """Matching loss per restart, shape ``(R,)``."""
        x = self.target.preprocess(images)
        x = x.reshape(-1, self.batch_size, *x.shape[1:])
        grads = self._grads(self.target.params, x, self.labels)
        if self.distance == "l2":
            return sum(((grads[n] - t) ** 2).flatten(1).sum(dim=1) for n, t in self.observed.items())
        dot = sum((grads[n] * t).flatten(1).sum(dim=1) for n, t in self.observed.items())
        norm = torch.sqrt(sum((grads[n] ** 2).flatten(1).sum(dim=1) for n in self.observed))
        return 1.0 - dot / (norm * self.observed_norm + 1e-12)


@dataclass
class SearchStage:
    """
    One stage of a search.

    :param name: Stage name (e.g. ``"latent"``, ``"feature-2"``, ``"pixel"``).
    :param init: Initial representation, shape ``(R * B, …)``.
    :param decode: Maps the representation to images in the estimator's input range, shape ``(R * B, C, H, W)``.
    :param project: Constraint applied to the representation after every step (``None``: unconstrained).
    """

    name: str
    init: torch.Tensor
    decode: Callable[[torch.Tensor], torch.Tensor]
    project: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class StageOutcome:
    """Best candidate of one stage: per-restart representation, images and matching loss."""

    name: str
    representation: torch.Tensor
    images: torch.Tensor
    loss: torch.Tensor


@dataclass
class Objective:
    """Matching loss plus image priors: ``match + tv_weight · TV + norm_weight · ||x||²`` per restart."""

    matcher: GradientMatcher
    tv_weight: float = 1e-4
    norm_weight: float = 1e-6

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (total objective, matching loss), both per restart ``(R,)``."""
        match = self.matcher.loss(images)
        batch = self.matcher.batch_size
        reg = self.tv_weight * total_variation(images) + self.norm_weight * images.pow(2).flatten(1).sum(dim=1)
        return match + reg.reshape(-1, batch).sum(dim=1), match


@dataclass
class SearchSettings:
    """Optimiser settings shared by every stage."""

    steps: int
    learning_rate: float
    num_restarts: int
    verbose: bool = True
    progress: tqdm | None = field(default=None, repr=False)


def run_stage(stage: SearchStage, objective: Objective, settings: SearchSettings) -> StageOutcome:
    """
    Optimise one stage with Adam (warm-up + cosine decay) and return its best iterate per restart.

    Every iterate that is evaluated (including the initial one and the final one) competes; no host synchronisation
    happens inside the loop except for occasional progress reports.
    """
    restarts = settings.num_restarts
    param = stage.init.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([param], lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, warmup_cosine(settings.steps))
    best_loss = torch.full((restarts,), math.inf, device=param.device)
    best_param = param.detach().clone()
    per_restart = param.shape[0] // restarts

    def keep_best(match: torch.Tensor, value: torch.Tensor) -> None:
        nonlocal best_loss, best_param
        better = match < best_loss
        best_loss = torch.where(better, match, best_loss)
        mask = better.repeat_interleave(per_restart).reshape(-1, *([1] * (value.dim() - 1)))
        best_param = torch.where(mask, value, best_param)

    for step in range(settings.steps):
        optimiser.zero_grad(set_to_none=True)
        total, match = objective(stage.decode(param))
        total.sum().backward()
        keep_best(match.detach(), param.detach())
        optimiser.step()
        schedule.step()
        if stage.project is not None:
            with torch.no_grad():
                param.copy_(stage.project(param))
        if settings.progress is not None:
            settings.progress.update(1)
            if step % 100 == 0:
                settings.progress.set_postfix(stage=stage.name, loss=f"{best_loss.min().item():.4f}")
    with torch.no_grad():
        _, match = objective(stage.decode(param))
        keep_best(match, param.detach())
        images = stage.decode(best_param)
    return StageOutcome(stage.name, best_param, images.detach(), best_loss)


@dataclass
class ReconstructionResult:
    """
    What an attack returns besides the images.

    :param images: Reconstructed batch, float32 NCHW in the estimator's input range.
    :param labels: Labels used for the reconstruction, one per image.
    :param labels_inferred: Whether the labels were inferred from the gradient (``False``: given by the caller).
    :param stage_names: Names of the stages searched, in order.
    :param stage_losses: Matching loss of each stage's best candidate, shape ``(num_stages, num_restarts)``.
    :param best_stage: Index of the stage whose candidate was returned.
    :param best_restart: Index of the restart whose candidate was returned.
    :param best_loss: Matching loss of the returned candidate.
    :param steps: Optimisation steps run per restart (summed over stages).
    :param seconds: Wall-clock time of the search.
    :param seed: Seed that generated the random initialisations.
    :param extra: Attack-specific details (e.g. the generator classes used).
    """

    images: np.ndarray
    labels: np.ndarray
    labels_inferred: bool
    stage_names: list[str]
    stage_losses: np.ndarray
    best_stage: int
    best_restart: int
    best_loss: float
    steps: int
    seconds: float
    seed: int
    extra: dict[str, object] = field(default_factory=dict)


def select_best(outcomes: list[StageOutcome], batch_size: int) -> tuple[int, int, torch.Tensor, np.ndarray]:
    """
    The best candidate over all stages and restarts by matching loss.

    :return: (stage index, restart index, images of that candidate ``(B, …)``, losses ``(stages, restarts)``).
    """
    losses = torch.stack([o.loss for o in outcomes]).cpu().numpy()
    stage, restart = np.unravel_index(int(np.argmin(losses)), losses.shape)
    images = outcomes[stage].images.reshape(-1, batch_size, *outcomes[stage].images.shape[1:])[restart]
    return int(stage), int(restart), images, losses
