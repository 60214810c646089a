"""Generative priors behind one layered interface (latent → block features → image)."""

from art_gifd.priors.base import LayeredGenerator
from art_gifd.priors.dcgan import DCGANGenerator
from art_gifd.priors.embedded import load_default_prior
from art_gifd.priors.faces import load_face_dcgan

__all__ = ["DCGANGenerator", "LayeredGenerator", "load_default_prior", "load_face_dcgan"]
