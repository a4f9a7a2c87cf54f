"""A VAE as a generator: encode = the posterior sample (or its mean), decode = the decoder.

Counterfactual Attacks start from the *sampled* code ``z = mu + eps * exp(logvar / 2)`` (the
paper's notebook, cell 18); ``encode="mean"`` gives the deterministic code instead.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from cfjax import nets
  >>> from cfjax.generators import vae_generator
  >>> net = nets.build({"arch": "cf_vae", "image_size": 28, "channels": 1})  # doctest: +SKIP
  >>> g = vae_generator(net)  # doctest: +SKIP
  >>> g.decode(g.params, jnp.zeros(64), None).shape  # doctest: +SKIP
  (28, 28, 1)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cfjax._validate import check_choice
from cfjax.generators.base import Generator, register_generator
from cfjax.nets.registry import make_apply

ENCODINGS = ("sample", "mean")


@register_generator("vae")
def vae_generator(net, meta: dict | None = None, *, encode: str = "sample") -> Generator:
  """A :class:`Generator` from a ``cf_vae`` network (``encode``: "sample" or "mean")."""
  check_choice("VAE encoding", encode, ENCODINGS)
  enc = make_apply(net.config, "encode")
  dec = make_apply(net.config, "decode")
  size = int(net.config.get("image_size", 28))
  channels = int(net.config.get("channels", 1))
  latent_dim = int(net.config.get("latent_dim", 64))

  def encode_fn(params, x, key):
    mu, logvar = enc(params, x[None])
    if encode == "mean":
      return mu[0]
    return mu[0] + jax.random.normal(key, mu.shape[1:], mu.dtype) * jnp.exp(0.5 * logvar[0])

  def decode_fn(params, z, key):
    return dec(params, z[None])[0]

  return Generator(encode_fn, decode_fn, net.params, (latent_dim,), (size, size, channels),
                   name=(meta or {}).get("source", "vae"), meta=dict(meta or {}))
