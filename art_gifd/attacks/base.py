"""
Base class of every gradient-inversion attack: the ART contract, validation and the staged search loop.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import dataclasses
import itertools
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from art.attacks.attack import InferenceAttack
from art.estimators.classification import PyTorchClassifier
from tqdm.auto import tqdm

from art_gifd.attacks.core import (
    DISTANCES,
    NORM_FORMS,
    SCHEDULES,
    GradientMatcher,
    JointMatcher,
    JointObjective,
    Objective,
    ReconstructionResult,
    SearchDiverged,
    SearchSettings,
    SearchStage,
    StageOutcome,
    join_stages,
    run_stage,
    select_best,
    split_outcome,
)
from art_gifd.defenses.base import Compose, Defense, FunctionDefense
from art_gifd.federated import (
    GradientInput,
    LocalTraining,
    TargetModel,
    available_memory,
    check_client_model,
    clip_range,
    dropout_layers,
    simulation_memory,
)
from art_gifd.labels import (
    check_evidenced_count,
    check_inferable,
    check_update_sign,
    classes_evidenced,
    labels_from_gradient,
)
from art_gifd.validation import (
    MAX_BATCH_SIZE,
    MAX_RATE,
    MAX_SEED,
    MAX_WEIGHT,
    check_choice,
    check_device,
    check_flag,
    check_integer,
    check_number,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
#: Most optimisation steps per stage (or per search) an attack accepts: far beyond any search that could finish.
MAX_STEPS = 10_000_000
#: Most random restarts a search accepts (each is a row of every batched step).
MAX_RESTARTS = 10_000
#: Most candidates sampled per restart, by a CMA-ES generation or a latent pool: far beyond the ``cma`` package's
#: default ``4 + ⌊3 ln d⌋`` (31 for a latent of 9,216 dimensions), the populations of published attacks and the latent
#: pool's default of 16; each candidate needs its own dummy gradient.
MAX_POPULATION = 10_000

StageGenerator = Generator[SearchStage, StageOutcome, None]
#: Start images of :meth:`SearchContext.pixel_stage`.
PIXEL_INITS = ("uniform", "randn")


@dataclass
class SearchContext:
    """What a stage builder needs to know about the current reconstruction."""

    target: TargetModel
    labels: torch.Tensor | None
    batch_size: int
    num_restarts: int
    rng: torch.Generator
    clip_values: tuple[float, float]
    #: Matching loss against the observed gradient (with the client's labels, when known).
    matcher: GradientMatcher

    @property
    def num_candidates(self) -> int:
        """Rows of a representation tensor: one per restart and per image, ``R * B``."""
        return self.batch_size * self.num_restarts

    def pixel_stage(self, signed: bool = False, init: str = "uniform") -> SearchStage:
        """
        A pixel-space stage whose images are clamped to ``clip_values`` after every step.

        :param signed: Adam on the sign of the gradient.
        :param init: Start images: ``"uniform"`` in ``clip_values``, or ``"randn"``: standard normal in the model's
                     input units (mapped back through the estimator's mean/std standardisation, which is assumed
                     elementwise affine), clamped to ``clip_values``, as Inverting Gradients starts.
        :raises ValueError: If ``init`` is unknown.
        """
        import torch

        lo, hi = self.clip_values
        shape = (self.num_candidates, *self.target.input_shape)
        if init == "uniform":
            start = lo + (hi - lo) * torch.rand(shape, generator=self.rng, device=self.target.device)
        elif init == "randn":
            offset = self.target.preprocess(torch.zeros(1, *shape[1:], device=self.target.device))
            scale = self.target.preprocess(torch.ones(1, *shape[1:], device=self.target.device)) - offset
            noise = torch.randn(shape, generator=self.rng, device=self.target.device)
            start = ((noise - offset) / scale).clamp(lo, hi)
        else:
            raise ValueError(f"Unknown pixel initialisation '{init}': use one of {PIXEL_INITS}.")
        return SearchStage("pixel", [start], lambda v: v[0], lambda v: [v[0].clamp(lo, hi)], signed=signed)


@dataclass
class _Search:
    """One observation's search in progress: its context, objective, stage generator and the outcomes so far."""

    ctx: SearchContext
    matcher: GradientMatcher
    objective: Objective
    stages: StageGenerator
    seed: int
    start: float
    labels_inferred: bool
    outcomes: list[StageOutcome] = field(default_factory=list)


