"""
Small federated-learning models used by the demo, the tests and the CPU benchmarks.

- :func:`lenet`: the LeNet of DLG (Zhu et al. 2019): three sigmoid convolutions and a linear head, weights uniform in
  ``±0.5``. Smooth and shallow, the classic easy target of gradient inversion.
- :func:`convnet`: a small ReLU ConvNet with default PyTorch initialisation; piecewise-linear, harder to invert.
"""

from __future__ import annotations

import torch
from torch import nn

MODELS = ("lenet", "convnet")


def lenet(in_channels: int = 1, image_size: int = 32, num_classes: int = 10, seed: int = 0) -> nn.Sequential:
    """DLG's LeNet with sigmoid activations and uniform(-0.5, 0.5) weights, seeded."""
    torch.manual_seed(seed)
    side = image_size // 4
    net = nn.Sequential(
        nn.Conv2d(in_channels, 12, 5, padding=2, stride=2),
        nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, padding=2, stride=2),
        nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, padding=2, stride=1),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(12 * side * side, num_classes),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.rand(p.shape, generator=generator) - 0.5)
    return net


def convnet(in_channels: int = 1, image_size: int = 32, num_classes: int = 10, seed: int = 0) -> nn.Sequential:
    """A three-layer ReLU ConvNet with a linear head, PyTorch default initialisation, seeded."""
    torch.manual_seed(seed)
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * side * side, num_classes),
    )


def build_model(
    name: str, in_channels: int = 1, image_size: int = 32, num_classes: int = 10, seed: int = 0
) -> nn.Module:
    """Build one of :data:`MODELS` by name."""
    factories = {"lenet": lenet, "convnet": convnet}
    if name not in factories:
        raise ValueError(f"Unknown model '{name}': choose one of {', '.join(MODELS)}.")
    return factories[name](in_channels, image_size, num_classes, seed)


def make_classifier(model: nn.Module, input_shape: tuple[int, ...], nb_classes: int = 10, device: str = "cpu"):
    """Wrap ``model`` in an ART ``PyTorchClassifier`` with cross-entropy loss and inputs in ``[0, 1]``."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=input_shape,
        nb_classes=nb_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if str(device).startswith("cuda") else "cpu",
    )
