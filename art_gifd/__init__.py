"""
art-gifd: gradient inversion over feature domains (GIFD) for the Adversarial Robustness Toolbox.

Measure how much of a federated-learning client's private data leaks from the gradient it shares::

    grads = client_gradients(classifier, x_private, y_private)
    x_rec = GIFDAttack(classifier).infer(grads)
"""

from art_gifd.attacks import GIFDAttack, InvertingGradientsAttack, ReconstructionResult
from art_gifd.defenses import DPSGD, Compose, Defense, measure_utility
from art_gifd.federated import client_gradients
from art_gifd.labels import infer_labels
from art_gifd.priors import DCGANGenerator, LayeredGenerator, load_default_prior

__version__ = "0.1.0"

__all__ = [
    "DPSGD",
    "Compose",
    "DCGANGenerator",
    "Defense",
    "GIFDAttack",
    "InvertingGradientsAttack",
    "LayeredGenerator",
    "ReconstructionResult",
    "__version__",
    "client_gradients",
    "infer_labels",
    "load_default_prior",
    "measure_utility",
]
