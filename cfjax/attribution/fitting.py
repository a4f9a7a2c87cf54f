"""Fitting attribute heads: one GLM per attribute on latent codes, all attributes at once.

:func:`fit_heads` fits a logistic head for every binary attribute, a linear one for every
continuous attribute and a Poisson one for every count (or the families the config names), with an
L1 or L2 penalty of a given strength or one chosen per attribute by k-fold cross-validation (the
smallest held-out negative log-likelihood). All heads of one family, all penalty strengths and
all folds are one vmapped optax fit (:mod:`cfjax.attribution.glm`). A fraction of the examples
is held out for per-attribute metrics (:mod:`cfjax.attribution.metrics`). NaN labels are missing
and left out of that attribute's fit.

Example:
  >>> import jax, numpy as np
  >>> z = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32)
  >>> attrs = {"smiling": (z[:, 0] > 0).astype(np.float32), "age": 40 + 5 * z[:, 1]}
  >>> heads = fit_heads(z, attrs, HeadsConfig(strength=1e-4), key=jax.random.key(0), generator="toy")
  >>> heads.families, heads.predict(z[:2]).shape
  (('logistic', 'linear'), (2, 2))
  >>> heads.metrics["age"]["r2"] > 0.99
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cfjax._validate import CfjaxInputError, check_choice
from cfjax.attribution import glm
from cfjax.attribution.heads import Heads, generator_identity
from cfjax.attribution.metrics import evaluate

@dataclasses.dataclass(frozen=True)
class HeadsConfig:
  """How attribute heads are fitted.

  Attributes:
    family: "auto" (0/1 values: logistic; non-negative integers with more than two values: Poisson;
      otherwise linear), one of :data:`~cfjax.attribution.glm.FAMILIES` for every attribute, or a
      tuple with one family (or "auto") per attribute (in the order of the attribute mapping).
    penalty: "l2" or "l1" (a smooth surrogate, see :mod:`cfjax.attribution.glm`).
    strength: the penalty strength, or a tuple of candidates chosen per attribute by
      ``folds``-fold cross-validation. ``1 / (C n)`` is scikit-learn's ``C`` on n examples.
    folds: cross-validation folds (used when ``strength`` has several values).
    holdout: fraction of the examples held out for the metrics (0: fit on everything, no metrics).
    standardize: penalise the coefficients of standardised latents instead of raw ones.
    batch_size: None for full-batch L-BFGS; otherwise minibatch Adam with this batch size.
    epochs, learning_rate: minibatch Adam settings.
    max_iter, tol: L-BFGS iterations at most and the gradient-norm tolerance.
    l1_smoothing: eps of the smooth L1 surrogate.
    min_class_count: a logistic head needs at least this many positives and negatives (in the
      fitting part, and in every cross-validation training split).
  """

  family: str | tuple[str, ...] = "auto"
  penalty: str = "l2"
  strength: float | tuple[float, ...] = 1e-3
  folds: int = 5
  holdout: float = 0.2
  standardize: bool = False
  batch_size: int | None = None
  epochs: int = 50
  learning_rate: float = 1e-2
  max_iter: int = 500
  tol: float = 1e-5
  l1_smoothing: float = 1e-4
  min_class_count: int = 5

  @property
  def strengths(self) -> tuple[float, ...]:
    s = self.strength
    return tuple(float(v) for v in s) if isinstance(s, (tuple, list)) else (float(s),)

  def solver(self) -> glm.Solver:
    return glm.Solver(max_iter=self.max_iter, tol=self.tol, batch_size=self.batch_size,
                      epochs=self.epochs, learning_rate=self.learning_rate,
                      l1_smoothing=self.l1_smoothing, standardize=self.standardize)

  def check(self) -> None:
    """Raises CfjaxInputError for an inconsistent configuration."""
    check_choice("penalty", self.penalty, glm.PENALTIES)
    if not self.strengths or any(not np.isfinite(s) or s < 0 for s in self.strengths):
      raise CfjaxInputError(f"penalty strengths must be finite and >= 0, got {self.strength}")
    if len(self.strengths) > 1 and self.folds < 2:
      raise CfjaxInputError(f"cross-validating {len(self.strengths)} strengths needs folds >= 2, got {self.folds}")
    if not 0.0 <= self.holdout < 1.0:
      raise CfjaxInputError(f"holdout must be in [0, 1), got {self.holdout}")
    if self.batch_size is not None and (self.batch_size < 1 or self.epochs < 1):
      raise CfjaxInputError(f"batch_size and epochs must be >= 1, got {self.batch_size}, {self.epochs}")
    if self.max_iter < 1 or self.tol <= 0 or self.l1_smoothing <= 0:
      raise CfjaxInputError("max_iter must be >= 1, tol and l1_smoothing > 0")

  def to_json(self) -> dict:
    return dataclasses.asdict(self)



def infer_family(values: np.ndarray) -> str:
  """"logistic" for 0/1 labels, "poisson" for other non-negative integers, else "linear"."""
  v = values[np.isfinite(values)]
  if np.isin(v, (0.0, 1.0)).all():
    return "logistic"
  if (v >= 0).all() and (v == np.round(v)).all():
    return "poisson"
  return "linear"


def _check_attribute(name: str, family: str, v: np.ndarray, min_count: int) -> None:
  known = v[np.isfinite(v)]
  if known.size == 0:
    raise CfjaxInputError(f"attribute {name!r} has no labels (all NaN)")
  if family == "logistic":
    if not np.isin(known, (0.0, 1.0)).all():
      raise CfjaxInputError(f"attribute {name!r}: a logistic head needs 0/1 labels, got values "
                            f"{np.unique(known)[:5].tolist()}")
    pos, neg = int(known.sum()), int(known.size - known.sum())
    if min(pos, neg) < min_count:
      raise CfjaxInputError(f"attribute {name!r} has too few examples of one class to fit a logistic head: "
                            f"{pos} positives and {neg} negatives (need at least {min_count} of each)")
  elif family == "poisson":
    if (known < 0).any() or (known != np.round(known)).any():
      raise CfjaxInputError(f"attribute {name!r}: a Poisson head needs non-negative integer counts")
  if family != "logistic" and np.ptp(known) == 0:
    raise CfjaxInputError(f"attribute {name!r} is constant ({known[0]}): nothing to fit")


def _check_inputs(latents, attributes, config: HeadsConfig, generator):
  """Host-side checks of everything :func:`fit_heads` takes; returns (x (N, D), Y (A, N), names, families)."""
  config.check()
  z = np.asarray(latents)
  if not isinstance(generator, str):
    z = generator.check_latents(z)
  elif z.ndim < 2:
    raise CfjaxInputError(f"latents must be a batch (N, ...) of latent codes, got shape {z.shape}")
  if not np.issubdtype(z.dtype, np.floating) or not np.isfinite(z).all():
    raise CfjaxInputError("latents must be finite floats")
  if not isinstance(attributes, Mapping) or not attributes:
    raise CfjaxInputError("attributes must be a non-empty mapping name -> (N,) labels")
  names = tuple(str(k) for k in attributes)
  ys = []
  for n in names:
    v = np.asarray(attributes[n])
    if v.shape != (z.shape[0],) or not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
      raise CfjaxInputError(f"attribute {n!r} must be {z.shape[0]} numbers (one per latent), got "
                            f"shape {v.shape} and dtype {v.dtype}")
    ys.append(v.astype(np.float64))
  fam = config.family
  if isinstance(fam, str):
    if fam != "auto":
      check_choice("GLM family", fam, glm.FAMILIES)
    fams = tuple(infer_family(v) if fam == "auto" else fam for v in ys)
  else:
    if len(fam) != len(names):
      raise CfjaxInputError(f"config.family names {len(fam)} families for {len(names)} attributes")
    fams = tuple(infer_family(v) if f == "auto" else check_choice("GLM family", f, glm.FAMILIES)
                 for f, v in zip(fam, ys))
  for n, f, v in zip(names, fams, ys):
    _check_attribute(n, f, v, config.min_class_count)
  return z.reshape(z.shape[0], -1).astype(np.float32), np.stack(ys), names, fams, tuple(z.shape[1:])


def _host_rng(key) -> np.random.Generator:
  """A numpy generator seeded by a JAX key (host-side, so splitting compiles nothing)."""
  data = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  return np.random.default_rng(np.asarray(data).ravel().tolist())


def _split(n: int, config: HeadsConfig, key) -> tuple[np.ndarray, np.ndarray]:
  """Training mask (N,) and fold index of every training example (-1 for held-out ones)."""
  perm = _host_rng(key).permutation(n)
  n_test = int(round(config.holdout * n))
  train = np.ones(n, bool)
  train[perm[:n_test]] = False
  fold = np.full(n, -1, np.int64)
  rows = perm[n_test:]
  fold[rows] = np.arange(rows.size) % max(config.folds, 1)
  return train, fold


def _cross_validate(x, y, w, fold, family, config, key) -> np.ndarray:
  """Index of the best strength per attribute by k-fold held-out negative log-likelihood."""
  s = np.asarray(config.strengths, np.float32)
  a, k = y.shape[0], config.folds
  fold_w = np.stack([w * (fold != f) for f in range(k)], 1)              # (A, K, N)
  yy = np.broadcast_to(y[:, None, None], (a, s.size, k, y.shape[1]))
  ww = np.broadcast_to(fold_w[:, None], (a, s.size, k, y.shape[1]))
  ss = np.broadcast_to(s[None, :, None], (a, s.size, k))
  fit = glm.fit_problems(x, yy.reshape(-1, y.shape[1]), ww.reshape(-1, y.shape[1]), ss.reshape(-1),
                         family=family, penalty=config.penalty, solver=config.solver(), key=key)
  eta = (np.asarray(fit.coef) @ x.T + np.asarray(fit.intercept)[:, None]).reshape(a, s.size, k, -1)
  test_w = np.stack([w * (fold == f) for f in range(k)], 1)[:, None]     # (A, 1, K, N)
  score = (glm.mean_nll(family, eta, y[:, None, None], test_w) * test_w.sum(-1)).sum(-1)
  return np.argmin(score, axis=1)


def _check_folds(names, fams, y, w, fold, config) -> None:
  for n, f, yy, ww in zip(names, fams, y, w):
    if f != "logistic":
      continue
    splits = [ww > 0] if len(config.strengths) == 1 else [(ww > 0) & (fold != k) for k in range(config.folds)]
    least = min(min(int(yy[m].sum()), int((1 - yy[m]).sum())) for m in splits)
    if least < config.min_class_count:
      where = (f"the fitting part (after holding out {config.holdout:.0%})" if len(splits) == 1 else
               f"a cross-validation training split ({config.folds} folds)")
      raise CfjaxInputError(
          f"attribute {n!r} has too few examples of one class to fit a logistic head in {where}: {least} "
          f"(need at least {config.min_class_count}); lower holdout / folds or add examples")


def _fit_family(x, y, w, fold, family, config: HeadsConfig, key) -> tuple[glm.Fit, np.ndarray]:
  """Fits the heads of one family (strengths cross-validated when several); returns the fit and strengths."""
  best = (np.zeros(y.shape[0], np.int64) if len(config.strengths) == 1 else
          _cross_validate(x, y, w, fold, family, config, key))
  s = np.asarray(config.strengths, np.float64)[best]
  fit = glm.fit_problems(x, y, w, s.astype(np.float32), family=family, penalty=config.penalty,
                         solver=config.solver(), key=key)
  return fit, s


def fit_heads(latents, attributes: Mapping[str, Any], config: HeadsConfig = HeadsConfig(), *, key,
              generator) -> Heads:
  """Fits one GLM head per attribute on latent codes; returns :class:`Heads`.

  Args:
    latents: (N, *latent_shape) float latent codes (e.g. ``generator.encode`` of N images).
    attributes: name -> (N,) labels (0/1, values or counts; NaN = missing).
    config: families, penalty, strengths (cross-validated when several), solver and holdout.
    key: splits holdout / folds and shuffles minibatches.
    generator: the :class:`~cfjax.generators.Generator` the latents come from (recorded, so that
      the heads refuse other generators), or its name when it is not loaded here.

  Raises:
    CfjaxInputError: before anything compiles, for bad shapes, labels a family cannot fit, too few
      positives or negatives, or an inconsistent config.

  Example:
    >>> z = np.random.default_rng(1).normal(size=(300, 4)).astype(np.float32)
    >>> h = fit_heads(z, {"a": (z[:, 0] > 0).astype(np.float32)}, HeadsConfig(strength=(1e-3, 1e-1), folds=3),
    ...               key=jax.random.key(0), generator="toy")
    >>> h.strength.tolist(), h.metrics["a"]["accuracy"] > 0.9
    ([0.001], True)
  """
  x, y_all, names, fams, shape = _check_inputs(latents, attributes, config, generator)
  train, fold = _split(x.shape[0], config, key)
  known = np.isfinite(y_all)
  w = (known & train[None]).astype(np.float32)
  y = np.where(known, y_all, 0.0).astype(np.float32)
  _check_folds(names, fams, y, w, fold, config)
  kernel = np.zeros((x.shape[1], len(names)), np.float32)
  bias, strength = np.zeros(len(names), np.float32), np.zeros(len(names), np.float64)
  iterations, grad_norm = np.zeros(len(names), np.int64), np.zeros(len(names), np.float64)
  for family in sorted(set(fams)):
    idx = [i for i, f in enumerate(fams) if f == family]
    fkey = jax.random.fold_in(key, 1 + glm.FAMILIES.index(family))
    fit, s = _fit_family(x, y[idx], w[idx], fold, family, config, fkey)
    kernel[:, idx], bias[idx], strength[idx] = np.asarray(fit.coef).T, np.asarray(fit.intercept), s
    iterations[idx], grad_norm[idx] = np.asarray(fit.iterations), np.asarray(fit.grad_norm)
  # L-BFGS stops early only once the gradient norm is below tol; Adam runs its epochs.
  info = {"iterations": iterations.tolist(), "grad_norm": grad_norm.tolist(),
          "converged": [config.batch_size is None and int(i) < config.max_iter for i in iterations]}
  diam = np.array([1.0 if f == "logistic" else float(np.ptp(v[(wi > 0)]))
                   for f, v, wi in zip(fams, y, w)])
  heads = Heads({"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}, names, fams, shape,
                generator_identity(generator, shape), diam, strength,
                info={**info, "config": config.to_json(), "num_train": int(train.sum())})
  if config.holdout > 0:
    heads = dataclasses.replace(heads, metrics=evaluate(heads, x[~train].reshape((-1,) + shape),
                                                        {n: y_all[i, ~train] for i, n in enumerate(names)}))
  return heads
