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

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from art_gifd.federated import LocalTraining, TargetModel, simulate_update

if TYPE_CHECKING:
    from art_gifd.defenses.base import Defense

DISTANCES = ("cosine", "l2")


class SearchDiverged(RuntimeError):
    """
    The search's objective or its best candidate became NaN or infinite: there is no reconstruction to return (the
    attacks add their name and the settings that can cause it).
    """


def project_l1_ball(v: torch.Tensor, radius: float | torch.Tensor) -> torch.Tensor:
    """
    Euclidean projection of each row of ``v`` onto the l1 ball of the given radius.

    The projection soft-thresholds every entry by the row's ``θ``, the root of ``Σ max(|v_i| − θ, 0) = radius``.
    ``θ`` is found by Michelot's fixed point (Michelot 1986; Condat 2016): starting from ``θ = (‖v‖₁ − radius) / n``,
    ``θ ← (Σ_{|v_i| > θ} |v_i| − radius) / #{i : |v_i| > θ}`` rises monotonically and reaches the exact root once the
    set of entries above it stops shrinking, after a handful of passes. It computes what the sort-based algorithm
    (Duchi et al. 2008) does, to float rounding, without sorting each row (several times faster on the CPU for
    feature maps of thousands of entries).

    :param v: Tensor of shape ``(N, …)``; each of the N samples is projected separately.
    :param radius: Ball radius (scalar, or one per sample), positive.
    :return: The projection, same shape as ``v``.
    """
    flat = v.reshape(v.shape[0], -1)
    radius_t = torch.as_tensor(radius, dtype=flat.dtype, device=flat.device).reshape(-1, 1).expand(flat.shape[0], 1)
    mags = flat.abs()
    total = mags.sum(dim=1, keepdim=True)
    inside = total <= radius_t
    if flat.device.type == "cpu" and bool(inside.all()):  # nothing to project; the check is free off the GPU
        return v
    zero = torch.zeros((), dtype=flat.dtype, device=flat.device)
    theta = torch.where(inside, zero, (total - radius_t) / flat.shape[1])
    for _ in range(flat.shape[1] + 1):  # the set above θ shrinks at every pass until it is stable: at most n passes
        above = mags > theta
        count = above.sum(dim=1, keepdim=True)
        updated = ((mags * above).sum(dim=1, keepdim=True) - radius_t) / count.clamp_min(1)
        # θ only rises (held where rounding would lower it, or where it reached the largest entry and nothing is left
        # above it), so the passes end once the set above it stops changing
        updated = torch.where(inside | (count == 0), theta, torch.maximum(updated, theta))
        if torch.equal(updated, theta):
            break
        theta = updated
    projected = torch.where(inside, flat, torch.sign(flat) * (mags - theta).clamp_min(0.0))
    return projected.reshape(v.shape)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """
    Anisotropic total variation of each image, shape ``(N,)``: ``mean|x[..., :, 1:] − x[..., :, :-1]| +
    mean|x[..., 1:, :] − x[..., :-1, :]|``, the mean absolute horizontal neighbour difference plus the vertical one.
    """
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


def step_decay(
    steps: int, milestones: tuple[float, ...] = (3 / 8, 5 / 8, 7 / 8), gamma: float = 0.1
) -> Callable[[int], float]:
    """Learning-rate factor of Inverting Gradients: ×``gamma`` at each milestone (fractions of the steps)."""
    boundaries = [int(steps * m) for m in milestones]

    def factor(step: int) -> float:
        return gamma ** sum(step >= b for b in boundaries)

    return factor


def constant(steps: int) -> Callable[[int], float]:
    """Learning-rate factor 1 throughout."""
    return lambda step: 1.0


#: Learning-rate schedules a stage can use, by name: ``"cosine"`` (5% linear warm-up, then cosine decay),
#: ``"cosine-no-warmup"``, ``"step"`` (Inverting Gradients' ×0.1 at 3/8, 5/8, 7/8) and ``"constant"``.
SCHEDULES: dict[str, Callable[[int], Callable[[int], float]]] = {
    "cosine": warmup_cosine,
    "cosine-no-warmup": lambda steps: warmup_cosine(steps, warmup_fraction=0.0),
    "step": step_decay,
    "constant": constant,
}
#: What a stage hands on: its ``"best"`` iterate by matching loss, or its ``"last"`` one.
HAND_ON = ("best", "last")


