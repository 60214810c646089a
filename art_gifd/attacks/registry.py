"""
The attacks by name, as the demo, the audit, the benchmark runner and the benchmark scripts name them: which class
each is, whether it searches a generator (and so needs a prior), and how an equal step budget maps to its
parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from art_gifd.attacks.base import MAX_RESTARTS, MAX_STEPS, GradientInversionAttack
from art_gifd.attacks.dlg import DLGAttack, IDLGAttack
from art_gifd.attacks.ggl import GGLAttack
from art_gifd.attacks.gias import GIASAttack
from art_gifd.attacks.gifd import GIFDAttack
from art_gifd.attacks.grad_inversion import GradInversionAttack
from art_gifd.attacks.inverting_gradients import InvertingGradientsAttack
from art_gifd.configfile import Checker, KeyPath, Stop, integer, row_label, string, string_list
from art_gifd.validation import check_integer

if TYPE_CHECKING:
    from art_gifd.defenses.base import Defense
    from art_gifd.priors.base import LayeredGenerator

#: Constructor arguments the experiment loop sets itself for every attack (client batch, seed, device, defence,
#: prior, the client's training): a configuration cannot give them per attack.
LOOP_PARAMS = ("batch_size", "device", "seed", "verbose", "defense", "prior", "training", "train_mode")
#: Constructor arguments a :class:`Budget` sets (an attack in a configuration file takes its own ``budget`` table).
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

    def __post_init__(self) -> None:
        for name, high in BUDGET_LIMITS.items():
            setattr(self, name, check_integer(f"Budget.{name}", getattr(self, name), 1, high))

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


# ----------------------------------------------------------------------- the attack tables of configuration files

#: A budget's fields and their values when a file sets no ``[budget]`` (four GIFD stages of 100 steps, 2 restarts).
BUDGET_DEFAULTS = {"steps_per_stage": 100, "stages": 4, "num_restarts": 2}
#: What the attacker knows of the private labels: ``inferred`` from the update (the default) or ``known``.
LABEL_MODES = ("inferred", "known")
#: Where a file sets the attack arguments an ``[[attacks]]`` table's ``params`` may not (those of
#: :data:`LOOP_PARAMS` and :data:`BUDGET_PARAMS`).
PARAM_HINTS = {
    "batch_size": "the file's client batch sizes set it",
    "device": "set device at the top level",
    "seed": "set seeds at the top level",
    "verbose": "the command shows progress (art-gifd audit --no-progress hides it)",
    "defense": "list it under [[defenses]] (adaptive = true lets the attacker replay it)",
    "prior": "set prior = <a name under [priors]> in the attack's table",
    "training": "set the local training under [federated]",
    "train_mode": "the model's settings set it",
    "steps_per_stage": "set it in [budget], or in the attack's budget table",
    "num_restarts": "set it in [budget], or in the attack's budget table",
    "max_stage": "set stages in [budget], or in the attack's budget table",
    "max_iter": "set steps_per_stage and stages in [budget], or in the attack's budget table",
}


def read_budget(check: Checker, value: Any, path: KeyPath, base: Mapping[str, int] | None = None) -> dict[str, int]:
    """
    A ``[budget]`` table (its missing fields from :data:`BUDGET_DEFAULTS`), or an attack's ``budget`` table (its
    missing fields from ``base``, the file's budget); :class:`Stop` at a problem.
    """
    table = check.strict_table(value, path, tuple(BUDGET_DEFAULTS))
    given = {k: check.need(table[k], (*path, k), integer(1, BUDGET_LIMITS[k])) for k in BUDGET_DEFAULTS if k in table}
    return {**(base if base is not None else BUDGET_DEFAULTS), **given}


@dataclass
class AttackSection:
    """The attack sections of a file: ``[budget]``, ``[priors.<name>]`` and ``[[attacks]]``, checked."""

    budget: dict[str, int]
    #: Each valid prior table by name (:func:`art_gifd.priors.registry.read_prior_spec`).
    priors: dict[str, dict[str, Any]]
    #: Each valid attack: ``name``, ``label``, ``prior`` (generative attacks), ``params``, ``budget`` (the file's with
    #: the attack's own fields), ``labels`` when ``"known"``, and its restriction lists where given.
    attacks: list[dict[str, Any]]
    #: The position of each of them in the file's ``[[attacks]]`` list (entries with a problem are left out).
    positions: list[int]


def read_attack_section(
    check: Checker, top: Mapping[str, Any], restrictions: Mapping[str, Sequence[str] | None]
) -> AttackSection:
    """
    Read the attack sections the audit and the benchmark runner share::

        [budget]                      # optional; defaults: BUDGET_DEFAULTS
        steps_per_stage = 50          # Adam steps per GIFD stage; the other attacks run stages * steps_per_stage
        stages = 4
        num_restarts = 2

        [priors.mnist]                # the generators of the generative attacks, by name
        type = "embedded"             # art_gifd.priors.registry.PRIOR_TYPES and that type's keys
        name = "mnist32"

        [[attacks]]                   # one or more
        name = "gifd"                 # ATTACK_REGISTRY
        label = "gifd"                # optional, unique (default: the name)
        prior = "mnist"               # generative attacks: a name under [priors]
        params = { l1_radius = 0.2 }  # optional constructor arguments of the attack's class
        budget = { num_restarts = 4 } # optional: this attack's own budget fields
        labels = "inferred"           # or "known": the attacker is given the private labels

    :param check: The file's checker; every problem is recorded on it.
    :param top: The file's top-level table.
    :param restrictions: The lists an attack may be restricted to, by key (e.g. ``defenses`` → the defence labels);
                         ``None`` for a list whose own entries have problems (not checked against).
    """
    from art_gifd.priors.registry import read_prior_spec

    section = AttackSection(budget=dict(BUDGET_DEFAULTS), priors={}, attacks=[], positions=[])
    with check.section():
        section.budget = read_budget(check, top.get("budget"), ("budget",))
    declared = top.get("priors", {})
    if not isinstance(declared, Mapping):
        check.add(("priors",), 'must be a table of named priors, e.g. [priors.mnist] type = "embedded".')
        declared = {}
    for name, raw in declared.items():
        spec = read_prior_spec(check, raw, ("priors", name))
        if spec is not None:
            section.priors[str(name)] = spec

    def attack(value: Any, path: KeyPath) -> dict[str, Any]:
        keys = ("name", "label", "prior", "params", "budget", "labels", *restrictions)
        table = check.strict_table(value, path, keys, required=("name",))
        name = check.need(table["name"], (*path, "name"), string(list(ATTACK_REGISTRY)))
        spec: dict[str, Any] = {
            "name": name,
            "label": check.need(table.get("label", name), (*path, "label"), row_label),
        }
        if name in GENERATIVE_ATTACKS:
            if not declared:
                raise Stop(path, f"{name} needs a generator, and none is defined: add [priors.<name>] with a type.")
            if "prior" not in table:
                raise Stop(path, f"{name} searches a generator's latent space: set prior = <a name under [priors]>.")
            # a declared prior whose table has a problem is named there, not again here
            spec["prior"] = check.need(table["prior"], (*path, "prior"), string(sorted(map(str, declared))))
        elif "prior" in table:
            raise Stop((*path, "prior"), f"{name} does not use a generator: remove prior.")
        params = table.get("params", {})
        reserved = (*LOOP_PARAMS, *BUDGET_PARAMS)
        if isinstance(params, Mapping):  # every reserved key is named, then the others are checked
            for key in reserved:
                if key in params:
                    check.add((*path, "params", key), f"is not an attack parameter here: {PARAM_HINTS[key]}.")
            params = {k: v for k, v in params.items() if k not in reserved}
        allowed = [p for p in ATTACK_REGISTRY[name].cls.attack_params if p not in reserved]
        spec["params"] = copy.deepcopy(check.strict_table(params, (*path, "params"), allowed))
        spec["budget"] = read_budget(check, table.get("budget", {}), (*path, "budget"), base=section.budget)
        if check.need(table.get("labels", "inferred"), (*path, "labels"), string(LABEL_MODES)) == "known":
            spec["labels"] = "known"  # absent when inferred: the records of earlier runs keep their identity
        for key, names in restrictions.items():
            if key in table:
                spec[key] = check.need(table[key], (*path, key), string_list(names))
        section.positions.append(int(path[-1]))
        return spec

    if "attacks" not in top:
        check.add(("attacks",), 'missing (required): list the attacks to run, e.g. [[attacks]] name = "gifd".')
    elif isinstance(top["attacks"], Mapping):
        check.add(
            ("attacks",),
            "is one table, the form before version 0.1: write one [[attacks]] table per attack (name = ...), "
            "with the step budget under [budget] and the generator under [priors.<name>].",
        )
    else:
        with check.section():
            section.attacks = check.each(top["attacks"], ("attacks",), attack)
    first: set[str] = set()
    for index, entry in zip(section.positions, section.attacks, strict=True):
        if entry["label"] in first:
            check.add(("attacks", index, "label"), f"duplicated label {entry['label']!r}: give each its own.")
        first.add(entry["label"])
    return section
