"""
What a benchmark job is built from: data, priors, defences and attack classes, from their configuration specs.

Loaders are cached per process (a worker that runs many jobs loads a prior or an image folder once); every builder is
deterministic, so a job stays a pure function of its configuration and seed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

#: Share of a folder data set (after a shuffle seeded with 0) held out: the attacked images and the utility test set.
HOLDOUT_FRACTION = 0.2
#: Number of classes of the embedded data sets (digits, Fashion-MNIST).
EMBEDDED_CLASSES = 10
#: Embedded data sets without a train / held-out split measure utility on another one of the same task.
UTILITY_SOURCES = {"digits32": "mnist32"}


def load_images(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """
    The images a ``[[datasets]]`` spec draws from (before its offset and count), their labels and the class count.

    :return: Images ``(N, C, H, W)`` float32 in ``[0, 1]``, labels ``(N,)`` int64, number of classes.
    """
    if spec["source"] == "folder":
        train, heldout, classes = _folder_splits(spec["root"], spec["channels"])
        if spec["split"] == "all":
            return np.concatenate([train[0], heldout[0]]), np.concatenate([train[1], heldout[1]]), len(classes)
        x, y = heldout if spec["split"] == "heldout" else train
        return x, y, len(classes)
    from art_gifd.data import load_dataset

    x, y = load_dataset(spec["source"], spec["split"])
    return x, y, EMBEDDED_CLASSES


def utility_data(spec: dict[str, Any]) -> tuple[tuple[np.ndarray, ...], str]:
    """
    The ``data`` argument of :func:`~art_gifd.utility.measure_utility` for a data set, and its description: the
    FedSGD run trains on the data set's ``train`` split and tests on its ``heldout`` one (a folder: its train and
    held-out parts; ``digits32``, which has no split: the ``mnist32`` ones, the same digit task).
    """
    from art_gifd.data import load_dataset

    if spec["source"] == "folder":
        (x_train, y_train), (x_test, y_test), _ = _folder_splits(spec["root"], spec["channels"])
        return (x_train, y_train, x_test, y_test), f"folder {spec['root']}: train / held-out parts"
    source = UTILITY_SOURCES.get(spec["source"], spec["source"])
    return (*load_dataset(source, "train"), *load_dataset(source, "heldout")), f"{source} train / heldout"


def utility_source(spec: dict[str, Any]) -> dict[str, Any] | str:
    """What the utility data of a data set depend on (part of the key under which utilities are shared)."""
    if spec["source"] == "folder":
        return {k: spec[k] for k in ("root", "channels")}
    return UTILITY_SOURCES.get(spec["source"], spec["source"])


@lru_cache(maxsize=2)
def _folder_splits(root: str, channels: int) -> tuple[tuple, tuple, list]:
    """A folder's images split (seeded) into a train part and a held-out part of :data:`HOLDOUT_FRACTION`."""
    from art_gifd.data import load_image_folder

    x, y, classes = load_image_folder(root, channels)
    order = np.random.default_rng(0).permutation(len(x))
    held = max(1, round(HOLDOUT_FRACTION * len(x)))
    if held >= len(x):
        raise ValueError(f"Image folder '{root}' has {len(x)} image(s): it needs at least 2 (train and held out).")
    train, heldout = order[:-held], order[-held:]
    return (x[train], y[train]), (x[heldout], y[heldout]), classes