class GradientMatcher:
    """
    Matching loss between the gradients of R candidate batches and the observed gradient.

    ``loss(images)`` takes images of shape ``(R * B, *input_shape)`` and returns one loss per restart, ``(R,)``:
    ``1 − cos`` of all parameter gradients concatenated (``"cosine"``) or their squared L2 distance (``"l2"``),
    differentiable with respect to the images (double backward). Labels are the fixed hard labels given at
    construction, or per-candidate soft labels (class probabilities) passed to :meth:`loss` when they are optimised
    too (DLG).

    Against a FedAvg client (``training`` given) the observed tensors are its weight update, and each candidate's
    "gradient" is the update of the same local training replayed on the candidate
    (:func:`~art_gifd.federated.simulate_update`, every step differentiated through).
    """

    def __init__(
        self,
        target: TargetModel,
        observed: list[torch.Tensor],
        labels: torch.Tensor | None,
        distance: str,
        batch_size: int | None = None,
        defense: Defense | None = None,
        training: LocalTraining | None = None,
        simulation_steps: int | None = None,
    ):
        """
        :param target: The FL model.
        :param observed: Observed per-parameter gradients, in parameter order, on the target's device.
        :param labels: Labels of the client batch, shape ``(B,)``, or ``None`` when soft labels are optimised.
        :param distance: ``"cosine"`` or ``"l2"``.
        :param batch_size: Client batch size ``B`` (default: the number of labels).
        :param defense: The client's defence, known to the attacker: if it is replayable (pruning, clipping,
                        quantisation, sign compression, Soteria), the dummy gradients pass through
                        :meth:`~art_gifd.defenses.base.Defense.replay` before matching (the adaptive attacker);
                        otherwise (noise, DP-SGD) it is ignored.
        :param training: The FedAvg client's local training (``None``: the observation is a FedSGD gradient).
        :param simulation_steps: Replay at most this many steps, merging consecutive ones
                                 (:meth:`~art_gifd.federated.LocalTraining.simulation`; ``None``: every step).
        """
        if distance not in DISTANCES:
            raise ValueError(f"Unknown distance '{distance}': use one of {DISTANCES}.")
        if labels is None and batch_size is None:
            raise ValueError("GradientMatcher needs labels or a batch size.")
        self.target = target
        self.observed = dict(zip(target.names, observed, strict=True))
        #: The parameters matched: all but those whose gradient vanishes in the client's mode
        #: (:attr:`~art_gifd.federated.TargetModel.inert_parameters`), whose observed entries are round-off.
        self.matched = [n for n in target.names if n not in target.inert_parameters]
        #: The matched observed gradients concatenated, ``(P,)``: the distances are a few whole-vector operations
        #: rather than a few per parameter tensor (a ResNet-18 has 62), which matters where kernel launches dominate.
        self.observed_flat = torch.cat([self.observed[n].flatten() for n in self.matched])
        self.observed_norm = self.observed_flat.norm()
        self.labels = labels
        self.batch_size = int(batch_size if batch_size is not None else labels.shape[0])
        self.distance = distance
        self.defense = defense if defense is not None and defense.replayable else None
        #: Whether the dummy gradients are passed through the client's defence (the adaptive attacker).
        self.adaptive = self.defense is not None
        self.training = training
        #: The local steps replayed on every candidate, ``None`` for a FedSGD gradient.
        self.plan = target.replay_plan(training, self.batch_size, simulation_steps) if training is not None else None
        # one candidate's "gradient" (params, x, y) -> name → tensor: the loss gradient, or the replayed update
        if training is None:
            self._one = torch.func.grad(target.loss)
        else:
            self._one = functools.partial(simulate_update, target.loss, training=training, plan=self.plan)
        self._grads_hard = torch.func.vmap(self._one, in_dims=(None, 0, None))
        self._grads_soft = torch.func.vmap(self._one, in_dims=(None, 0, 0))
        #: Parameters as leaves that take part in autograd, for the one-candidate path of :meth:`_gradients`.
        self._leaf_params = {n: p.detach().requires_grad_(True) for n, p in target.params.items()}

    def _gradients(self, x: torch.Tensor, labels: torch.Tensor, soft: bool) -> dict[str, torch.Tensor]:
        """
        Dummy gradients of ``R`` candidate batches ``x`` ``(R, B, …)``, each ``(R, *shape)``, differentiable in ``x``.

        One candidate batch (a single restart) takes plain ``torch.autograd.grad``: the same numbers as the vmapped
        path without its batching overhead, which is what a search that carries one restart runs most steps on
        (a replayed FedAvg training takes the same function as the vmapped path, unbatched).
        """
        if x.shape[0] > 1:
            return (self._grads_soft if soft else self._grads_hard)(self.target.params, x, labels)
        if self.training is not None:
            update = self._one(self.target.params, x[0], labels[0] if soft else labels)
            return {n: u.unsqueeze(0) for n, u in update.items()}
        params = self._leaf_params
        differentiable = torch.is_grad_enabled()  # as torch.func.grad: no graph to the images under no_grad
        with torch.enable_grad():
            loss = self.target.loss(params, x[0], labels[0] if soft else labels)
            # a parameter the forward pass does not reach (e.g. an auxiliary head that runs only in training) gets a
            # zero gradient, as the client's own gradient and the vmapped path give it
            grads = torch.autograd.grad(
                loss, list(params.values()), create_graph=differentiable, allow_unused=True, materialize_grads=True
            )
        return {n: g.unsqueeze(0) for n, g in zip(params, grads, strict=True)}

    def loss(self, images: torch.Tensor, soft_labels: torch.Tensor | None = None) -> torch.Tensor:
        """
        Matching loss per restart, shape ``(R,)``.

        :param images: Candidate images ``(R * B, *input_shape)``.
        :param soft_labels: Candidate label distributions ``(R * B, nb_classes)``; ``None`` uses the fixed labels.
        """
        x = self.target.preprocess(images)
        x = x.reshape(-1, self.batch_size, *x.shape[1:])
        if soft_labels is None:
            if self.labels is None:
                raise ValueError("No labels: pass soft_labels or build the matcher with labels.")
            grads = self._gradients(x, self.labels, soft=False)
        else:
            grads = self._gradients(x, soft_labels.reshape(x.shape[0], self.batch_size, -1), soft=True)
        if self.defense is not None:
            grads = self.defense.replay(grads, self.observed)
        flat = torch.cat([grads[n].flatten(1) for n in self.matched], dim=1)  # (R, P)
        return match_distance(flat, self.observed_flat, self.observed_norm, self.distance)


