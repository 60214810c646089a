"""
The attack cases that ``benchmarks/ablation.py`` and ``benchmarks/speed.py --mode quality`` measure, with their
tuning and evaluation splits.

Each case is an FL model, a prior and a pool of private images that neither the prior nor any test or default of
the package was fitted on. The *tuning* split is where defaults are chosen; the *evaluation* split, disjoint from
it, is where they are reported. Held-out MNIST digits used elsewhere (the demo and tests take the first few, the
baselines benchmark 100–115, the peer check 600–607) are avoided: tuning takes 400–415, evaluation 800–815 (the
ConvNet's evaluation split extends to 847 for more 4-image batches in its noisiest cell). The 32
scikit-image crops are split 16–23 (tuning) and 24–31 (evaluation); the OOD benchmark uses the first 16.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from art_gifd.federated import client_gradients
from art_gifd.metrics import evaluate_batch
from art_gifd.models import build_model, make_classifier
from art_gifd.priors.base import LayeredGenerator

SPLITS = ("tune", "eval")


def measured_run(attack: Any, observed: Any, x: np.ndarray, y: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """
    Run ``attack`` on the observed update with the true labels ``y``, timed, and score it against ``x``.

    :return: The result and the fields a runs record keeps: PSNR/SSIM (Hungarian-matched), per-image PSNR, matching
             loss, CPU and wall seconds, torch threads.
    """
    import time

    import torch

    cpu, wall = time.process_time(), time.perf_counter()
    result = attack.reconstruct(observed, y)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    scores = evaluate_batch(result.images, x, result.labels, y)
    return result, {
        "psnr": scores["psnr"],
        "ssim": scores["ssim"],
        "per_image_psnr": scores["per_image"]["psnr"],
        "matching_loss": result.best_loss,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "threads": torch.get_num_threads(),
    }


@dataclass(frozen=True)
class AttackCase:
    """An FL model, a generative prior and the private images of each split (index ranges into the data set)."""

    name: str
    model: str
    prior: str
    dataset: str
    splits: dict[str, tuple[int, int]]
    description: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Image shape ``(C, H, W)``."""
        return (3, 64, 64) if self.dataset == "skimage64" else (1, 32, 32)

    def images(self, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``count`` images and labels of ``split``."""
        if split not in SPLITS:
            raise ValueError(f"Unknown split '{split}': use one of {SPLITS}.")
        lo, hi = self.splits[split]
        if count > hi - lo:
            raise ValueError(f"Case '{self.name}' has {hi - lo} images in its {split} split, {count} were asked for.")
        x, y = _dataset(self.dataset)
        return x[lo : lo + count], y[lo : lo + count]

    def classifier(self) -> Any:
        """The FL model as an ART classifier (seeded weights: the same model in every run)."""
        channels, size, _ = self.input_shape
        return make_classifier(build_model(self.model, in_channels=channels, image_size=size, seed=0), self.input_shape)

    def load_prior(self) -> LayeredGenerator:
        """The case's prior, frozen."""
        return _prior(self.prior)

    def gradient(self, classifier: Any, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
        """The client's FedSGD gradient of the batch ``(x, y)``."""
        return client_gradients(classifier, x, y)


CASES: dict[str, AttackCase] = {
    case.name: case
    for case in (
        AttackCase(
            "lenet-mnist",
            "lenet",
            "mnist32",
            "mnist32",
            {"tune": (400, 416), "eval": (800, 816)},
            "sigmoid LeNet, held-out MNIST digits, embedded mnist32 prior (in distribution)",
        ),
        AttackCase(
            "convnet-mnist",
            "convnet",
            "mnist32",
            "mnist32",
            {"tune": (400, 416), "eval": (800, 848)},
            "ReLU ConvNet, held-out MNIST digits, embedded mnist32 prior (in distribution)",
        ),
        AttackCase(
            "convnet-rgb64",
            "convnet",
            "faces",
            "skimage64",
            {"tune": (16, 24), "eval": (24, 32)},
            "ReLU ConvNet, 64x64 RGB scikit-image photo crops, face DCGAN prior (out of distribution)",
        ),
        AttackCase(  # the GPU-sized case: the same images and prior as convnet-rgb64 on ResNet-18
            "resnet18-rgb64",
            "resnet18",
            "faces",
            "skimage64",
            {"tune": (16, 24), "eval": (24, 32)},
            "ResNet-18, 64x64 RGB scikit-image photo crops, face DCGAN prior (out of distribution)",
        ),
    )
}


@cache
def _dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    from art_gifd.data import load_mnist32, load_skimage64

    return load_skimage64() if name == "skimage64" else load_mnist32("heldout")


@cache
def _prior(name: str) -> LayeredGenerator:
    if name == "faces":
        from art_gifd.priors.faces import load_face_dcgan

        return load_face_dcgan()
    from art_gifd.priors.embedded import load_default_prior

    return load_default_prior(name)
