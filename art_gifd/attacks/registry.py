"""
The attacks by name, as the demo, the audit, the benchmark runner and the benchmark scripts name them: which class
each is, whether it searches a generator (and so needs a prior), and how an equal step budget maps to its
parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from art_gifd.attacks.base import MAX_RESTARTS, MAX_STEPS, GradientInversionAttack
from art_gifd.attacks.dlg import DLGAttack, IDLGAttack
from art_gifd.attacks.ggl import GGLAttack
from art_gifd.attacks.gias import GIASAttack
from art_gifd.attacks.gifd import GIFDAttack
from art_gifd.attacks.grad_inversion import GradInversionAttack
from art_gifd.attacks.inverting_gradients import InvertingGradientsAttack

if TYPE_CHECKING:
    from art_gifd.defenses.base import Defense
    from art_gifd.priors.base import LayeredGenerator

#: Constructor arguments the experiment loop sets itself for every attack (client batch, seed, device, defence,
#: prior, the client's training): a configuration cannot give them per attack.
LOOP_PARAMS = ("batch_size", "device", "seed", "verbose", "defense", "prior", "training", "train_mode")
#: Constructor arguments a :class:`Budget` sets (an audit's per-attack ``params`` may override them; a benchmark's
#: attack takes its own ``budget`` instead).
BUDGET_PARAMS = ("steps_per_stage", "num_restarts", "max_stage", "max_iter")


#: Largest value of each budget field: steps per stage and restarts as the attacks accept them, stages beyond any
#: prior's block count.
BUDGET_LIMITS = {"steps_per_stage": MAX_STEPS, "stages": 64, "num_restarts": MAX_RESTARTS}


@dataclass
class Budget:
    """Equal step budget for every attack: GIFD runs ``stages × steps_per_stage``, the others as many steps."""

    steps_per_stage: int
    stages: int
    num_restarts: int

    @property
    def total_steps(self) -> int:
        """Steps per restart of every attack."""
        return self.steps_per_stage * self.stages


@dataclass(frozen=True)
class AttackEntry:
    """
    One named attack.

    :param name: The name in configurations and results.
    :param cls: Its class.
    :param generative: Whether it searches a generator (it takes a prior; results name the prior).
    :param length: Its constructor parameters for a :class:`Budget` (search length, stages).
    :param main: One of the three attacks the demo compares (the others are baselines).
    """

    name: str
    cls: type[GradientInversionAttack]
    generative: bool
    length: Callable[[Budget], dict[str, int]]
    main: bool = False


ATTACK_REGISTRY: dict[str, AttackEntry] = {
    entry.name: entry
    for entry in (
        AttackEntry(
            "gifd", GIFDAttack, True, lambda b: {"max_stage": b.stages, "steps_per_stage": b.steps_per_stage}, True
        ),
        AttackEntry(
            "latent-only", GIFDAttack, True, lambda b: {"max_stage": 1, "steps_per_stage": b.total_steps}, True
        ),
        AttackEntry("pixel", InvertingGradientsAttack, False, lambda b: {"max_iter": b.total_steps}, True),
        AttackEntry("dlg", DLGAttack, False, lambda b: {"max_iter": b.total_steps}),
        AttackEntry("idlg", IDLGAttack, False, lambda b: {"max_iter": b.total_steps}),
        AttackEntry("gi", GradInversionAttack, False, lambda b: {"max_iter": b.total_steps}),
        AttackEntry("ggl", GGLAttack, True, lambda b: {"max_iter": b.total_steps}),
        # two stages (latent, then generator weights) of half the budget each
        AttackEntry("gias", GIASAttack, True, lambda b: {"steps_per_stage": max(1, b.total_steps // 2)}),
    )
}
#: The attacks the demo compares: GIFD, its latent-only ablation and pixel-space Inverting Gradients.
ATTACKS = tuple(name for name, entry in ATTACK_REGISTRY.items() if entry.main)
#: The published baselines: DLG, iDLG, GradInversion, GGL, GIAS.
BASELINES = tuple(name for name, entry in ATTACK_REGISTRY.items() if not entry.main)
#: Attacks that search a generator.
GENERATIVE_ATTACKS = tuple(name for name, entry in ATTACK_REGISTRY.items() if entry.generative)


def attack_entry(name: str) -> AttackEntry:
    """The registry entry of ``name``; ``ValueError`` naming the choices for an unknown one."""
    if name not in ATTACK_REGISTRY:
        raise ValueError(f"Unknown attack '{name}': choose one of {', '.join(ATTACK_REGISTRY)}.")
    return ATTACK_REGISTRY[name]


def build_attack(
    name: str,
    estimator: Any,
    prior: LayeredGenerator | None,
    budget: Budget,
    batch_size: int,
    seed: int,
    defense: Defense | None = None,
    **common: Any,
) -> GradientInversionAttack:
    """
    The attack ``name`` of :data:`ATTACK_REGISTRY` at the given budget.

    ``gifd`` searches ``budget.stages`` stages; ``latent-only`` is the same search restricted to the latent stage
    (GGL/GIAS-style); ``pixel`` is Inverting-Gradients-style cosine matching in pixel space; the baselines run
    ``budget.total_steps`` steps per restart (GIAS half per stage). ``defense`` is the client's defence as the attacker
    knows it (an adaptive attacker replays it where it is deterministic); ``None``: the attacker ignores any defence.
    ``common`` holds further constructor parameters (e.g. ``device``, ``verbose``, attack-specific ones).

    :raises ValueError: For an unknown name, or a generative attack without a prior.
    """
    entry = attack_entry(name)
    shared = {"num_restarts": budget.num_restarts, "batch_size": batch_size, "seed": seed, "defense": defense}
    kwargs = {**shared, **entry.length(budget), **common}
    if entry.generative:
        if prior is None:
            raise ValueError(f"Attack '{name}' searches a generator: give it a prior.")
        return entry.cls(estimator, prior, **kwargs)
    return entry.cls(estimator, **kwargs)
