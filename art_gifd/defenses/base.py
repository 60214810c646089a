"""
The defence interface: what a federated-learning client applies to its update before sharing it.

A :class:`Defense` maps the clean per-parameter gradients of one client batch to the shared ones,
``apply(grads, context)``. The :class:`DefenseContext` gives it what some defences need besides the gradient: the
client's private copy of the model (:class:`~art_gifd.federated.TargetModel`), the private batch and its labels (DP-SGD
recomputes per-sample gradients, Soteria needs the representation), and a seeded ``torch.Generator`` for noise.

An attacker who knows a deterministic defence can *replay* it on its dummy gradients (the adaptive attacker):
:meth:`Defense.replay` maps a batch of dummy gradients (a leading restart dimension ``R`` on every tensor) to what the
client would have shared, given the observed (defended) gradient.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from art_gifd.federated import TargetModel

#: Gradients keyed by parameter name, every tensor with a leading batch dimension (restarts for the attacker, 1 for
#: the client).
GradientBatch = dict[str, torch.Tensor]


@dataclass
class DefenseContext:
    """
    What a defence may use besides the gradient.

    :param target: The client's private copy of the FL model (never the user's module).
    :param x: The raw private batch, ``(B, *input_shape)``, on the target's device.
    :param labels: Its labels as class indices, ``(B,)``.
    :param generator: Source of the defence's randomness, on the target's device.
    """

    target: TargetModel
    x: torch.Tensor
    labels: torch.Tensor
    generator: torch.Generator


class Defense(abc.ABC):
    """
    A client-side defence of the shared update.

    Subclasses implement :meth:`apply`; deterministic ones that an attacker can replay set ``replayable = True`` and
    implement :meth:`replay`; ones with a privacy guarantee override :meth:`privacy`.
    """

    #: Name recorded in results.
    name: str = "defense"
    #: Whether :meth:`replay` reproduces the defence on dummy gradients (an adaptive attacker can use it).
    replayable: bool = False
    #: Whether :meth:`apply` recomputes the update from the private batch, discarding the gradient it is given.
    recomputes: bool = False

    @abc.abstractmethod
    def apply(self, grads: list[torch.Tensor], context: DefenseContext) -> list[torch.Tensor]:
        """
        The shared update.

        :param grads: Clean per-parameter gradients of the batch, in ``model.parameters()`` order.
        :param context: The model copy, private batch, labels and random generator.
        :return: The defended gradients, same order and shapes.
        """

    def replay(self, grads: GradientBatch, observed: GradientBatch) -> GradientBatch:
        """
        Apply the defence to a batch of dummy gradients, differentiably (the adaptive attacker's view).

        :param grads: Dummy gradients, name → ``(R, *param_shape)``.
        :param observed: The observed (defended) gradient, name → ``param_shape``.
        :return: The dummy gradients as the client would have shared them.
        """
        raise NotImplementedError(f"{type(self).__name__} is not deterministic: an attacker cannot replay it.")

    def params(self) -> dict[str, Any]:
        """The defence's parameters, JSON-serialisable."""
        return {}

    def privacy(self) -> tuple[float, float] | None:
        """The ``(epsilon, delta)`` guarantee of the defence, or ``None`` if it has none."""
        return None

    def describe(self) -> dict[str, Any]:
        """Name, parameters and privacy guarantee, as recorded in results."""
        guarantee = self.privacy()
        return {
            "name": self.name,
            "params": self.params(),
            "epsilon": guarantee[0] if guarantee else None,
            "delta": guarantee[1] if guarantee else None,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def is_gradient_list(value: Any) -> bool:
    """
    Whether a defence's output can be its list of per-parameter gradients: an iterable that is not itself one array,
    a text or a mapping (what the output holds is checked against the model by
    :func:`~art_gifd.federated.checked_defence_output`).
    """
    return isinstance(value, Iterable) and not isinstance(value, torch.Tensor | np.ndarray | str | bytes | Mapping)


class FunctionDefense(Defense):
    """A plain callable ``grads -> grads`` used as a defence (the simplest custom defence)."""

    name = "function"

    def __init__(self, function: Callable[[list[torch.Tensor]], list[torch.Tensor]]) -> None:
        """
        :param function: Maps the clean per-parameter gradient tensors to the shared ones.
        """
        if not callable(function):
            raise ValueError(
                f"A defence must be a Defense or a callable grads -> grads, got {type(function).__name__}."
            )
        self.function = function

    def apply(self, grads: list[torch.Tensor], context: DefenseContext) -> list[torch.Tensor]:
        out = self.function(grads)
        if not is_gradient_list(out):
            raise ValueError(
                f"defence {self!r}: its function returned {type(out).__name__}, not a list of gradient tensors (one "
                "per parameter, in model.parameters() order)."
            )
        return list(out)

    def params(self) -> dict[str, Any]:
        return {"function": getattr(self.function, "__qualname__", repr(self.function))}


class Compose(Defense):
    """
    Defences applied one after the other, e.g. ``Compose([Clip(1.0), GaussianNoise(1e-2)])``.

    An attacker replays the replayable ones in the same order and treats the others (noise) as the identity, their
    expectation. The privacy guarantee is that of a DP component (post-processing keeps it).
    """

    name = "compose"

    def __init__(self, defenses: Sequence[DefenseLike]) -> None:
        """
        :param defenses: Defences in the order the client applies them; one that recomputes the update from the
                         private batch (DP-SGD) must come first.
        """
        if isinstance(defenses, Defense) or not isinstance(defenses, Sequence) or not defenses:
            raise ValueError(
                "Compose needs a non-empty list of defences, e.g. Compose([Clip(1.0), GaussianNoise(0.01)])."
            )
        self.defenses = [as_defense(d) for d in defenses]
        late = [d for d in self.defenses[1:] if d.recomputes]
        if late:
            raise ValueError(
                f"{type(late[0]).__name__} recomputes the update from the private batch and would discard the "
                "defences before it: put it first in Compose."
            )
        self.replayable = any(d.replayable for d in self.defenses)
        self.recomputes = self.defenses[0].recomputes

    def apply(self, grads: list[torch.Tensor], context: DefenseContext) -> list[torch.Tensor]:
        for defense in self.defenses:
            grads = defense.apply(grads, context)
        return grads

    def replay(self, grads: GradientBatch, observed: GradientBatch) -> GradientBatch:
        for defense in self.defenses:
            if defense.replayable:
                grads = defense.replay(grads, observed)
        return grads

    def params(self) -> dict[str, Any]:
        return {"defenses": [d.describe() for d in self.defenses]}

    def privacy(self) -> tuple[float, float] | None:
        return next((g for g in (d.privacy() for d in self.defenses) if g is not None), None)

    def __repr__(self) -> str:
        return f"Compose({self.defenses!r})"


#: What ``defense=`` accepts on the client side: a :class:`Defense` or a plain callable ``grads -> grads``.
DefenseLike = Defense | Callable[[list[torch.Tensor]], list[torch.Tensor]]


def as_defense(defense: DefenseLike) -> Defense:
    """Return ``defense`` as a :class:`Defense` (plain callables are wrapped in :class:`FunctionDefense`)."""
    return defense if isinstance(defense, Defense) else FunctionDefense(defense)


def describe_defense(defense: DefenseLike | None, adaptive: bool = False) -> dict[str, Any]:
    """
    The ``"defense"`` field of every results record (demo, audit, bench): name (``"none"`` for no defence),
    parameters, (epsilon, delta) and whether the attacker replayed the defence on its dummy gradients.

    :param defense: The client's defence.
    :param adaptive: Whether the attacker knew the defence (it replays it only if it is replayable).
    """
    if defense is None:
        return {"name": "none", "params": {}, "epsilon": None, "delta": None, "adaptive": False}
    described = as_defense(defense)
    return {**described.describe(), "adaptive": adaptive and described.replayable}


def make_generator(seed: int | None, device: str | torch.device) -> torch.Generator:
    """A ``torch.Generator`` on ``device``, seeded with ``seed`` (``None``: a non-deterministic seed)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def flat_norm(grads: GradientBatch) -> torch.Tensor:
    """Euclidean norm of all parameters' gradients together, one per row: ``(N,)``."""
    return torch.sqrt(sum(g.flatten(1).pow(2).sum(dim=1) for g in grads.values()))


def pruned_count(ratio: float, count: int) -> int:
    """``⌊ratio · count⌋`` as the decimal ratio means it (in floating point ``0.29 · 100`` is 28.999…)."""
    return math.floor(round(ratio * count, 9))


def kept_entries(magnitude: torch.Tensor, zeroed: int) -> torch.Tensor:
    """
    The entries a pruning kept, read off the shared gradient: ``magnitude`` holds the size of each prunable unit (an
    entry, or a column's norm) of the observed gradient, of which the pruning zeroed ``zeroed``. Where the shared
    gradient shows at least that many zeros, its non-zero pattern; where a random defence applied after the pruning
    (noise) filled the zeros, the units of largest magnitude, which small noise barely reorders.

    :return: Boolean mask of ``magnitude``'s shape.
    """
    if int((magnitude == 0).sum()) >= zeroed:
        return magnitude != 0
    kept = torch.ones_like(magnitude, dtype=torch.bool)
    kept[magnitude.topk(zeroed, largest=False).indices] = False
    return kept


def straight_through(grads: GradientBatch, transform: Callable[[GradientBatch], GradientBatch]) -> GradientBatch:
    """``transform(grads)`` in the forward pass, the identity in the backward pass (straight-through estimator)."""
    with torch.no_grad():
        hard = transform({n: g.detach() for n, g in grads.items()})
    return {n: g + (hard[n] - g).detach() for n, g in grads.items()}
