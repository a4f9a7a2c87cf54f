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

from typing import NamedTuple

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


class TorchAdamState(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def torch_adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-8) -> optax.GradientTransformation:
  """Adam in PyTorch's arithmetic order (``torch.optim.Adam``, single-tensor path).

  The same algorithm as ``optax.adam(eps_root=0)``, with the float32 operations in torch's
  order: ``m += (1 - b1) (g - m)``, ``v = b2 v + (1 - b2) g^2``, ``denom = sqrt(v) / sqrt(1 - b2^t)
  + eps``, ``update = -(lr / (1 - b1^t)) m / denom``. A latent attack through ReLU / max-pool
  networks can meet a kink where the gradient jumps; optax's order differs from torch's by about
  one float32 ulp per step, enough to cross such a kink on the other side (measured on the
  Counterfactual Attacks fixtures: optax's order leaves the official trajectory by 6e-4 after 9
  steps; this order stays within 1 ulp over every run).
  """

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return TorchAdamState(jnp.zeros((), jnp.int32), zeros, zeros)

  def update(g, state, params=None):
    t = state.count + 1
    tf = t.astype(jnp.float32)
    mu = jax.tree.map(lambda m, x: m + (x - m) * (1 - b1), state.mu, g)
    nu = jax.tree.map(lambda v, x: v * b2 + (1 - b2) * x * x, state.nu, g)
    step_size = learning_rate / (1 - jnp.power(jnp.float32(b1), tf))
    bc2_sqrt = jnp.sqrt(1 - jnp.power(jnp.float32(b2), tf))
    upd = jax.tree.map(lambda m, v: -step_size * m / (jnp.sqrt(v) / bc2_sqrt + eps), mu, nu)
    return upd, TorchAdamState(t, mu, nu)

  return optax.GradientTransformation(init, update)


OPTIMIZERS = {
    "sign": sign_pgd,
    "sgd": lambda step_size: optax.sgd(step_size),
    "adam": lambda step_size: optax.adam(step_size),
    "torch_adam": torch_adam,
}


def standard_promotion(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """``tx`` with its functions traced under standard dtype promotion.

  optax's Adam computes ``decay ** count`` with an int32 ``count``, which JAX's strict dtype
  promotion refuses; wrapped, the optimiser also works inside programs that trace with
  ``jax_numpy_dtype_promotion="strict"`` (as cfjax's tests do).
  """

  def init(params):
    with jax.numpy_dtype_promotion("standard"):
      return tx.init(params)

  def update(updates, state, params=None):
    with jax.numpy_dtype_promotion("standard"):
      return tx.update(updates, state, params)

  return optax.GradientTransformation(init, update)


def make_optimizer(optimizer: str | optax.GradientTransformation, step_size: float):
  """An optax transformation from a name ("sign", "sgd", "adam") or an existing one."""
  if not isinstance(optimizer, optax.GradientTransformation):
    check_choice("optimizer", optimizer, OPTIMIZERS)
    optimizer = OPTIMIZERS[optimizer](step_size)
  return standard_promotion(optimizer)
