"""Generators: the latent interface of latent-space methods (see :mod:`cfjax.generators.base`)."""

from cfjax.generators.base import Generator, known_generators, load_generator, register_generator  # noqa: F401
from cfjax.generators.vae import vae_generator  # noqa: F401
