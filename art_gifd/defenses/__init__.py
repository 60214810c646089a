"""
Client-side defences of the shared update, with their privacy and utility cost.

Every defence is a :class:`Defense` (``apply(grads, context)``), composable with :class:`Compose`::

    defense = Compose([Clip(1.0), GaussianNoise(1e-3)])
    grads = client_gradients(classifier, x_private, y_private, defense=defense, seed=0)
    utility = measure_utility(defense, classifier)  # art_gifd.utility: what the defence costs the training
    x_rec = GIFDAttack(classifier, defense=defense).infer(grads)  # adaptive attacker: replays what it can

:func:`build_defense` builds one from a configuration name and parameters (``build_defense("clip", {"max_norm": 1})``).
"""

from art_gifd.defenses.base import (
    Compose,
    Defense,
    DefenseContext,
    DefenseLike,
    FunctionDefense,
    as_defense,
    describe_defense,
)
from art_gifd.defenses.dp import DPSGD, check_opacus_compatible, privacy_epsilon
from art_gifd.defenses.registry import DEFENSES, build_defense, defense_parameters
from art_gifd.defenses.soteria import Soteria
from art_gifd.defenses.transforms import (
    AdditiveNoise,
    Clip,
    GaussianNoise,
    GradientTransform,
    LaplacianNoise,
    Prune,
    Quantize,
    SignCompression,
)

__all__ = [
    "DEFENSES",
    "DPSGD",
    "AdditiveNoise",
    "Clip",
    "Compose",
    "Defense",
    "DefenseContext",
    "DefenseLike",
    "FunctionDefense",
    "GaussianNoise",
    "GradientTransform",
    "LaplacianNoise",
    "Prune",
    "Quantize",
    "SignCompression",
    "Soteria",
    "as_defense",
    "build_defense",
    "check_opacus_compatible",
    "defense_parameters",
    "describe_defense",
    "privacy_epsilon",
]
