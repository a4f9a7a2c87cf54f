"""Optimisers of the counterfactual search, all optax gradient transformations.

The default of ACE / AC-RE is sign-PGD: ``x <- x - step * sign(grad)``, then a clip to [0, 1]
(done by the method, not the optimiser, so any optax transformation can be swapped in).

Example:
  >>> import jax.numpy as jnp
  >>> opt = sign_pgd(1 / 255)
  >>> u, _ = opt.update(jnp.array([0.3, -2.0, 0.0]), opt.init(jnp.zeros(3)))
  >>> (u * 255).tolist()
  [-1.0, 1.0, 0.0]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from cfjax._validate import check_choice


def sign() -> optax.GradientTransformation:
  """Replaces updates by their elementwise sign (stateless)."""
  return optax.stateless(lambda updates, params=None: jax.tree.map(jnp.sign, updates))


def sign_pgd(step_size: float) -> optax.GradientTransformation:
  """Sign gradient descent with a fixed step (ACE's PGD without projection)."""
  return optax.chain(sign(), optax.scale(-step_size))


OPTIMIZERS = {
    "sign": sign_pgd,
    "sgd": lambda step_size: optax.sgd(step_size),
    "adam": lambda step_size: optax.adam(step_size),
}


def make_optimizer(optimizer: str | optax.GradientTransformation, step_size: float):
  """An optax transformation from a name ("sign", "sgd", "adam") or an existing one."""
  if isinstance(optimizer, optax.GradientTransformation):
    return optimizer
  check_choice("optimizer", optimizer, OPTIMIZERS)
  return OPTIMIZERS[optimizer](step_size)
