"""Generative priors behind one layered interface (latent → block features → image)."""

from art_gifd.priors.base import LayeredGenerator
from art_gifd.priors.biggan import BigGANGenerator, load_biggan
from art_gifd.priors.dcgan import DCGANGenerator
from art_gifd.priors.embedded import load_default_prior
from art_gifd.priors.faces import load_face_dcgan
from art_gifd.priors.stylegan2 import StyleGAN2Generator, load_stylegan2
from art_gifd.priors.wrap import LayeredSequential, wrap_generator

__all__ = [
    "BigGANGenerator",
    "DCGANGenerator",
    "LayeredGenerator",
    "LayeredSequential",
    "StyleGAN2Generator",
    "load_biggan",
    "load_default_prior",
    "load_face_dcgan",
    "load_stylegan2",
    "wrap_generator",
]
