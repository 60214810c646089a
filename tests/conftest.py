"""Shared fixtures: small seeded FL models wrapped in ART classifiers, private digits and their gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art_gifd.data import load_mnist32
from art_gifd.models import lenet, make_classifier


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def heldout() -> tuple[np.ndarray, np.ndarray]:
    return load_mnist32("heldout")


@pytest.fixture
def lenet_clf():
    return make_classifier(lenet(seed=0), (1, 32, 32))


@pytest.fixture(scope="session")
def default_prior():
    from art_gifd.priors.embedded import load_default_prior

    return load_default_prior()