def match_distance(
    flat: torch.Tensor, observed: torch.Tensor, observed_norm: torch.Tensor, distance: str
) -> torch.Tensor:
    """
    Distance of each row of ``flat`` ``(N, P)`` to the observed gradient ``observed`` (``(P,)``, or ``(N, P)`` with
    ``observed_norm`` ``(N, 1)``: one observation per row), shape ``(N,)``.
    """
    if distance == "l2":
        return (flat - observed).pow(2).sum(dim=1)
    # 1 − cos(a, b) = ½‖a/|a| − b/|b|‖², computed in the second form: the first loses everything below float32's
    # rounding (about 1e-7) to cancellation, so near-exact reconstructions would all tie at a noisy floor and the
    # best-iterate tracking would keep an early one. Row-wise reductions: the same for any number of rows.
    unit = flat / (flat.norm(dim=1, keepdim=True) + 1e-12)
    return 0.5 * (unit - observed / (observed_norm + 1e-12)).pow(2).sum(dim=1)


class JointMatcher:
    """
    :class:`GradientMatcher` losses of ``T`` observations at once, as one vectorised computation.

    The observations may come from different model weights (clients of different rounds) of one architecture; each
    has its own labels. Candidate rows are grouped by observation: rows ``t·R·B … (t+1)·R·B − 1`` are the ``R``
    restarts of observation ``t`` (``R`` may change from stage to stage). ``loss`` returns ``(T · R,)`` losses equal
    (up to float rounding) to each matcher's own on its rows.
    """

    def __init__(self, matchers: list[GradientMatcher]):
        """
        :param matchers: One matcher per observation, all with labels and the same distance, batch size, local
                         training and parameter shapes.
        :raises ValueError: If the matchers cannot be searched together, naming the difference.
        """
        first = matchers[0]
        for t, m in enumerate(matchers):
            differences = [
                name
                for name, a, b in (
                    ("distance", m.distance, first.distance),
                    ("batch size", m.batch_size, first.batch_size),
                    ("parameter shapes", m.target.shapes, first.target.shapes),
                    ("parameter names", m.target.names, first.target.names),
                    ("matched parameters", m.matched, first.matched),
                    ("local training", _training_key(m.training), _training_key(first.training)),
                    ("defence", type(m.defense), type(first.defense)),
                )
                if a != b
            ]
            if m.labels is None:
                differences.append("labels (none)")
            if differences:
                raise ValueError(
                    f"Observation {t} cannot be searched together with observation 0: its {', '.join(differences)} "
                    "differ. Search observations with the same model, batch size, labels setting and local training "
                    "together."
                )
        self.matchers = matchers
        self.batch_size = first.batch_size
        self.adaptive = first.adaptive
        names = first.target.names
        self.names = names
        buffer_names = list(first.target.buffers)
        self.labels = torch.stack([m.labels for m in matchers])  # (T, B)
        self.observed_flat = torch.stack([m.observed_flat for m in matchers])  # (T, P)
        self.observed_norm = torch.stack([m.observed_norm for m in matchers]).reshape(-1, 1)
        module, loss_fn, training, plan = first.target.module, first.target.loss_fn, first.training, first.plan

        def one(params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            def loss(p: dict, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
                return loss_fn(torch.func.functional_call(module, (p, buffers), (xx,)), yy)

            if training is None:
                return torch.func.grad(loss)(params, x, y)
            return simulate_update(loss, params, x, y, training=training, plan=plan)

        #: Whether every observation was made at the same weights (the clients of one round): the candidates of all
        #: observations are then rows of one batch at unbatched weights, the computation of one observation's restarts.
        self.shared_weights = all(
            torch.equal(m.target.params[n], first.target.params[n]) for m in matchers for n in names
        ) and all(torch.equal(m.target.buffers[n], first.target.buffers[n]) for m in matchers for n in buffer_names)
        if self.shared_weights:
            self.params, self.buffers = first.target.params, first.target.buffers
            self._grads = torch.func.vmap(one, in_dims=(None, None, 0, 0))
        else:  # outer: observations (weights, buffers, candidates, labels); inner: the restarts of one observation
            self.params = {n: torch.stack([m.target.params[n] for m in matchers]) for n in names}
            self.buffers = {n: torch.stack([m.target.buffers[n] for m in matchers]) for n in buffer_names}
            self._grads = torch.func.vmap(torch.func.vmap(one, in_dims=(None, None, 0, None)), in_dims=(0, 0, 0, 0))

    def loss(self, images: torch.Tensor) -> torch.Tensor:
        """Matching loss per row group, ``(T · R,)``, of candidate images ``(T · R · B, *input_shape)``."""
        count, first = len(self.matchers), self.matchers[0]
        restarts = images.shape[0] // (count * self.batch_size)
        x = torch.cat([m.target.preprocess(c) for m, c in zip(self.matchers, images.chunk(count), strict=True)])
        if self.shared_weights:
            x = x.reshape(count * restarts, self.batch_size, *x.shape[1:])
            labels = self.labels.repeat_interleave(restarts, dim=0)  # (T · R, B)
            grads = self._grads(self.params, self.buffers, x, labels)  # name -> (T · R, *shape)
        else:
            x = x.reshape(count, restarts, self.batch_size, *x.shape[1:])
            grads = {n: g.flatten(0, 1) for n, g in self._grads(self.params, self.buffers, x, self.labels).items()}
        if self.adaptive:
            replayed = [
                m.defense.replay({n: g[t * restarts : (t + 1) * restarts] for n, g in grads.items()}, m.observed)
                for t, m in enumerate(self.matchers)
            ]
            flat = torch.cat([torch.cat([r[n].flatten(1) for n in first.matched], dim=1) for r in replayed])
        else:
            flat = torch.cat([grads[n].flatten(1) for n in first.matched], dim=1)  # (T · R, P)
        observed = self.observed_flat.repeat_interleave(restarts, dim=0)
        norms = self.observed_norm.repeat_interleave(restarts, dim=0)
        return match_distance(flat, observed, norms, first.distance)


def _training_key(training: LocalTraining | None) -> object:
    return None if training is None else training.describe()


OPTIMISERS = ("adam", "lbfgs", "cma")

#: A representation: the tensors one stage optimises, each with a leading dimension of ``R * n`` rows (``n`` rows
#: per restart, e.g. ``B`` images or latent codes, or one set of generator weights per image).
Variables = list[torch.Tensor]
#: Evaluates a representation: (total objective, matching loss), each per restart.
Evaluate = Callable[[Variables], tuple[torch.Tensor, torch.Tensor]]
#: Progress callback, called once per step with the step index.
Report = Callable[[int], None]


@dataclass
class SearchStage:
    """
    One stage of a search.

    :param name: Stage name (e.g. ``"latent"``, ``"feature-2"``, ``"pixel"``).
    :param init: Initial representation: tensors whose leading dimension is a multiple of the number of restarts.
    :param decode: Maps the representation to images in the estimator's input range, shape ``(R * B, C, H, W)``.
    :param project: Constraint applied to the representation after every step (``None``: unconstrained).
    :param soft_labels: Maps the representation to label distributions ``(R * B, K)`` when labels are optimised.
    :param optimiser: ``"adam"`` (warm-up + cosine decay), ``"lbfgs"`` (strong-Wolfe line search; a step is one
                      objective evaluation) or ``"cma"`` (gradient-free CMA-ES on a single variable; a step is one
                      generation).
    :param learning_rates: Learning rate per variable (default: the search's learning rate for all).
    :param signed: Adam on the sign of the gradient (Inverting Gradients).
    :param cma_sigma: Initial step size of CMA-ES.
    :param cma_population: Population size of CMA-ES (``None``: the ``cma`` package's default).
    :param cma_chunk: Candidates CMA-ES scores per batched call (``None``: every restart's whole population at
                      once). Memory grows with it (one dummy gradient per candidate), the result does not change.
    :param restart_ids: The restarts of the search that this stage continues, in row order (``None``: all of them).
                        A stage may carry only the best restarts of the previous one (successive halving).
    :param steps: Length of this stage (``None``: the search's steps per stage).
    :param pool: Draws per row of ``init`` (a single variable): ``init`` holds ``pool`` candidate groups per restart,
                 and the restarts start from the groups that match best (:func:`screen_pool`) before the first step.
    """

    name: str
    init: Variables
    decode: Callable[[Variables], torch.Tensor]
    project: Callable[[Variables], Variables] | None = None
    soft_labels: Callable[[Variables], torch.Tensor] | None = None
    optimiser: str = "adam"
    learning_rates: list[float] | None = None
    signed: bool = False
    cma_sigma: float = 0.5
    cma_population: int | None = None
    cma_chunk: int | None = None
    restart_ids: list[int] | None = None
    steps: int | None = None
    pool: int = 1


@dataclass
class StageOutcome:
    """
    Best candidate of one stage: per-restart representation, images, matching loss, steps run, and which restarts
    of the search its rows are.
    """

    name: str
    representation: Variables
    images: torch.Tensor
    loss: torch.Tensor
    steps: int = 0
    restart_ids: list[int] = field(default_factory=list)

    def best_restarts(self, k: int) -> list[int]:
        """Positions (row groups) of the ``k`` restarts with the lowest matching loss, best first."""
        return torch.argsort(self.loss)[:k].tolist()

    def take(self, positions: list[int]) -> tuple[Variables, list[int]]:
        """The representation of the restarts at ``positions`` (row groups, in that order) and their restart ids."""
        restarts = self.loss.shape[0]
        index = torch.as_tensor(positions, device=self.loss.device)
        taken = []
        for value in self.representation:
            grouped = value.reshape(restarts, value.shape[0] // restarts, *value.shape[1:])
            taken.append(grouped[index].reshape(-1, *value.shape[1:]))
        return taken, [self.restart_ids[p] for p in positions]


def stage_restarts(stage: SearchStage, num_restarts: int) -> list[int]:
    """The restarts of the search a stage continues, in row order."""
    return list(range(num_restarts)) if stage.restart_ids is None else list(stage.restart_ids)


def join_stages(stages: list[SearchStage], num_restarts: int) -> SearchStage | None:
    """
    One stage searching the stages of ``T`` observations together, their rows stacked in order; ``None`` if they
    cannot be (only Adam stages of the same shape, schedule and constraints can: Adam moves every element on its own,
    so the joint stage takes the same steps as the stages one at a time).
    """
    first = stages[0]
    restarts = len(stage_restarts(first, num_restarts))
    same = all(
        s.optimiser == "adam"
        and s.soft_labels is None
        and s.steps == first.steps
        and s.pool == first.pool
        and s.signed == first.signed
        and s.learning_rates == first.learning_rates
        and (s.project is None) == (first.project is None)
        and len(stage_restarts(s, num_restarts)) == restarts
        and [v.shape for v in s.init] == [v.shape for v in first.init]
        for s in stages
    )
    if not same:
        return None

    def parts(variables: Variables) -> list[Variables]:  # each observation's rows (of the stage, or of one draw)
        return [list(p) for p in zip(*(v.chunk(len(stages)) for v in variables), strict=True)]

    def decode(variables: Variables) -> torch.Tensor:
        return torch.cat([s.decode(p) for s, p in zip(stages, parts(variables), strict=True)])

    def project(variables: Variables) -> Variables:
        projected = [s.project(p) for s, p in zip(stages, parts(variables), strict=True)]
        return [torch.cat(v) for v in zip(*projected, strict=True)]

    return SearchStage(
        first.name,
        [torch.cat(v) for v in zip(*(s.init for s in stages), strict=True)],
        decode,
        project if first.project is not None else None,
        learning_rates=first.learning_rates,
        signed=first.signed,
        restart_ids=list(range(restarts * len(stages))),
        steps=first.steps,
        pool=first.pool,
    )


def screen_pool(stage: SearchStage, loss: Callable[[torch.Tensor], torch.Tensor], observations: int = 1) -> SearchStage:
    """
    The stage started from its best draws: of the ``pool`` candidate groups per restart in ``stage.init``, the
    restarts' count with the lowest matching loss, per observation.

    The rows of ``init`` are ``observations`` blocks (those of :func:`join_stages`), each ``pool`` draws of the
    observation's ``R · B`` rows; draw ``j`` of every observation is scored in one call of ``loss`` (the rows and
    memory of one search step, without a graph), so searching observations together screens them together. Each
    observation keeps the same groups as when screened alone (up to float rounding).

    :param loss: Matching loss per restart group of a draw's decoded images (``(observations · R,)``).
    """
    if stage.pool == 1:
        return stage
    (draws,) = stage.init
    pool = stage.pool
    per_draw = draws.shape[0] // (observations * pool)  # R · B rows of one observation
    blocks = draws.reshape(observations, pool, per_draw, *draws.shape[1:])
    with torch.no_grad():
        scores = [loss(stage.decode([blocks[:, j].flatten(0, 1)])).reshape(observations, -1) for j in range(pool)]
    restarts = scores[0].shape[1]
    losses = torch.stack(scores, dim=1).flatten(1)  # (observations, pool · R): draw j's restart r at j · R + r
    best = torch.argsort(losses, dim=1)[:, :restarts]
    groups = blocks.reshape(observations, pool * restarts, per_draw // restarts, *draws.shape[1:])
    chosen = groups[torch.arange(observations, device=best.device)[:, None], best]
    return dataclasses.replace(stage, init=[chosen.reshape(-1, *draws.shape[1:])], pool=1)


def split_outcome(outcome: StageOutcome, stages: list[SearchStage], num_restarts: int) -> list[StageOutcome]:
    """The outcome of a :func:`join_stages` stage, as each observation's own stage would have returned it."""
    count = len(stages)
    split = [v.chunk(count) for v in outcome.representation]
    return [
        StageOutcome(
            outcome.name,
            [v[t] for v in split],
            outcome.images.chunk(count)[t],
            outcome.loss.chunk(count)[t],
            outcome.steps,
            stage_restarts(stage, num_restarts),
        )
        for t, stage in enumerate(stages)
    ]


#: Forms of the norm prior ``N(x)`` of :class:`Objective`, each a per-image mean over the image's elements.
NORM_FORMS = ("mean_square", "rms")


def image_norm(images: torch.Tensor, form: str = "mean_square") -> torch.Tensor:
    """
    Norm prior of each image, shape ``(N,)``: ``mean(x²)`` (``"mean_square"``) or ``sqrt(mean(x²))`` (``"rms"``).

    Both are means over the ``C·H·W`` elements of one image, so a weight means the same for any image size.
    """
    mean_square = images.pow(2).flatten(1).mean(dim=1)
    if form == "mean_square":
        return mean_square
    if form == "rms":
        return (mean_square + 1e-12).sqrt()
    raise ValueError(f"Unknown norm form '{form}': use one of {NORM_FORMS}.")


@dataclass
class Objective:
    """
    Matching loss plus image priors, per restart::

        match + tv_weight · mean_b TV(x_b) + norm_weight · mean_b N(x_b) + Σ extra

    ``TV(x)`` is the mean absolute horizontal plus the mean absolute vertical neighbour difference of one image
    (:func:`total_variation`) and ``N(x)`` its mean square or root mean square (:func:`image_norm`); both are
    per-image means averaged over the ``B`` images of a candidate batch, so a weight means the same for any image
    size, channel count and batch size.
    Near a good reconstruction the matching loss is 1e-7 … 1e-5: a prior's weighted value at the true image must be
    far smaller, or it pulls the search away from the truth. ``extra`` holds attack-specific regularisers, each
    mapping images ``(R * B, …)`` to a penalty per restart.
    """

    matcher: GradientMatcher
    tv_weight: float = 1e-4
    norm_weight: float = 0.0
    norm_form: str = "mean_square"
    extra: list[Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=list)

    def __call__(
        self, images: torch.Tensor, soft_labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (total objective, matching loss), both per restart ``(R,)``."""
        match = self.matcher.loss(images, soft_labels)
        return match + self.priors(images), match

    def priors(self, images: torch.Tensor) -> torch.Tensor:
        """The image priors and ``extra`` terms of the objective, per restart ``(R,)``."""
        reg = self.tv_weight * total_variation(images)
        if self.norm_weight:
            reg = reg + self.norm_weight * image_norm(images, self.norm_form)
        total = reg.reshape(-1, self.matcher.batch_size).mean(dim=1)
        for term in self.extra:
            total = total + term(images)
        return total


@dataclass
class JointObjective:
    """
    The objectives of ``T`` observations searched together: the matching losses from one :class:`JointMatcher`
    call, each observation's priors on its own rows (the ``T`` equal row blocks, in order).
    """

    matcher: JointMatcher
    objectives: list[Objective]

    def __call__(
        self, images: torch.Tensor, soft_labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (total objective, matching loss), both per row group ``(T · R,)``."""
        if soft_labels is not None:
            raise ValueError("Observations searched together use fixed labels.")
        match = self.matcher.loss(images)
        priors = [o.priors(c) for o, c in zip(self.objectives, images.chunk(len(self.objectives)), strict=True)]
        return match + torch.cat(priors), match


@dataclass
class SearchSettings:
    """
    Optimiser settings shared by every stage.

    ``schedule`` is the Adam learning-rate schedule (see :data:`SCHEDULES`). ``hand_on`` is what each stage returns:
    its ``"best"`` iterate by matching loss (every evaluated iterate competes) or its ``"last"`` one.
    """

    steps: int
    learning_rate: float
    num_restarts: int
    progress: tqdm | None = field(default=None, repr=False)
    seed: int = 0
    schedule: str = "cosine"
    hand_on: str = "best"


class _BestTracker:
    """Keeps, per restart, the representation with the lowest matching loss seen so far (no host syncs)."""

    def __init__(self, variables: Variables, restarts: int) -> None:
        self.restarts = restarts
        self.loss = torch.full((restarts,), math.inf, device=variables[0].device)
        self.variables = [v.detach().clone() for v in variables]

    def update(self, match: torch.Tensor, variables: Variables) -> None:
        better = match.detach() < self.loss
        self.loss = torch.where(better, match.detach(), self.loss)
        for i, value in enumerate(variables):
            rows = value.shape[0] // self.restarts
            mask = better.repeat_interleave(rows).reshape(-1, *([1] * (value.dim() - 1)))
            self.variables[i] = torch.where(mask, value.detach(), self.variables[i])


def run_stage(stage: SearchStage, objective: Objective | JointObjective, settings: SearchSettings) -> StageOutcome:
    """
    Optimise one stage and return its best iterate per restart.

    Every iterate that is evaluated (including the initial and the final one) competes for the stage's candidate. A
    stage with a ``pool`` of draws starts from the best (:func:`screen_pool`). Apart from occasional progress reports,
    no host synchronisation happens inside the loop.

    :raises SearchDiverged: If an Adam stage lost every candidate (its objective NaN or infinite at some step), or a
                            gradient's square overflowed Adam's second moment everywhere (every step then 0).
    """
    if stage.optimiser not in OPTIMISERS:
        raise ValueError(f"Unknown optimiser '{stage.optimiser}': use one of {OPTIMISERS}.")
    if settings.hand_on not in HAND_ON:
        raise ValueError(f"Unknown hand_on '{settings.hand_on}': use one of {HAND_ON}.")
    gradient_free = stage.optimiser == "cma"
    if stage.pool > 1:  # the draws of every observation of a joint objective are scored together
        observations = len(objective.matcher.matchers) if isinstance(objective, JointObjective) else 1
        stage = screen_pool(stage, objective.matcher.loss, observations)
    restart_ids = stage_restarts(stage, settings.num_restarts)
    if not restart_ids or any(v.shape[0] % len(restart_ids) for v in stage.init):
        raise ValueError(f"Stage '{stage.name}': its variables' rows do not split into {len(restart_ids)} restarts.")
    if stage.steps is not None:
        settings = dataclasses.replace(settings, steps=int(stage.steps))
    variables = [v.detach().clone().requires_grad_(not gradient_free) for v in stage.init]
    tracker = _BestTracker(variables, len(restart_ids))

    def evaluate(values: Variables) -> tuple[torch.Tensor, torch.Tensor]:
        labels = stage.soft_labels(values) if stage.soft_labels is not None else None
        return objective(stage.decode(values), labels)

    def report(step: int) -> None:
        if settings.progress is not None and not settings.progress.disable:
            settings.progress.update(1)
            if step % 100 == 0:  # the only host synchronisation, and only with a visible progress bar
                settings.progress.set_postfix(stage=stage.name, loss=f"{tracker.loss.min().item():.4f}")

    if gradient_free:
        steps = _run_cma(stage, evaluate, tracker, settings, report)
    elif stage.optimiser == "lbfgs":
        steps = _run_lbfgs(stage, variables, evaluate, tracker, settings, report)
    else:
        steps = _run_adam(stage, variables, evaluate, tracker, settings, report)
    with torch.no_grad():
        if settings.hand_on == "last" and not gradient_free:
            last = [v.detach().clone() for v in variables]
            return StageOutcome(stage.name, last, stage.decode(last), evaluate(last)[1], steps, restart_ids)
        if not gradient_free:
            tracker.update(evaluate(variables)[1], variables)
        images = stage.decode(tracker.variables)
    return StageOutcome(stage.name, tracker.variables, images.detach(), tracker.loss, steps, restart_ids)


def _param_groups(stage: SearchStage, variables: Variables, learning_rate: float) -> list[dict]:
    rates = stage.learning_rates or [learning_rate] * len(variables)
    if len(rates) != len(variables):
        raise ValueError(f"Stage '{stage.name}' has {len(variables)} variables but {len(rates)} learning rates.")
    return [{"params": [v], "lr": lr} for v, lr in zip(variables, rates, strict=True)]


def _run_adam(
    stage: SearchStage,
    variables: Variables,
    evaluate: Evaluate,
    tracker: _BestTracker,
    settings: SearchSettings,
    report: Report,
) -> int:
    optimiser = torch.optim.Adam(_param_groups(stage, variables, settings.learning_rate))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, SCHEDULES[settings.schedule](settings.steps))
    # A NaN or infinite objective, or a gradient whose square overflows float32 in Adam's second moment, stops the
    # candidates for good (NaN steps, or steps of 0) and the tracker keeps what it saw before, often the start. Kept on
    # the device and read once, after the loop, to add no host sync per step. A candidate whose objective stayed finite
    # keeps the stage going (the tracker passes over the others); every candidate lost is an error.
    alive: torch.Tensor | None = None
    for step in range(settings.steps):
        optimiser.zero_grad(set_to_none=True)
        total, match = evaluate(variables)
        alive = total.detach().isfinite() if alive is None else alive & total.detach().isfinite()
        total.sum().backward()
        tracker.update(match, variables)
        if stage.signed:
            for v in variables:
                v.grad.sign_()
        optimiser.step()
        schedule.step()
        if stage.project is not None:
            with torch.no_grad():
                for v, projected in zip(variables, stage.project(variables), strict=True):
                    v.copy_(projected)
        report(step)
    if alive is None:  # no step
        return 0
    going = alive.any()
    for state in optimiser.state.values():  # a second moment overflowed everywhere makes every step 0, for good
        going &= state["exp_avg_sq"].isfinite().any()
    if not bool(going):
        raise SearchDiverged(
            f"the search diverged in stage '{stage.name}': its objective (matching loss plus priors) or its gradient "
            "overflowed float32 or became NaN, so its candidates stopped moving"
        )
    return settings.steps


def _run_lbfgs(
    stage: SearchStage,
    variables: Variables,
    evaluate: Evaluate,
    tracker: _BestTracker,
    settings: SearchSettings,
    report: Report,
) -> int:
    if stage.project is not None:
        raise ValueError(f"Stage '{stage.name}': L-BFGS does not support projections.")
    if stage.learning_rates is not None:
        raise ValueError(f"Stage '{stage.name}': L-BFGS uses one learning rate for all variables.")
    optimiser = torch.optim.LBFGS(
        variables,
        lr=settings.learning_rate,
        max_iter=settings.steps,
        max_eval=settings.steps,
        history_size=100,
        tolerance_grad=0.0,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )
    count = 0

    def closure() -> torch.Tensor:
        nonlocal count
        optimiser.zero_grad(set_to_none=True)
        total, match = evaluate(variables)
        loss = total.sum()
        loss.backward()
        tracker.update(match, variables)
        report(count)
        count += 1
        return loss

    while count < settings.steps:
        before = count
        optimiser.step(closure)
        if count == before:  # converged: no evaluation left to do
            break
    return count


#: Most numbers CMA-ES searches per restart: its full covariance matrix then takes 800 MB (float64).
MAX_CMA_DIMENSION = 10_000


def _run_cma(
    stage: SearchStage, evaluate: Evaluate, tracker: _BestTracker, settings: SearchSettings, report: Report
) -> int:
    """
    CMA-ES on the stage's variable. Each restart samples from its own seeded generator (the ``cma`` package's
    ``randn`` option; ``seed=nan`` keeps it from seeding numpy's global one): searches in several threads stay
    independent, and the caller's numpy random state is left alone. The package installs warnings filters for the
    whole process on import and on its first search: they are put back as they were.
    """
    with warnings.catch_warnings():
        return _cma_search(stage, evaluate, tracker, settings, report)


def _cma_search(
    stage: SearchStage, evaluate: Evaluate, tracker: _BestTracker, settings: SearchSettings, report: Report
) -> int:
    import cma

    if len(stage.init) != 1:
        raise ValueError(f"Stage '{stage.name}': CMA-ES searches exactly one variable, got {len(stage.init)}.")
    init = stage.init[0].detach()
    restarts = tracker.restarts
    rows = init.shape[0] // restarts
    starts = init.reshape(restarts, -1).double().cpu().numpy()
    dimension = starts.shape[1]
    if dimension > MAX_CMA_DIMENSION:  # the package keeps a full covariance matrix and decomposes it
        raise ValueError(
            f"Stage '{stage.name}': CMA-ES would search {dimension:,} numbers per restart ({rows} image(s) × "
            f"{dimension // rows:,} latent numbers), and its {dimension:,}×{dimension:,} covariance alone needs "
            f"{8 * dimension**2 / 2**30:,.1f} GiB; it suits up to {MAX_CMA_DIMENSION:,}. Use a generator with a "
            "smaller latent or a smaller batch, or a gradient-based search (GIAS, GIFD)."
        )
    options: dict[str, Any] = {"seed": np.nan, "verbose": -9, "maxiter": settings.steps}
    if stage.cma_population is not None:
        options["popsize"] = stage.cma_population

    def sampler(seed: int) -> Callable[[int, int], np.ndarray]:
        generator = np.random.default_rng(seed)
        return lambda count, size: generator.standard_normal((count, size))

    strategies = [
        cma.CMAEvolutionStrategy(start, stage.cma_sigma, {**options, "randn": sampler(settings.seed + 1 + r)})
        for r, start in enumerate(starts)
    ]
    population = strategies[0].popsize
    with torch.no_grad():
        for step in range(settings.steps):
            asked = [np.asarray(es.ask()) for es in strategies]  # R × (P, D)
            candidates = torch.as_tensor(np.stack(asked), dtype=init.dtype, device=init.device)
            flat = candidates.reshape(restarts * population * rows, *init.shape[1:])
            chunk = (stage.cma_chunk or restarts * population) * rows
            losses = torch.cat([evaluate([part])[1] for part in flat.split(chunk)]).reshape(restarts, population)
            host = losses.double().cpu().numpy()
            for es, solutions, values in zip(strategies, asked, host, strict=True):
                es.tell(list(solutions), values.tolist())
            best = losses.argmin(dim=1)
            chosen = candidates[torch.arange(restarts), best].reshape(restarts * rows, *init.shape[1:])
            tracker.update(losses.gather(1, best[:, None]).squeeze(1), [chosen])
            report(step)
    return settings.steps


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
    :param steps: Optimisation steps run per restart, summed over stages (objective evaluations for L-BFGS,
                  generations for CMA-ES).
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


def select_best(
    outcomes: list[StageOutcome], batch_size: int, num_restarts: int, competing: list[int] | None = None
) -> tuple[int, int, torch.Tensor, np.ndarray]:
    """
    The best candidate over the competing stages and all restarts by matching loss.

    :param outcomes: Every stage's outcome, in order.
    :param batch_size: Client batch size ``B``.
    :param num_restarts: Restarts of the search; a stage that did not continue a restart has loss ``inf`` there.
    :param competing: Indices of the stages whose candidates compete (``None``: every stage).
    :return: (stage index, restart index, images of that candidate ``(B, …)``, losses of every stage
             ``(stages, restarts)``).
    """
    losses = np.full((len(outcomes), num_restarts), np.inf)
    for i, outcome in enumerate(outcomes):
        losses[i, outcome.restart_ids] = outcome.loss.detach().cpu().numpy()
    eligible = losses.copy()
    if competing is not None:
        eligible[[i for i in range(len(outcomes)) if i not in competing]] = np.inf
    stage, restart = np.unravel_index(int(np.argmin(eligible)), losses.shape)
    chosen = outcomes[stage]
    images = chosen.images.reshape(-1, batch_size, *chosen.images.shape[1:])[chosen.restart_ids.index(int(restart))]
    return int(stage), int(restart), images, losses
