"""Gradient-inversion attacks, all ART inference attacks on one gradient-matching core."""

from art_gifd.attacks.base import GradientInversionAttack
from art_gifd.attacks.core import ReconstructionResult
from art_gifd.attacks.dlg import DLGAttack, IDLGAttack
from art_gifd.attacks.ggl import GGLAttack
from art_gifd.attacks.gias import GIASAttack
from art_gifd.attacks.gifd import GIFDAttack
from art_gifd.attacks.grad_inversion import GradInversionAttack
from art_gifd.attacks.inverting_gradients import InvertingGradientsAttack

__all__ = [
    "DLGAttack",
    "GGLAttack",
    "GIASAttack",
    "GIFDAttack",
    "GradInversionAttack",
    "GradientInversionAttack",
    "IDLGAttack",
    "InvertingGradientsAttack",
    "ReconstructionResult",
]