def _out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (Python's, the CPU allocator's or CUDA's)."""
    text = str(err)
    return isinstance(err, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower()


def _allocation(err: BaseException) -> str:
    """`` (an allocation of … GiB failed)`` when torch's message states its size, else nothing."""
    found = re.search(r"(?i)tried to allocate ([\d.]+) (bytes|KiB|MiB|GiB)", str(err))
    if found is None:
        return ""
    size = float(found[1]) / 2.0 ** (30 - 10 * ["bytes", "kib", "mib", "gib"].index(found[2].lower()))
    return f" (an allocation of {size:.2f} GiB failed)"


def _check_estimator(estimator: PyTorchClassifier) -> None:
    """The estimator's model is fit for the attacks, and its clip_values are one (min, max) pair with min < max."""
    check_client_model(estimator)
    if estimator.clip_values is None:
        raise ValueError(
            "The estimator has no clip_values: set clip_values=(min, max) on the PyTorchClassifier so that "
            "reconstructions can be mapped to its input range."
        )
    clip = np.asarray(estimator.clip_values, dtype=np.float64).reshape(2, -1)
    if np.ptp(clip, axis=1).any() or not clip[0, 0] < clip[1, 0]:
        raise ValueError(f"clip_values must be one (min, max) pair with min < max, got {estimator.clip_values!r}.")


def _loss_signature(loss: object) -> str:
    """What makes two training losses give the same gradients: their class and settings."""
    import torch

    settings = {
        name: getattr(loss, name).tolist() if isinstance(getattr(loss, name), torch.Tensor) else getattr(loss, name)
        for name in ("reduction", "label_smoothing", "ignore_index", "weight")
        if hasattr(loss, name)
    }
    return f"{type(loss).__name__}({', '.join(f'{k}={v!r}' for k, v in settings.items())})"


def _as_list(name: str, values: Any) -> list[Any]:
    """
    One entry per observation as a list: any iterable but a mapping, whose iteration gives its keys, or an array
    (other than a 1-d array of seeds), whose rows would be taken for observations.

    :raises ValueError: For a mapping, a string, an array or a tensor, or something that cannot be iterated.
    """
    import torch

    seeds = name == "seeds" and isinstance(values, np.ndarray) and values.ndim == 1
    refused = (Mapping, str, bytes, torch.Tensor) + (() if seeds else (np.ndarray,))
    if isinstance(values, refused) or not isinstance(values, Iterable):
        raise ValueError(
            f"{name} must be a list with one entry per observation, got a {type(values).__name__}"
            + (
                " (a gradient name -> array of one client goes in a list: [gradient]; a dict of clients: "
                "list(clients.values()))."
                if isinstance(values, Mapping)
                else "."
            )
        )
    return list(values)


def _same_function(shared: Any, own: Any, input_shape: tuple[int, ...], clip: list | None) -> bool:
    """
    Whether ``shared`` (the module a joint search runs) computes what ``own`` computes, given ``own``'s parameters and
    buffers, on a seeded probe batch in the clip range (both in eval mode for the check).
    """
    import torch
    from torch.func import functional_call

    device = next(iter(shared.parameters()), torch.empty(0)).device
    low, high = (0.0, 1.0) if clip is None else (float(np.min(clip[0])), float(np.max(clip[1])))
    probe = low + (high - low) * torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(0))
    modes = [m.training for m in (shared, own)]
    state = {k: v.to(device) for k, v in [*own.named_parameters(), *own.named_buffers()]}
    try:
        shared.eval(), own.eval()
        with torch.no_grad():
            expected = own(probe.to(next(iter(own.parameters()), probe).device))
            got = functional_call(shared, state, (probe.to(device),))
        return bool(torch.allclose(got.float().cpu(), expected.float().cpu(), rtol=1e-4, atol=1e-6))
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError):  # other names or shapes: not the same
        return False
    finally:
        shared.train(modes[0]), own.train(modes[1])


def _layers(model: Any) -> list[str]:
    """
    The model's class and every module with its settings (as the module's printout shows them: ``Conv2d(1, 12,
    kernel_size=…, stride=2)``, ``Sigmoid()``), in order: what makes two models of equal parameter shapes compute the
    same function of their weights (a custom ``forward`` aside).
    """
    modules = model.named_modules()
    return [type(model).__qualname__] + [f"{name}: {type(m).__name__}({m.extra_repr()})" for name, m in modules]


