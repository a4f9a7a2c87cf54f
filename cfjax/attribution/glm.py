"""Generalised linear models on latent codes: families, the penalised objective and its optax fits.

A head maps a flattened latent ``z`` (D values) to ``eta = z . beta + b`` and then to the mean of its
family through the inverse link:

=========== ============== ============================ =========================
family      attribute      mean ``g(z)``                negative log-likelihood
=========== ============== ============================ =========================
logistic    binary (0/1)   ``sigmoid(eta)``             ``log(1 + e^eta) - y eta``
linear      continuous     ``eta``                      ``(y - eta)^2 / 2``
poisson     count (0,1,..) ``exp(eta)``                 ``e^eta - y eta``
=========== ============== ============================ =========================

The fitted objective of one head is the weighted mean negative log-likelihood plus
``strength * P(beta)``, with ``P = ||beta||^2 / 2`` (L2) or ``sum sqrt(beta^2 + eps^2) - eps`` (L1,
as a smooth surrogate of ``sum |beta|`` that L-BFGS can minimise; ``eps`` is
``HeadsConfig.l1_smoothing``, so coefficients that L1 sets to zero come out of order ``eps``, not
exactly 0). The intercept is not penalised. scikit-learn's ``LogisticRegression(C=C)`` on n
examples is this objective with L2 and ``strength = 1 / (C n)``.

The optimisation runs on standardised features ``(z - mean) / sd`` (fast, well conditioned) with
the penalty written on the coefficients of the raw latent (``beta_raw = beta_std / sd``), so the
minimiser is that of the objective above; ``standardize=True`` penalises ``beta_std`` instead.
Every fit is one problem of a batch: :func:`fit_problems` vmaps over problems (attributes x
penalty strengths x cross-validation folds), which differ only by their targets, example weights
and strength.

Example:
  >>> import jax, jax.numpy as jnp, numpy as np
  >>> x = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
  >>> y = (x @ np.array([2.0, 0.0, -1.0], np.float32) + 0.5).astype(np.float32)
  >>> fit = fit_problems(x, y[None], np.ones((1, 200), np.float32), np.zeros(1, np.float32),
  ...                    family="linear", penalty="l2")
  >>> [round(float(c), 3) + 0.0 for c in fit.coef[0]], round(float(fit.intercept[0]), 3)
  ([2.0, 0.0, -1.0], 0.5)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

FAMILIES = ("logistic", "linear", "poisson")
PENALTIES = ("l2", "l1")


def inverse_link(family: str, eta: jax.Array) -> jax.Array:
  """The mean of ``family`` at linear predictor ``eta`` (probability, value or rate)."""
  if family == "logistic":
    return jax.nn.sigmoid(eta)
  if family == "poisson":
    return jnp.exp(eta)
  return eta


def link(family: str, mean: jax.Array) -> jax.Array:
  """The linear predictor at which ``family`` has mean ``mean`` (logit, identity or log)."""
  if family == "logistic":
    return jnp.log(mean) - jnp.log1p(-mean)
  if family == "poisson":
    return jnp.log(mean)
  return mean


def nll(family: str, eta: jax.Array, y: jax.Array) -> jax.Array:
  """Per-example negative log-likelihood (up to terms free of ``eta``)."""
  if family == "logistic":
    return jnp.logaddexp(jnp.zeros_like(eta), eta) - y * eta
  if family == "poisson":
    return jnp.exp(eta) - y * eta
  return 0.5 * jnp.square(y - eta)


def penalty_value(penalty: str, beta: jax.Array, eps: float) -> jax.Array:
  if penalty == "l1":
    e = jnp.asarray(eps, beta.dtype)
    return jnp.sum(jnp.sqrt(beta * beta + e * e) - e)
  return 0.5 * jnp.sum(beta * beta)


class Fit(NamedTuple):
  """A batch of fitted problems, on the raw latent: ``eta = x @ coef[p] + intercept[p]``."""

  coef: jax.Array        # (P, D)
  intercept: jax.Array   # (P,)
  iterations: jax.Array  # (P,) optimiser steps (L-BFGS iterations or Adam steps)
  grad_norm: jax.Array   # (P,) norm of the full-batch gradient at the solution (standardised coordinates)


class Solver(NamedTuple):
  """How to minimise: full-batch L-BFGS (``batch_size`` None) or minibatch Adam."""

  max_iter: int = 500
  tol: float = 1e-5
  batch_size: int | None = None
  epochs: int = 50
  learning_rate: float = 1e-2
  l1_smoothing: float = 1e-4
  standardize: bool = False


def _objective(family, penalty, eps, pen_w):
  def fun(params, xs, y, w, strength):
    eta = xs @ params["coef"] + params["intercept"]
    data = jnp.sum(w * nll(family, eta, y)) / jnp.maximum(jnp.sum(w), 1.0)
    return data + strength * penalty_value(penalty, params["coef"] * pen_w, eps)
  return fun


def _init(family, y, w, d):
  mean = jnp.sum(w * y) / jnp.maximum(jnp.sum(w), 1.0)
  if family == "logistic":
    m = jnp.clip(mean, 1e-3, 1 - 1e-3)
    b = jnp.log(m) - jnp.log1p(-m)
  elif family == "poisson":
    b = jnp.log(jnp.maximum(mean, 1e-3))
  else:
    b = mean
  return {"coef": jnp.zeros((d,), y.dtype), "intercept": b.astype(y.dtype)}


def _lbfgs(fun, params, max_iter, tol):
  """Full-batch L-BFGS (optax, zoom line search) until the gradient norm is below ``tol``."""
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def cond(carry):
    _, state = carry
    it = otu.tree_get(state, "count")
    g = otu.tree_get(state, "grad")
    return (it == 0) | ((it < max_iter) & (otu.tree_norm(g) >= tol))

  def body(carry):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=fun)
    return optax.apply_updates(p, updates), state

  params, state = jax.lax.while_loop(cond, body, (params, opt.init(params)))
  return params, otu.tree_get(state, "count")


def _adam(fun_rows, params, batches, learning_rate):
  """Minibatch Adam over precomputed index batches (E * B, batch_size), shared by every problem."""
  opt = optax.adam(learning_rate)

  def body(carry, rows):
    p, state = carry
    g = jax.grad(fun_rows)(p, rows)
    updates, state = opt.update(g, state, p)
    return (optax.apply_updates(p, updates), state), None

  (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), batches)
  return params, jnp.int32(batches.shape[0])


def minibatches(n: int, batch_size: int, epochs: int, key) -> np.ndarray:
  """(epochs * (n // batch_size), batch_size) row indices, a fresh permutation per epoch."""
  keys = jax.random.split(key, epochs)
  perms = np.stack([np.asarray(jax.random.permutation(k, n)) for k in keys])
  nb = n // batch_size
  return perms[:, : nb * batch_size].reshape(epochs * nb, batch_size).astype(np.int32)


def standardizer(x: np.ndarray, rows_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and sd of the features over the rows with positive weight (sd 1 where a feature is constant)."""
  keep = rows_weight > 0
  mean = x[keep].mean(0)
  sd = x[keep].std(0)
  return mean.astype(x.dtype), np.where(sd > 0, sd, 1.0).astype(x.dtype)


def fit_problems(x, y, w, strength, *, family: str, penalty: str, solver: Solver = Solver(),
                 key=None) -> Fit:
  """Fits P penalised GLMs of one family on shared features, vmapped over problems.

  Args:
    x: (n, D) float32 features (flattened latents).
    y: (P, n) targets of each problem; w: (P, n) example weights (0 leaves an example out: missing
      labels, held-out folds); strength: (P,) penalty strengths.
    family, penalty: see :data:`FAMILIES`, :data:`PENALTIES`.
    solver: L-BFGS (``batch_size=None``) or minibatch Adam settings.
    key: shuffles the minibatches (Adam only).

  Returns:
    A :class:`Fit` on the raw features.
  """
  x = np.asarray(x, np.float32)
  y, w = np.asarray(y, np.float32), np.asarray(w, np.float32)
  mean, sd = standardizer(x, w.max(0))
  pen_w = np.ones_like(sd) if solver.standardize else (1.0 / sd).astype(np.float32)
  xs = (x - mean) / sd
  batches = None
  if solver.batch_size is not None:
    batches = minibatches(x.shape[0], solver.batch_size, solver.epochs,
                          key if key is not None else jax.random.key(0))
  coef, intercept, it, gnorm = _fit_jit(jnp.asarray(xs), jnp.asarray(y), jnp.asarray(w),
                                        jnp.asarray(strength, jnp.float32), jnp.asarray(pen_w),
                                        None if batches is None else jnp.asarray(batches),
                                        family=family, penalty=penalty, solver=solver)
  coef_raw = coef / jnp.asarray(sd)
  intercept_raw = intercept - coef_raw @ jnp.asarray(mean)
  return Fit(coef_raw, intercept_raw, it, gnorm)


def _fit_one(xs, y, w, strength, pen_w, batches, *, family, penalty, solver):
  fun = _objective(family, penalty, solver.l1_smoothing, pen_w)
  full = lambda p: fun(p, xs, y, w, strength)  # noqa: E731
  params = _init(family, y, w, xs.shape[1])
  if batches is None:
    params, it = _lbfgs(full, params, solver.max_iter, solver.tol)
  else:
    rows = lambda p, r: fun(p, xs[r], y[r], w[r], strength)  # noqa: E731
    params, it = _adam(rows, params, batches, solver.learning_rate)
  gnorm = otu.tree_norm(jax.grad(full)(params))
  return params["coef"], params["intercept"], it, gnorm


def _fit_batch(xs, y, w, strength, pen_w, batches, *, family, penalty, solver):
  with jax.numpy_dtype_promotion("standard"):  # optax mixes its int32 counters with floats
    one = lambda yy, ww, s: _fit_one(xs, yy, ww, s, pen_w, batches, family=family,  # noqa: E731
                                     penalty=penalty, solver=solver)
    return jax.vmap(one)(y, w, strength)


_fit_jit = jax.jit(_fit_batch, static_argnames=("family", "penalty", "solver"))


def mean_nll(family: str, eta: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
  """Weighted mean negative log-likelihood along the last axis (numpy; cross-validation scores)."""
  eta = np.asarray(eta, np.float64)
  if family == "logistic":
    v = np.logaddexp(0.0, eta) - y * eta
  elif family == "poisson":
    v = np.exp(eta) - y * eta
  else:
    v = 0.5 * np.square(y - eta)
  return (w * v).sum(-1) / np.maximum(w.sum(-1), 1.0)
