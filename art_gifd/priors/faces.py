"""
The pretrained 64×64 face DCGAN shipped by the ``gan-face-generate`` package, as a layered prior.

Install it without its declared dependencies (they pull wandb, rdkit and bokeh and downgrade pillow)::

    pip install --no-deps gan-face-generate==1.1.1

The code is MIT-licensed; the generator was trained on DigiFace-1M (synthetic faces): check that data set's licence
before commercial use.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from art_gifd.priors.checkpoints import load_state_dict_file, load_strict, replaced_initialisation
from art_gifd.priors.dcgan import DCGANGenerator

INSTALL_HINT = "pip install --no-deps gan-face-generate==1.1.1"


def face_weights_path() -> Path:
    """Location of ``weights.tar`` inside the installed ``gan-face-generate`` package."""
    spec = importlib.util.find_spec("gan_face_generate")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The face DCGAN needs the 'gan-face-generate' package, which is not installed: run '{INSTALL_HINT}', "
            "or pass weights_path= to a local copy of its weights.tar."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "weights.tar"


def load_face_dcgan(weights_path: str | Path | None = None, device: str | torch.device = "cpu") -> DCGANGenerator:
    """
    Load the 64×64 RGB face DCGAN (nz 100, ngf 64; checkpoint key ``netG_state_dict``), strictly.

    :param weights_path: Checkpoint path (default: the one inside the installed ``gan-face-generate`` package).
    :param device: Device to load it on.
    :return: The frozen generator in eval mode (5 blocks: latent, 4×4, 8×8, 16×16, 32×32 features).
    """
    path = Path(weights_path) if weights_path is not None else face_weights_path()
    with replaced_initialisation():
        generator = DCGANGenerator(nz=100, ngf=64, nc=3, image_size=64, training_domain="DigiFace-1M synthetic faces")
    load_strict(generator, load_state_dict_file(path, key="netG_state_dict"), f"'{path}'")
    # Its features are about 3x smaller in mean magnitude than the embedded digit priors' (0.08-0.16 against
    # 0.35-0.48 per element); on the tuning crops of benchmarks/ablation.py a feature-stage learning rate of 0.03
    # instead of 0.1 gained 1.8 dB (B=1, 16/16 runs) and 1.1 dB (B=4, 4/4).
    generator.feature_learning_rate = 0.03
    return generator.to(device).freeze()
