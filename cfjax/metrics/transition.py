"""COUT, the counterfactual transition score (Khorram & Fuxin's C3LT, as ACE evaluates it).

Pixels move from x to x' in the order of how much they change (the channel-summed |x' - x|,
largest first), ``max(1, H*W // num_steps)`` pixels per step, until x' is reached. Along the way
the classifier's probability of the source class (c) and of the target class (c') is recorded;
COUT is the area under the c' curve minus the area under the c curve (trapezoids, with the step's
share of the pixels as width), in [-1, 1]: 1 means a few changed pixels already move all the
probability mass to the target.

* Multi-class (softmax over (N, K) logits): c = p(source), c' = p(target), with ``source`` the
  class the classifier predicts for x and ``target`` taken from the batch.
* Binary (one logit, (N,) or (N, 1)): c = the probability of the class predicted for x,
  c' = 1 - c (the target is implied).

Pixels changed by the same amount move in raster order (a stable sort; ACE's unstable sort
leaves ties in an arbitrary order).

Example:
  >>> import numpy as np
  >>> import jax.numpy as jnp
  >>> from cfjax import metrics
  >>> clf = lambda x: jnp.stack([-x.mean((1, 2, 3)), x.mean((1, 2, 3))], axis=1) * 40
  >>> x = np.zeros((1, 10, 10, 1), np.float32)
  >>> b = {"original": x, "counterfactual": x + 1, "target": np.array([1])}
  >>> round(metrics.compute(metrics.cout(clf), b)["cout"], 2)
  0.98
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cfjax._validate import CfjaxInputError
from cfjax.metrics.base import Batch, Metric, check_output, check_pair, mean_metric


def _source(logits, binary: bool):
  """The input's class: positive-logit flags (binary) or argmax classes (multi-class)."""
  if binary:
    return logits.reshape(logits.shape[0]) > 0
  return jnp.argmax(logits, axis=-1)


def _probabilities(logits, binary: bool, source, target):
  """(c, c'): probabilities of the input's class and of the target (binary: of the other class)."""
  if binary:
    z = logits.reshape(logits.shape[0]).astype(jnp.float32)
    c = jax.nn.sigmoid(jnp.where(source, z, -z))
    return c, 1.0 - c
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  rows = jnp.arange(p.shape[0])
  return p[rows, source], p[rows, target]


def cout_curves(classifier: Callable, x, x_cf, target=None, *, binary: bool = False,
                num_steps: int = 50):
  """Per-example COUT and its two probability curves (jittable).

  Args:
    classifier: (N, H, W, C) images in [0, 1] -> logits ((N, K), or (N,) / (N, 1) if binary).
    x, x_cf: (N, H, W, C) inputs and CEs.
    target: (N,) target classes (multi-class only).
    binary: whether the classifier has one logit.
    num_steps: the pixels move in steps of ``max(1, H*W // num_steps)``.

  Returns:
    (cout (N,), c (N, S + 1), c' (N, S + 1)) with S = ceil(H*W / step): the curves start at x
    and end at x'.

  Example:
    >>> clf = lambda x: jnp.stack([-x.sum((1, 2, 3)), x.sum((1, 2, 3))], axis=1)
    >>> x = jnp.zeros((1, 2, 2, 1))
    >>> score, c, c_prime = cout_curves(clf, x, x + 1, jnp.array([1]), num_steps=4)
    >>> c.shape
    (1, 5)
  """
  n, h, w = x.shape[:3]
  hw = h * w
  step = max(1, hw // num_steps)
  steps = -(-hw // step)
  change = jnp.sum(jnp.abs(x_cf.astype(jnp.float32) - x.astype(jnp.float32)), axis=-1).reshape(n, hw)
  order = jnp.argsort(-change, axis=1, stable=True)
  rank = jnp.zeros((n, hw), jnp.int32).at[jnp.arange(n)[:, None], order].set(
      jnp.broadcast_to(jnp.arange(hw, dtype=jnp.int32), (n, hw)))
  target = None if binary else jnp.asarray(target)
  logits = classifier(x)
  source = _source(logits, binary)
  c0, p0 = _probabilities(logits, binary, source, target)

  def one(_, k):
    moved = (rank < jnp.minimum((k + 1) * step, hw)).reshape(n, h, w, 1)
    return None, _probabilities(classifier(jnp.where(moved, x_cf, x)), binary, source, target)

  _, (cs, ps) = jax.lax.scan(one, None, jnp.arange(steps))
  c = jnp.concatenate([c0[:, None], cs.T], axis=1)
  cp = jnp.concatenate([p0[:, None], ps.T], axis=1)
  width = jnp.float32(step / hw)
  score = (_trapezoid(cp) - _trapezoid(c)) * width
  return score, c, cp


def _trapezoid(curve):
  return curve[:, 0] / 2 + jnp.sum(curve[:, 1:-1], axis=1) + curve[:, -1] / 2


def cout(classifier: Callable, *, binary: bool = False, num_steps: int = 50) -> Metric:
  """Mean COUT over CEs (``cout``, ``cout_std``); see the module docstring.

  Args:
    classifier: images -> logits, (N, K) (multi-class; the batch needs ``target``) or (N,) / (N, 1)
      (binary).
    binary: whether the classifier has one logit.
    num_steps: 50 in ACE.

  Example:
    >>> from cfjax.metrics import compute
    >>> clf = lambda x: x.mean((1, 2, 3))[:, None] * 20 - 10     # one logit
    >>> x = np.zeros((1, 4, 4, 1), np.float32)
    >>> r = compute(cout(clf, binary=True), {"original": x, "counterfactual": x})
    >>> round(r["cout"], 3)   # nothing moves: the probability stays on the source class
    -1.0
  """
  if num_steps < 1:
    raise CfjaxInputError(f"cout: num_steps must be >= 1, got {num_steps}.")

  def per_example(b):
    target = None if binary else b["target"].astype(jnp.int32)
    score, _, _ = cout_curves(classifier, b["original"], b["counterfactual"], target,
                              binary=binary, num_steps=num_steps)
    return {"cout": score}

  def check(batch: Batch):
    check_pair(batch)
    shape = check_output(classifier, batch["original"], what="classifier", name="cout",
                         trailing_rank=(0, 1))
    one_logit = len(shape) == 1 or shape[1] == 1
    if binary != one_logit:
      raise CfjaxInputError(f"cout: binary={binary} but the classifier returns logits of shape {shape}"
                            f"{'' if binary else '; set binary=True for a one-logit classifier'}.")
    if not binary:
      t = np.asarray(batch["target"])
      if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() >= shape[1]:
        raise CfjaxInputError(f"cout: target must be (N,) integer classes in [0, {shape[1]}), got "
                              f"shape {t.shape}, dtype {t.dtype}.")

  requires = ("original", "counterfactual") + (() if binary else ("target",))
  return mean_metric("cout", per_example, requires=requires, outputs=("cout",), spread=("cout",),
                     check=check)
