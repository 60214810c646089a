"""
art-gifd: gradient inversion over feature domains (GIFD) for the Adversarial Robustness Toolbox.

Measure how much of a federated-learning client's private data leaks from the gradient it shares::

    grads = client_gradients(classifier, x_private, y_private)
    x_rec = GIFDAttack(classifier).infer(grads)

or from the weight update of a FedAvg client's local training::

    training = LocalTraining(learning_rate=0.05, epochs=2, batch_size=4)
    update = client_update(classifier, x_private, y_private, training=training)
    x_rec = GIFDAttack(classifier, training=training, batch_size=len(x_private)).infer(update)
"""

from art_gifd.attacks import GIFDAttack, InvertingGradientsAttack, ReconstructionResult
from art_gifd.defenses import DPSGD, Compose, Defense
from art_gifd.federated import LocalTraining, client_gradients, client_update
from art_gifd.labels import infer_labels
from art_gifd.priors import DCGANGenerator, LayeredGenerator, load_default_prior
from art_gifd.utility import measure_utility

__version__ = "0.1.0"

__all__ = [
    "DPSGD",
    "Compose",
    "DCGANGenerator",
    "Defense",
    "GIFDAttack",
    "InvertingGradientsAttack",
    "LayeredGenerator",
    "LocalTraining",
    "ReconstructionResult",
    "__version__",
    "client_gradients",
    "client_update",
    "infer_labels",
    "load_default_prior",
    "measure_utility",
]