class GradientInversionAttack(InferenceAttack, abc.ABC):
    """
    Reconstruct a federated-learning client's private batch from the gradient it shared.

    Subclasses describe their search as a sequence of stages (:meth:`_stages`); this class validates inputs, infers
    labels, runs the stages on the shared gradient-matching core and returns the best candidate over all stages and
    restarts. ``infer(x)`` takes the observed gradient as ``x`` (ART's inference-attack signature) and returns the
    reconstructed images.
    """

    attack_params = [
        *InferenceAttack.attack_params,
        "steps_per_stage",
        "num_restarts",
        "learning_rate",
        "distance",
        "tv_weight",
        "norm_weight",
        "norm_form",
        "schedule",
        "batch_size",
        "train_mode",
        "device",
        "seed",
        "verbose",
        "defense",
        "training",
        "simulation_steps",
    ]
    _estimator_requirements = (PyTorchClassifier,)
    #: What each stage hands on (:data:`~art_gifd.attacks.core.HAND_ON`) and which stages compete for the output
    #: (``"all"`` or only the ``"last"``): fixed choices, kept as attributes so that ``benchmarks/ablation.py`` can
    #: measure the alternatives.
    _hand_on = "best"
    _selection = "all"
    #: Whether missing labels are inferred from the gradient (``False``: the attack optimises them itself).
    _infers_labels = True
    #: The constructor's name of the search length, used in messages.
    _length_param = "steps_per_stage"

    def __init__(
        self,
        estimator: PyTorchClassifier,
        steps_per_stage: int,
        num_restarts: int,
        learning_rate: float,
        distance: str = "cosine",
        tv_weight: float = 1e-4,
        norm_weight: float = 0.0,
        norm_form: str = "mean_square",
        schedule: str = "cosine",
        batch_size: int = 1,
        train_mode: bool = False,
        device: str | torch.device | None = None,
        seed: int | None = None,
        verbose: bool = True,
        defense: Defense | None = None,
        training: LocalTraining | None = None,
        simulation_steps: int | None = None,
    ) -> None:
        """
        :param estimator: ART ``PyTorchClassifier`` of the FL model (architecture and current weights).
        :param steps_per_stage: Adam steps per stage of the search.
        :param num_restarts: Independent random restarts, run as one batched computation.
        :param learning_rate: Peak Adam learning rate (linear warm-up, then cosine decay).
        :param distance: Gradient distance, ``"cosine"`` (scale-invariant) or ``"l2"``.
        :param tv_weight: Weight of the total-variation image prior: ``tv_weight · mean_b TV(x_b)`` where ``TV`` is the
                          mean absolute difference of horizontally neighbouring pixels of one image plus that of
                          vertically neighbouring ones (:func:`~art_gifd.attacks.core.total_variation`), averaged over
                          the batch.
        :param norm_weight: Weight of the norm image prior ``norm_weight · mean_b N(x_b)`` (0 disables it).
        :param norm_form: ``N(x)``: ``"mean_square"`` (``mean(x²)`` over the image's elements) or ``"rms"`` (its
                          square root). Both are per-image means, so weights carry over between image sizes.
        :param schedule: Adam learning-rate schedule: ``"cosine"`` (linear warm-up, then cosine decay) or ``"step"``
                         (×0.1 at 3/8, 5/8 and 7/8 of the steps, as in Inverting Gradients).
        :param batch_size: Number of private samples behind the gradient (the client batch size).
        :param train_mode: Whether the client computed its gradient with the model in train mode.
        :param device: Device of the search (default: the estimator's device).
        :param seed: Seed of the random initialisations (``None``: a fresh seed, recorded in the result).
        :param verbose: Show a progress bar.
        :param defense: The client's defence, if the attacker knows it: replayable defences (pruning, clipping,
                        quantisation, sign compression, Soteria) are applied to the dummy gradients too (the adaptive
                        attacker; results say ``extra["adaptive"]``); random ones (noise, DP-SGD) change nothing.
        :param training: A FedAvg client's local training (:class:`~art_gifd.federated.LocalTraining`): the observation
                         is then its weight update ``w_before − w_after`` over ``batch_size`` private samples, and every
                         candidate batch is put through the same training to compare. ``None``: a FedSGD gradient.
        :param simulation_steps: Replay at most this many local steps, merging consecutive ones (less memory and
                                 time, an approximation beyond plain one-step SGD); ``None``: every step.
        """
        super().__init__(estimator=estimator)
        self.steps_per_stage = steps_per_stage
        self.num_restarts = num_restarts
        self.learning_rate = learning_rate
        self.distance = distance
        self.tv_weight = tv_weight
        self.norm_weight = norm_weight
        self.norm_form = norm_form
        self.schedule = schedule
        self.batch_size = batch_size
        self.train_mode = train_mode
        self.device = device
        self.seed = seed
        self.verbose = verbose
        self.defense = defense
        self.training = training
        self.simulation_steps = simulation_steps

    @classmethod
    def _refuse_other_length(cls, kwargs: Mapping[str, Any]) -> None:
        """
        Refuse a constructor's keyword that names the search length as other attacks do (``max_iter`` for a staged
        search, ``steps_per_stage`` for a single-stage one), pointing to this attack's own name for it.

        :raises ValueError: Naming both names and the value given.
        """
        other = "steps_per_stage" if cls._length_param == "max_iter" else "max_iter"
        if other in kwargs:
            meaning = "the length of its one search stage" if other == "steps_per_stage" else "the steps of each stage"
            raise ValueError(
                f"{cls.__name__} takes its search length as {cls._length_param} ({meaning}), not {other}: pass "
                f"{cls._length_param}={kwargs[other]!r} instead."
            )

    def set_params(self, **kwargs: Any) -> None:
        """
        Set attack parameters (names from ``attack_params``) and validate them; if they are refused, the attack keeps
        its previous values rather than the refused ones.
        """
        previous = {name: getattr(self, name) for name in kwargs if name in self.attack_params}
        try:
            super().set_params(**kwargs)
        except Exception:
            for name, value in previous.items():
                setattr(self, name, value)
            raise

    def _check_params(self) -> None:
        self.steps_per_stage = check_integer(self._length_param, self.steps_per_stage, 1, MAX_STEPS)
        self.num_restarts = check_integer("num_restarts", self.num_restarts, 1, MAX_RESTARTS)
        self._check_integers(("batch_size",), high=MAX_BATCH_SIZE)
        self._check_numbers(("learning_rate",), positive=True, high=MAX_RATE)
        self._check_numbers(("tv_weight", "norm_weight"), positive=False, high=MAX_WEIGHT)
        check_choice("norm_form", self.norm_form, NORM_FORMS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("distance", self.distance, DISTANCES)
        dropout = dropout_layers(self.estimator.model) if check_flag("train_mode", self.train_mode) else []
        if dropout:
            raise ValueError(
                f"train_mode=True with dropout layers ({dropout[:3]}): the client's "
                "dropout masks are random and unknown to the attacker, and the search cannot replay them. Attack with "
                "train_mode=False (dropout off)."
            )
        if self.train_mode and self.batch_size == 1:
            from torch import nn

            single = [n for n, m in self.estimator.model.named_modules() if isinstance(m, nn.BatchNorm1d)]
            if single:
                raise ValueError(
                    f"train_mode=True with batch_size=1 and BatchNorm1d layers ({single[:3]}): the batch statistics of "
                    "one sample are undefined, so no client computes such a gradient. Give the client's batch size, or "
                    "train_mode=False."
                )
        check_flag("verbose", self.verbose)
        if self.defense is not None and not isinstance(self.defense, Defense):
            raise ValueError(
                f"defense must be an art_gifd.defenses.Defense (the client's defence, known to the attacker) or None, "
                f"got {type(self.defense).__name__}; wrap a plain function in FunctionDefense."
            )
        if self.defense is not None:
            parts, functions = [self.defense], []
            while parts:  # a Compose may hold others
                part = parts.pop()
                parts += part.defenses if isinstance(part, Compose) else []
                functions += [part] if isinstance(part, FunctionDefense) else []
            if functions:
                warnings.warn(
                    f"The known defence {self.defense!r} holds a plain function, which the attack does not replay on "
                    "its candidates (it cannot know whether the function is deterministic and differentiable): this "
                    "attack matches the observed update as it is, not adaptively. To replay it, subclass Defense "
                    "with replayable = True and a differentiable replay().",
                    UserWarning,
                    stacklevel=3,
                )
        if self.training is not None and not isinstance(self.training, LocalTraining):
            raise ValueError(
                f"training must be an art_gifd.LocalTraining (the client's local training) or None, got "
                f"{type(self.training).__name__}."
            )
        self.simulation_steps = check_integer("simulation_steps", self.simulation_steps, 1, optional=True)
        if self.simulation_steps is not None and self.training is None:
            raise ValueError(
                "simulation_steps only applies to a FedAvg update: give training=LocalTraining(...) too, or leave "
                "simulation_steps=None for a FedSGD gradient."
            )
        if self.device is not None:
            check_device(self.device)
        self.seed = check_integer("seed", self.seed, 0, MAX_SEED, optional=True)
        _check_estimator(self.estimator)

    def _check_integers(
        self, names: tuple[str, ...], minimum: int = 1, optional: bool = False, high: int | None = None
    ) -> None:
        """
        Check that the named parameters are integers in ``[minimum, high]`` (or ``None``, if ``optional``) and store
        them as Python ``int`` (torch refuses numpy integers in places, e.g. as split sizes).

        :raises ValueError: Naming the first parameter that is not.
        """
        for name in names:
            setattr(self, name, check_integer(name, getattr(self, name), minimum, high, optional=optional))

    def _check_numbers(self, names: tuple[str, ...], positive: bool, high: float = math.inf) -> None:
        """
        Check that the named parameters are finite real numbers, ``> 0`` (``positive``) or ``>= 0``, and at most
        ``high``.

        :raises ValueError: Naming the first parameter that is not.
        """
        bounded = high < math.inf  # an upper bound is included; infinity is not
        closed = {(True, False): "neither", (False, False): "left", (True, True): "right", (False, True): "both"}
        for name in names:
            check_number(name, getattr(self, name), 0.0, high, closed=closed[positive, bounded])

    def infer(self, x: GradientInput, y: np.ndarray | None = None, **kwargs: Any) -> np.ndarray:
        """
        Reconstruct the client's private batch from its gradient.

        :param x: Observed gradient: arrays in ``model.parameters()`` order, or a mapping parameter name → array.
        :param y: Labels of the private batch (class indices or one-hot); ``None`` infers them from the gradient.
        :param kwargs: None are taken (ART's signature has them): an attack's settings go to the constructor or
                       :meth:`set_params`.
        :return: Reconstructed images, float32, shape ``(batch_size, *input_shape)``, within the estimator's
                 ``clip_values``.
        :raises ValueError: For any keyword argument (a misspelt ``y``, a per-call ``seed``, …), which would be ignored.
        """
        if kwargs:
            raise ValueError(
                f"infer takes the gradient and y only, got {sorted(kwargs)}: pass the labels as y=, and set attack "
                f"parameters with set_params (they are {self.attack_params})."
            )
        return self.reconstruct(x, y).images

    def reconstruct(self, x: GradientInput, y: np.ndarray | None = None) -> ReconstructionResult:
        """
        Like :meth:`infer`, returning the images with the details of the search.

        :param x: Observed gradient.
        :param y: Known labels, or ``None`` to infer them.
        :return: The reconstruction and its details.
        """
        attack = copy.copy(self)  # the search's state (e.g. generator labels) on its own copy: calls are independent
        with attack._searching():
            search = attack._begin(x, y)
            with tqdm(
                total=self._total_steps(), desc=type(self).__name__, disable=not self.verbose, leave=False
            ) as bar:
                attack._search_together([search], bar)
            return attack._finish(search)

    @contextlib.contextmanager
    def _searching(self) -> Iterator[None]:
        """
        What a search runs under: autograd on, whatever the caller's ``torch.no_grad()``, ``set_grad_enabled(False)``
        or ``inference_mode()``; subclasses add what they must set up and put back.
        """
        import torch

        with torch.inference_mode(False), torch.enable_grad():
            try:
                yield
            except SearchDiverged as err:
                raise SearchDiverged(f"{type(self).__name__}: {err}. {self._divergence_advice()}.") from None
            except (MemoryError, RuntimeError) as err:  # torch.OutOfMemoryError is a RuntimeError
                if not _out_of_memory(err):
                    raise
                held, lower = self._memory_drivers()
                raise MemoryError(
                    f"{type(self).__name__} ran out of memory{_allocation(err)}: a search step holds {held}, their "
                    f"gradients and (FedAvg) every replayed local step at once. Lower {lower}, set simulation_steps "
                    "for a FedAvg replay, or use a device with more memory."
                ) from None

    def _memory_drivers(self) -> tuple[str, str]:
        """
        For the out-of-memory message: the candidate images a search step holds (with the settings that make their
        number) and the settings to lower.
        """
        held = f"num_restarts × batch_size = {self.num_restarts} × {self.batch_size} candidate images"
        return held, "num_restarts"

    def _divergence_advice(self) -> str:
        """For the message of a search that diverged: the settings of this attack that can cause it, to lower."""
        settings = [name for name in self.attack_params if name == "learning_rate" or name.endswith("_weight")]
        if not settings:
            return "Check that the model's and the prior's weights are valid"
        named = settings[0] if len(settings) == 1 else f"{', '.join(settings[:-1])} or {settings[-1]}"
        return f"Lower {named}, or check that the model's and the prior's weights are valid"

    def reconstruct_many(
        self,
        observations: Iterable[GradientInput],
        labels: Iterable[np.ndarray | None] | None = None,
        estimators: Iterable[PyTorchClassifier] | None = None,
        seeds: Iterable[int] | None = None,
        max_together: int | None = None,
    ) -> list[ReconstructionResult]:
        """
        Reconstruct several observations (e.g. every captured client update of a round, or of several rounds) in one
        batched search: observations × restarts are the rows of each stage's tensors, and one vectorised call
        computes every candidate's gradient (or replayed update) at its own observation's model weights.

        Each result equals (up to float rounding) what :meth:`reconstruct` returns for that observation with the same
        seed: every random start comes from the observation's own seed, and Adam moves every element on its own.
        Stages that cannot be stacked (L-BFGS, CMA-ES, optimised labels) run one observation after the other, as does
        a chunk of a single observation.

        :param observations: Observed gradients or updates, one per client.
        :param labels: Known labels per observation (``None`` entries, or ``None``: inferred).
        :param estimators: The model each observation was computed at (one architecture; default: this attack's
                           estimator for all), e.g. the global model of each observation's round.
        :param seeds: Seed per observation (default: this attack's ``seed`` for every one).
        :param max_together: At most this many observations per batched search (``None``: as many as the memory
                             estimate of a FedAvg replay allows, else all).
        :return: One result per observation, in order.
        :raises ValueError: If an argument is not a list (a dict, an array) or the lists differ in length, a seed is not
                            an integer in ``[0, 2**63 - 1]``, or an estimator is not a classifier of this attack's
                            architecture (layers, loss and clip values).
        """
        import torch

        observations = _as_list("observations", observations)
        labels, estimators, seeds = (
            None if v is None else _as_list(n, v)
            for n, v in (("labels", labels), ("estimators", estimators), ("seeds", seeds))
        )
        count = len(observations)
        if count and all(isinstance(x, np.ndarray | torch.Tensor) for x in observations):
            raise ValueError(
                f"observations holds {count} arrays, not gradients: each observation is one client's list of arrays "
                "(or mapping name -> array); for one client's gradient pass [gradient]."
            )
        for name, values in (("labels", labels), ("estimators", estimators), ("seeds", seeds)):
            if values is not None and len(values) != count:
                raise ValueError(
                    f"{name} has {len(values)} entries for {count} observations: give one per observation."
                )
        check_integer("max_together", max_together, 1, optional=True)
        if count == 0:
            return []
        attacks = []
        for t in range(count):
            attack = copy.copy(self)  # per-observation search state (e.g. generator labels) on its own copy
            if estimators is not None:
                self._check_joint_estimator(t, estimators[t])
                attack._estimator = estimators[t]
            if seeds is not None:
                attack.seed = check_integer(f"seeds[{t}]", seeds[t], 0, MAX_SEED)
            attacks.append(attack)
        with self._searching():
            searches = []
            for t, (a, x) in enumerate(zip(attacks, observations, strict=True)):
                try:
                    searches.append(a._begin(x, None if labels is None else labels[t]))
                except ValueError as err:  # which observation: the message alone cannot say
                    raise ValueError(f"Observation {t}: {err}") from None
            plan = searches[0].matcher.plan
            together = count if max_together is None else int(max_together)
            if plan is not None:
                fits = self._memory_fit(searches[0].ctx.target, plan)
                together = min(together, fits) if fits is not None else together
            chunks = [list(range(i, min(i + together, count))) for i in range(0, count, together)]
            with tqdm(
                total=self._total_steps() * len(chunks), desc=type(self).__name__, disable=not self.verbose, leave=False
            ) as bar:
                for chunk in chunks:
                    self._search_together([searches[t] for t in chunk], bar)
            return [a._finish(s) for a, s in zip(attacks, searches, strict=True)]

    def _check_joint_estimator(self, t: int, estimator: Any) -> None:
        """
        Check that ``estimator`` (the model of observation ``t``) can be searched jointly with this attack's: the same
        architecture, loss and clip values.

        :raises ValueError: Naming the first difference.
        """
        shapes = [tuple(p.shape) for p in self.estimator.model.parameters()]
        if not isinstance(estimator, PyTorchClassifier):
            raise ValueError(
                f"estimators[{t}] is a {type(estimator).__name__}, not an ART PyTorchClassifier: wrap "
                "the model with art_gifd.models.make_classifier(model, input_shape)."
            )
        other = [tuple(p.shape) for p in estimator.model.parameters()]
        if other != shapes:
            raise ValueError(
                f"estimators[{t}] has parameter shapes unlike the attack's estimator: every observation must "
                "come from the same architecture."
            )
        # the joint search runs every observation through one forward: equal shapes with other layers (an
        # activation, a stride) would match each observation with the wrong model
        mine, theirs = _layers(self.estimator.model), _layers(estimator.model)
        if mine != theirs:
            first = next((a, b) for a, b in itertools.zip_longest(mine, theirs, fillvalue="(none)") if a != b)
            raise ValueError(
                f"estimators[{t}] has other layers than the attack's estimator ({first[1]} where it has "
                f"{first[0]}): every observation must come from the same architecture; attack that client "
                "with its own attack."
            )
        try:
            _check_estimator(estimator)
        except ValueError as err:
            raise ValueError(f"estimators[{t}]: {err}") from None
        clips = [
            None if e.clip_values is None else np.asarray(e.clip_values).tolist() for e in (self.estimator, estimator)
        ]
        if clips[0] != clips[1]:
            raise ValueError(
                f"estimators[{t}] has clip_values {clips[1]} but the attack's estimator {clips[0]}: the joint "
                "search looks for every observation's images in one range; give every estimator the same."
            )
        shapes = [tuple(e.input_shape) for e in (self.estimator, estimator)]
        if shapes[0] != shapes[1]:
            raise ValueError(
                f"estimators[{t}] has input_shape {shapes[1]} but the attack's estimator {shapes[0]}: the joint "
                "search looks for every observation's images in one shape; attack that client with its own attack."
            )
        same_module = estimator.model is self.estimator.model  # the attack's own estimator: nothing to compare
        if not same_module and not _same_function(self.estimator.model, estimator.model, shapes[0], clips[0]):
            raise ValueError(
                f"estimators[{t}]'s model computes other outputs than the attack's estimator's model given its own "
                "weights (its forward reads a setting that is not a parameter or buffer, e.g. a temperature "
                "attribute): the joint search would score that observation with the wrong model; attack that "
                "client with its own attack."
            )
        if _loss_signature(estimator._loss) != _loss_signature(self.estimator._loss):
            raise ValueError(
                f"estimators[{t}] trains with another loss ({_loss_signature(estimator._loss)}) than the "
                f"attack's estimator ({_loss_signature(self.estimator._loss)}): the joint search matches every "
                "observation with one loss; attack that client with its own attack."
            )

    def _search_together(self, searches: list[_Search], bar: tqdm) -> None:
        """
        Run the stages of one or several searches in lockstep, stacking the stages of several that can be stacked
        (a single search runs its stages as they are).
        """
        joint = None
        stages = [next(s.stages) for s in searches]
        while True:
            stacked = join_stages(stages, self.num_restarts) if len(searches) > 1 else None
            if stacked is not None:
                if joint is None:
                    plan = searches[0].matcher.plan
                    if plan is not None:
                        self._check_memory(searches[0].ctx.target, plan, self.num_restarts * len(searches))
                    matcher = JointMatcher([s.matcher for s in searches])
                    joint = JointObjective(matcher, [s.objective for s in searches])
                settings = dataclasses.replace(
                    self._settings(searches[0].seed, bar), num_restarts=self.num_restarts * len(searches)
                )
                outcomes = split_outcome(run_stage(stacked, joint, settings), stages, self.num_restarts)
            else:
                outcomes = [
                    run_stage(stage, s.objective, self._settings(s.seed, bar if t == 0 else None))
                    for t, (stage, s) in enumerate(zip(stages, searches, strict=True))
                ]
            following = []
            for search, outcome in zip(searches, outcomes, strict=True):
                search.outcomes.append(outcome)
                try:
                    following.append(search.stages.send(outcome))
                except StopIteration:
                    following.append(None)
            if all(f is None for f in following):
                return
            if any(f is None for f in following):
                raise RuntimeError(f"{type(self).__name__}: searches of one attack ran different numbers of stages.")
            stages = following

    def _settings(self, seed: int, bar: tqdm | None) -> SearchSettings:
        return SearchSettings(
            self.steps_per_stage, self.learning_rate, self.num_restarts, bar, seed, self.schedule, self._hand_on
        )

    def _total_steps(self) -> int:
        return self.steps_per_stage * self._num_stages()

    def _begin(self, x: GradientInput, y: np.ndarray | None) -> _Search:
        """Validate an observation, infer its labels and set up its search (everything before the first stage)."""
        import torch

        start = time.perf_counter()
        target = TargetModel(self.estimator, device=self.device, train_mode=self.train_mode)
        if target.forward_is_random():
            raise ValueError(
                "Two forward passes of the FL model on one batch differ: its forward draws random numbers (functional "
                "dropout, added noise) that the attacker can neither know nor replay. Attack a deterministic model"
                + (", or with train_mode=False." if self.train_mode else ".")
            )
        if self.training is not None:
            self.training.check_data(self.batch_size)
        observed = target.as_gradient_list(x)
        vanishing = target.vanishing_as_in_train_mode(observed)
        if vanishing:
            logger.warning(
                "The update looks computed with BatchNorm in train mode (batch statistics): the gradient of %s, which "
                "vanishes in train mode only, is zero, but this attack replays eval mode. Pass train_mode=True, "
                "unless a defence (pruning) zeroed those entries.",
                ", ".join(vanishing[:3]) + (", …" if len(vanishing) > 3 else ""),
            )
        try:
            head = target.classifier_head
        except ValueError as err:
            head, no_head = None, err
        smoothed = bool(getattr(target.loss_fn, "label_smoothing", 0.0))
        if head is not None and not smoothed:  # label smoothing moves the signs this test reads
            check_update_sign(observed, head, self.batch_size)
        evidenced = classes_evidenced(observed, head, target.loss_fn)
        check_evidenced_count(evidenced, self.batch_size)
        if y is not None:
            labels = target.labels_to_indices(y, batch_size=self.batch_size)
            unlabelled = sorted(set(evidenced or ()) - set(labels.tolist()))
            if unlabelled:
                raise ValueError(
                    f"y holds the classes {sorted(set(labels.tolist()))}, but the gradient shows class(es) "
                    f"{unlabelled} present (a negative bias gradient needs an image of that class), which no label in "
                    "y has: are the labels 1-based, or in another class order than the model's outputs? Pass the "
                    "client's labels as the model's class indices, or y=None to infer them."
                )
        elif self._infers_labels:
            check_inferable(target.loss_fn)
            if head is None:
                raise no_head
            labels = labels_from_gradient(observed, head, self.batch_size)
            size = self.training.batch_size if self.training is not None else None
            if size is not None and size < self.batch_size and self.training.order_known:
                warnings.warn(
                    f"Labels inferred for a FedAvg update of mini-batches of {size} in a known order: the update "
                    "tells which labels the client had, not which sample had which, so the replay puts them in "
                    "other mini-batches than the client did, and the attack is weaker than it could be. Pass the "
                    "client's labels in its sample order (y=...) where they are known.",
                    UserWarning,
                    stacklevel=2,
                )
        else:
            labels = None
        seed = int(self.seed) if self.seed is not None else int(np.random.default_rng().integers(2**31 - 1))
        rng = torch.Generator(device=target.device).manual_seed(seed)
        lo, hi = clip_range(self.estimator)
        matcher = GradientMatcher(
            target,
            observed,
            labels,
            self.distance,
            self.batch_size,
            defense=self.defense,
            training=self.training,
            simulation_steps=self.simulation_steps,
        )
        if matcher.plan is not None:
            self._check_memory(target, matcher.plan, self.num_restarts)
        ctx = SearchContext(target, labels, self.batch_size, self.num_restarts, rng, (lo, hi), matcher)
        self._prepare(ctx)
        objective = self._objective(matcher, self._regularisers(ctx))
        return _Search(ctx, matcher, objective, self._stages(ctx), seed, start, y is None)

    def _finish(self, search: _Search) -> ReconstructionResult:
        """Pick the best candidate of a finished search and describe it."""
        ctx, outcomes = search.ctx, search.outcomes
        lo, hi = ctx.clip_values
        competing = None if self._selection == "all" else [len(outcomes) - 1]
        best_stage, best_restart, images, losses = select_best(outcomes, self.batch_size, self.num_restarts, competing)
        if not np.isfinite(losses[best_stage, best_restart]) or not bool(images.isfinite().all()):
            raise SearchDiverged("the search diverged (no candidate with a finite matching loss and finite images)")
        images = images.clamp(lo, hi).detach().cpu().numpy().astype(np.float32)
        final_labels = self._result_labels(ctx, outcomes[best_stage], best_restart)
        result = ReconstructionResult(
            images=images,
            labels=final_labels.cpu().numpy(),
            labels_inferred=search.labels_inferred,
            stage_names=[o.name for o in outcomes],
            stage_losses=losses,
            best_stage=best_stage,
            best_restart=best_restart,
            best_loss=float(losses[best_stage, best_restart]),
            steps=sum(o.steps for o in outcomes),
            seconds=time.perf_counter() - search.start,
            seed=search.seed,
            extra={
                **self._extra(ctx),
                "adaptive": search.matcher.adaptive,
                "training": self.training.describe(self.batch_size) if self.training is not None else None,
                "simulated_steps": len(search.matcher.plan) if search.matcher.plan is not None else None,
                "unmatched_parameters": list(ctx.target.inert_parameters),
            },
        )
        logger.info(
            "%s: best candidate from stage '%s', restart %d, matching loss %.5f, %.1f s.",
            type(self).__name__,
            result.stage_names[best_stage],
            best_restart,
            result.best_loss,
            result.seconds,
        )
        return result

    def _memory_fit(self, target: TargetModel, plan: list[tuple[np.ndarray, float]]) -> int | None:
        """How many observations' FedAvg replays fit the device's free memory together (``None``: unknown)."""
        free = available_memory(target.device)
        if free is None:
            return None
        return max(1, free // max(1, simulation_memory(target, plan, self.num_restarts)))

    def check_replay_memory(self) -> None:
        """
        Refuse, before any work, a FedAvg replay (``training``) whose estimated memory exceeds what the device has free
        at this attack's batch size and restarts; nothing for a FedSGD attack. The search checks the same at its
        start; a caller that plans many searches can check once up front.

        :raises ValueError: Naming the estimate, the free memory and the ways to lower it.
        """
        if self.training is None:
            return
        target = TargetModel(self.estimator, device=self.device, train_mode=self.train_mode)
        self._check_memory(
            target, target.replay_plan(self.training, self.batch_size, self.simulation_steps), self.num_restarts
        )

    def _check_memory(self, target: TargetModel, plan: list[tuple[np.ndarray, float]], restarts: int) -> None:
        """
        Refuse, before any work, a FedAvg replay of ``restarts`` candidate batches whose estimated memory exceeds what
        the device has free.

        :raises ValueError: Naming the estimate, the free memory and the ways to lower it.
        """
        needed = simulation_memory(target, plan, restarts)
        free = available_memory(target.device)
        if free is not None and needed > free:
            raise ValueError(
                f"Replaying {len(plan)} local steps for {restarts} candidate batches needs about {needed / 2**30:.1f} "
                f"GiB but {target.device} has {free / 2**30:.1f} GiB free: set simulation_steps (merges local steps), "
                "fewer num_restarts, or a device with more memory."
            )

    def _objective(
        self, matcher: GradientMatcher, extra: list[Callable[[torch.Tensor], torch.Tensor]] | None = None
    ) -> Objective:
        """The search objective: ``matcher``'s loss plus this attack's image priors and ``extra`` terms."""
        return Objective(matcher, self.tv_weight, self.norm_weight, self.norm_form, list(extra or []))

    def _prepare(self, ctx: SearchContext) -> None:
        """Check the context before the search (e.g. that a prior fits the estimator); raise ``ValueError``."""

    def _extra(self, ctx: SearchContext) -> dict[str, object]:
        """Attack-specific details stored in :attr:`ReconstructionResult.extra`."""
        return {}

    def _regularisers(self, ctx: SearchContext) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """Attack-specific terms added to the objective, each images ``(R * B, …)`` → penalty per restart."""
        return []

    def _result_labels(self, ctx: SearchContext, outcome: StageOutcome, restart: int) -> torch.Tensor:
        """Labels of the returned candidate (the fixed labels, unless the attack optimised them)."""
        assert ctx.labels is not None  # attacks that optimise labels override this method
        return ctx.labels

    def _num_stages(self) -> int:
        """Number of stages :meth:`_stages` yields (one, unless overridden)."""
        return 1

    @abc.abstractmethod
    def _stages(self, ctx: SearchContext) -> StageGenerator:
        """Yield the stages in order; each ``yield`` receives the previous stage's outcome."""


def single_stage_params(params: list[str], fixed: tuple[str, ...] = ()) -> list[str]:
    """
    ``attack_params`` of a single-stage attack: the search length is ``max_iter``, as its constructor names it, and
    the ``fixed`` names, which its constructor sets itself (e.g. no image prior), are left out.
    """
    return ["max_iter" if p == "steps_per_stage" else p for p in params if p not in fixed]


class SingleStageSearch:
    """Mix-in of the attacks whose search is a single stage: ``max_iter`` names its length."""

    steps_per_stage: int
    _length_param = "max_iter"
    attack_params: list[str]
    _refuse_other_length: Callable[[Mapping[str, Any]], None]

    def _refuse_fixed(self, kwargs: dict[str, Any], base_params: list[str]) -> None:
        """
        Refuse keyword arguments the attack sets itself (they would be ignored, or clash with its own), the search
        length as ``steps_per_stage`` first.
        """
        self._refuse_other_length(kwargs)
        fixed = sorted(set(kwargs) & (set(base_params) - set(self.attack_params)))
        if fixed:
            raise ValueError(
                f"{type(self).__name__} sets {fixed} itself (its search length is max_iter; its objective and "
                f"optimiser are the paper's): leave them out. Its parameters are {self.attack_params}."
            )

    @property
    def max_iter(self) -> int:
        """Length of the search: Adam steps, L-BFGS objective evaluations or CMA-ES generations."""
        return self.steps_per_stage

    @max_iter.setter
    def max_iter(self, value: int) -> None:
        self.steps_per_stage = value
