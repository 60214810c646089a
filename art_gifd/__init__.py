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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from art_gifd.attacks import GIFDAttack, InvertingGradientsAttack, ReconstructionResult
    from art_gifd.defenses import DPSGD, Compose, Defense
    from art_gifd.federated import LocalTraining, client_gradients, client_update
    from art_gifd.labels import infer_labels
    from art_gifd.priors import DCGANGenerator, LayeredGenerator, load_default_prior
    from art_gifd.utility import measure_utility

#: Where each public name lives. They are imported on first use, so that ``import art_gifd`` (and the command-line
#: entry point, which imports this package first) does not load torch before the command's own Ctrl-C handling runs.
_EXPORTS = {
    "GIFDAttack": "art_gifd.attacks",
    "InvertingGradientsAttack": "art_gifd.attacks",
    "ReconstructionResult": "art_gifd.attacks",
    "DPSGD": "art_gifd.defenses",
    "Compose": "art_gifd.defenses",
    "Defense": "art_gifd.defenses",
    "LocalTraining": "art_gifd.federated",
    "client_gradients": "art_gifd.federated",
    "client_update": "art_gifd.federated",
    "infer_labels": "art_gifd.labels",
    "DCGANGenerator": "art_gifd.priors",
    "LayeredGenerator": "art_gifd.priors",
    "load_default_prior": "art_gifd.priors",
    "measure_utility": "art_gifd.utility",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'art_gifd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


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
