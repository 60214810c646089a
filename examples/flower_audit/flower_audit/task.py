"""The model, the clients' data and their local training: what a Flower app's ``task.py`` usually holds."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from art_gifd.data import load_mnist32
from art_gifd.models import convnet

#: Private images per client (held-out digits no embedded prior saw).
SAMPLES_PER_CLIENT = 4
#: The run's configuration (``[tool.flwr.app.config]`` of pyproject.toml holds the same; ``flwr run`` reads that one).
RUN_CONFIG = {
    "num-server-rounds": 3,
    "num-clients": 4,
    "lr": 0.05,
    "local-epochs": 2,
    "batch-size": 2,
    "captures": "captures",
    "dp": False,
    "noise-multiplier": 0.5,
    "clipping-norm": 1.0,
}


def build_model() -> nn.Module:
    """The ConvNet every client trains (same initialisation everywhere)."""
    return convnet(seed=0)


def partition(partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Client ``partition_id``'s private digits and labels (the audit's ground truth: ``client_data``)."""
    x, y = load_mnist32("heldout")
    start = 100 + SAMPLES_PER_CLIENT * int(partition_id)
    return x[start : start + SAMPLES_PER_CLIENT], y[start : start + SAMPLES_PER_CLIENT]


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, lr: float, epochs: int, batch_size: int) -> float:
    """Plain local SGD: ``epochs`` passes over the data in order, mean cross-entropy per mini-batch."""
    data = torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y, dtype=torch.long))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    optimiser = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    loss = torch.zeros(())
    for _ in range(epochs):
        for xb, yb in loader:
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            optimiser.step()
    return float(loss.detach())


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Share of ``x`` the model classifies as ``y``."""
    model.eval()
    with torch.no_grad():
        return float((model(torch.as_tensor(x)).argmax(1).numpy() == y).mean())
