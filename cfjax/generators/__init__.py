"""Generators: the latent interface of latent-space methods (see :mod:`cfjax.generators.base`): a VAE
and a diffusion autoencoder (Diff-AE)."""

from cfjax.generators.base import Generator, known_generators, load_generator, register_generator  # noqa: F401
from cfjax.generators.vae import vae_generator  # noqa: F401
from cfjax.generators.diffae import diffae_generator, diffae_model  # noqa: F401
