"""
The embedded priors (MNIST, class-conditional MNIST, Fashion-MNIST) and the Fashion-MNIST loader they rely on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art_gifd import GIFDAttack, client_gradients
from art_gifd.data import FASHION_MNIST_DIR, load_dataset, load_fashion32
from art_gifd.priors.checkpoints import sha256_of
from art_gifd.priors.embedded import (
    EMBEDDED_PRIORS,
    embedded_training_record,
    embedded_weights_path,
    load_default_prior,
)

needs_fashion = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)


@pytest.fixture(scope="module")
def conditional_prior():
    return load_default_prior("mnist32-conditional")


@pytest.mark.parametrize("name", sorted(EMBEDDED_PRIORS))
def test_embedded_prior_loads_verified_and_generates_its_shape(name: str) -> None:
    spec = EMBEDDED_PRIORS[name]
    path = embedded_weights_path(name)
    record = embedded_training_record(name)
    assert path.stat().st_size < 5 * 2**20
    assert sha256_of(path) == spec["sha256"] == record["sha256"]
    assert record["weights"] == path.name
    assert {k: v for k, v in record["architecture"].items() if k != "class"} == spec["architecture"]
    prior = load_default_prior(name)
    assert prior.training_domain == spec["training_domain"]
    assert not any(p.requires_grad for p in prior.parameters())
    z = prior.sample_latent(3, torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 4, 9]) if prior.num_classes else None
    with torch.no_grad():
        images = prior(z, labels)
    assert images.shape == (3, 1, 32, 32)
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0.1


def test_conditional_prior_draws_the_requested_digit(conditional_prior, heldout) -> None:
    """Generated class ``c`` is nearest to the mean held-out digit ``c`` (nearest-centroid accuracy, 96.5% here)."""
    x, y = (torch.as_tensor(a) for a in heldout)
    centroids = torch.stack([x[y == k].flatten(1).mean(dim=0) for k in range(10)])
    labels = torch.arange(10).repeat(10)
    with torch.no_grad():
        images = (
            conditional_prior(conditional_prior.sample_latent(100, torch.Generator().manual_seed(0)), labels) + 1
        ) / 2
        same_z = conditional_prior(conditional_prior.sample_latent(1).repeat(2, 1, 1, 1), torch.tensor([1, 8]))
    assert (torch.cdist(images.flatten(1), centroids).argmin(dim=1) == labels).float().mean() > 0.85
    assert (same_z[0] - same_z[1]).abs().mean() > 0.1  # one latent, two classes: two different digits
    with pytest.raises(ValueError, match="class-conditional: pass one generator class per sample"):
        conditional_prior(conditional_prior.sample_latent(1))


def test_conditional_prior_follows_the_label_mapping_in_gifd(conditional_prior, lenet_clf, heldout) -> None:
    x, y = heldout[0][:2], heldout[1][:2]
    mapping = {int(t): (int(t) + 3) % 10 for t in range(10)}
    attack = GIFDAttack(
        lenet_clf,
        conditional_prior,
        batch_size=2,
        max_stage=2,
        steps_per_stage=2,
        num_restarts=1,
        label_mapping=mapping,
        verbose=False,
    )
    result = attack.reconstruct(client_gradients(lenet_clf, x, y))  # labels inferred from the gradient
    assert sorted(result.labels.tolist()) == sorted(y.tolist())
    assert result.extra["generator_labels"] == [mapping[int(t)] for t in result.labels]
    assert result.images.shape == (2, 1, 32, 32)


@needs_fashion
def test_fashion32_splits_are_disjoint_and_shaped() -> None:
    x_train, y_train = load_fashion32("train")
    x_held, y_held = load_dataset("fashion32", "heldout")
    assert x_train.shape == (4000, 1, 32, 32) and x_held.shape == (10000, 1, 32, 32)
    assert x_train.dtype == np.float32 and x_train.min() == 0.0 and x_train.max() == 1.0
    assert np.all(x_train[:, :, :2] == 0) and set(np.unique(y_held)) == set(range(10))
    assert np.bincount(y_train).min() > 300  # every class in the prior's training images
    train_rows = {row.tobytes() for row in x_train}
    assert not any(row.tobytes() in train_rows for row in x_held)
    with pytest.raises(ValueError, match="Unknown split 'all' for fashion32"):
        load_fashion32("all")


def test_fashion32_missing_package_names_the_install(monkeypatch, tmp_path) -> None:
    import art_gifd.data as data

    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    data._fashion32.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
            load_fashion32("train")
    finally:
        data._fashion32.cache_clear()
