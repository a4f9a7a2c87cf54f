"""Per-example losses, distances and success criteria of counterfactual search.

Conventions (per example, so nothing depends on the batch size):

* classifier outputs are either one logit (binary, shape ``()``: p(class 1) = sigmoid) or K
  logits (shape ``(K,)``); targets are class indices.
* regressor outputs are scalars; targets are values.
* distances are sums over all pixels of [0, 1] images: ``l1 = sum |x' - x|``, ``l2 = ||x' - x||_2``
  (not squared), as in ACE's ``main.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

DISTANCES = ("l1", "l2")


def class_probs(out: jax.Array) -> jax.Array:
  """Class probabilities from one binary logit (``()``) or K logits (``(K,)``)."""
  if out.ndim == 0:
    p = jax.nn.sigmoid(out)
    return jnp.stack([1 - p, p])
  return jax.nn.softmax(out)


def classification_loss(out: jax.Array, target: jax.Array) -> jax.Array:
  """BCE-with-logits for one logit, cross-entropy for K logits (ACE's ``BCEWithLogitsLoss`` / CE)."""
  if out.ndim == 0:
    return optax.sigmoid_binary_cross_entropy(out, target.astype(out.dtype))
  return optax.softmax_cross_entropy_with_integer_labels(out, target)


def class_margin(out: jax.Array, target: jax.Array) -> jax.Array:
  """p(target) minus the largest other class probability; > 0 means the decision is the target."""
  p = class_probs(out)
  others = jnp.where(jnp.arange(p.shape[0]) == target, -jnp.inf, p)
  return p[target] - others.max()


def regression_loss(out: jax.Array, target: jax.Array) -> jax.Array:
  return jnp.square(out - target)


def distance(kind: str, x: jax.Array, x0: jax.Array) -> jax.Array:
  d = (x - x0).reshape(-1)
  if kind == "l1":
    return jnp.abs(d).sum()
  # safe_norm: zero gradient at x == x0, where ||.||_2 has none (the first iteration starts there).
  return optax.safe_norm(d, 0.0)


def target_reached(pred: jax.Array, target: jax.Array, *, classification: bool, threshold: float,
                   tolerance: float) -> jax.Array:
  """The latent methods' stop: ``p(target) > threshold`` (classification) or every output within
  ``tolerance`` of its target (regression)."""
  if classification:
    return class_probs(pred)[target] > threshold
  return jnp.all(jnp.abs(pred - target) <= tolerance)
