"""The latent interface: a generator is pure per-example functions plus their parameters.

* ``encode(params, x, key) -> z``: an HWC image in [0, 1] to a latent of ``latent_shape``
  (None for a generator without an encoder, e.g. a GAN without an inversion);
* ``decode(params, z, key) -> x``: a latent to an HWC image in [0, 1] of ``image_shape``.

Both are written for ONE example (vmap outside), take explicit keys (a stochastic encoder or
decoder uses them; a deterministic one ignores them) and never raise. Any latent-variable model
plugs in as these two functions plus a parameter pytree: build a :class:`Generator` by hand, or
register a factory for a checkpoint architecture with :func:`register_generator` so that
:func:`load_generator` builds it from a checkpoint.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from cfjax.generators import Generator
  >>> g = Generator(encode=lambda p, x, key: x.mean((0, 1)), decode=lambda p, z, key: jnp.ones((4, 4, 3)) * z,
  ...               params={}, latent_shape=(3,), image_shape=(4, 4, 3), name="toy")
  >>> g.decode(g.params, g.encode(g.params, jnp.full((4, 4, 3), 0.5), None), None).shape
  (4, 4, 3)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from cfjax._registry import Registry
from cfjax._validate import CfjaxInputError


class Generator(NamedTuple):
  """A latent-variable model as cfjax methods see it."""

  encode: Callable[..., Any] | None
  decode: Callable[..., Any]
  params: Any
  latent_shape: tuple
  image_shape: tuple        # (H, W, C)
  name: str
  meta: dict = {}

  def check_latents(self, z, *, name: str = "latents") -> np.ndarray:
    """Checks a batch of latents (N, *latent_shape) on the host: shape and finiteness."""
    z = np.asarray(z)
    if z.shape[1:] != tuple(self.latent_shape):
      raise CfjaxInputError(f"{name} of generator {self.name!r} must have shape (N, "
                            f"{', '.join(map(str, self.latent_shape))}), got {z.shape}")
    if not np.issubdtype(z.dtype, np.floating) or not np.isfinite(z).all():
      raise CfjaxInputError(f"{name} must be finite floats")
    return z.astype(np.float32)


_FACTORIES = Registry("generator")


def register_generator(kind: str):
  """Registers ``factory(net, meta) -> Generator`` for checkpoints whose ``meta["generator"]`` is ``kind``."""
  return _FACTORIES.register(kind)


def known_generators() -> list[str]:
  return _FACTORIES.names()


def load_generator(name_or_path, **options) -> Generator:
  """A generator from a bundled name, a checkpoint directory or a ``cfjax train-*`` run directory.

  ``options`` go to the generator's factory (e.g. ``decode_steps`` of a diffusion autoencoder).

  Example:
    >>> import cfjax
    >>> g = cfjax.load_generator("squares_vae")  # doctest: +SKIP
    >>> g.latent_shape, g.image_shape  # doctest: +SKIP
    ((64,), (32, 32, 3))
  """
  from cfjax.nets.loading import load_network
  net, meta = load_network(name_or_path, kind="generator")
  kind = meta.get("generator")
  if kind is None:
    raise CfjaxInputError(f"{name_or_path} is not a generator checkpoint (its metadata names no generator)")
  return _FACTORIES.get(kind)(net, {**meta, "source": str(name_or_path)}, **options)
