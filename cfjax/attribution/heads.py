"""Attribute heads: one GLM per named attribute on a generator's latent codes, fitted all at once.

The heads are a Flax module (:class:`GLM`: a linear map and the inverse links) whose parameters
are fitted with optax.

:func:`fit_heads` fits a logistic head for every binary attribute, a linear one for every
continuous attribute and a Poisson one for every count (or the families the config names), with an
L1 or L2 penalty of a given strength or one chosen per attribute by k-fold cross-validation (the
smallest held-out negative log-likelihood). All heads of one family, all penalty strengths and
all folds are one vmapped optax fit (:mod:`cfjax.attribution.glm`). A fraction of the examples
is held out for per-attribute metrics (accuracy, AUC and log-loss; R^2 and RMSE; deviance
explained). NaN labels are missing and left out of that attribute's fit.

The :class:`Heads` record the generator they were fitted for (its name, latent shape and a
fingerprint of its parameters) and refuse latents of another generator. They are saved with orbax
(:meth:`Heads.save`, :func:`load_heads`) beside a JSON record of names, families, ranges and
metrics. Heads from elsewhere (e.g. scikit-learn coefficients) enter through
:func:`heads_from_coefficients`.

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
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfjax._validate import CfjaxInputError, check_choice, unknown_name
from cfjax.attribution import glm

FORMAT = "cfjax-heads"
VERSION = 1


@dataclasses.dataclass(frozen=True)
class HeadsConfig:
  """How attribute heads are fitted.

  Attributes:
    family: "auto" (0/1 values: logistic; non-negative integers with more than two values: Poisson;
      otherwise linear), one of :data:`~cfjax.attribution.glm.FAMILIES` for every attribute, or a
      tuple with one family per attribute (in the order of the attribute mapping).
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


# -- generator identity ---------------------------------------------------------------------------

def generator_identity(generator, latent_shape: Sequence[int] | None = None) -> dict:
  """What heads record of their generator: its name, latent shape and a sha256 of its parameters.

  ``generator`` is a :class:`~cfjax.generators.Generator` or, for latents whose generator is not
  loaded here, a name (then ``latent_shape`` is taken from the latents and there is no fingerprint).
  """
  if isinstance(generator, str):
    return {"name": generator, "latent_shape": None if latent_shape is None else list(latent_shape),
            "fingerprint": None}
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(generator.params):
    a = np.asarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape};".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return {"name": str(generator.name), "latent_shape": list(generator.latent_shape),
          "fingerprint": h.hexdigest()}


def _same_generator(a: dict, b: dict) -> bool:
  if a["latent_shape"] is not None and b["latent_shape"] is not None and a["latent_shape"] != b["latent_shape"]:
    return False
  if a["fingerprint"] and b["fingerprint"]:
    return a["fingerprint"] == b["fingerprint"]
  return a["name"] == b["name"]


# -- the heads --------------------------------------------------------------------------------------

def glm_predict(params: Mapping[str, Any], families: Sequence[str], z: jax.Array) -> jax.Array:
  """Means of every head at ``z``: (A,) for one flattened latent (D,), (N, A) for (N, D).

  ``params`` is ``{"kernel": (D, A), "bias": (A,)}`` (the layout of ``flax.nnx.Linear``). Pure,
  so it can be used inside ``jit`` / ``grad`` with the parameters passed as arguments.
  """
  kernel = params["kernel"]
  eta = jnp.asarray(z, kernel.dtype) @ kernel + params["bias"]
  cols = [glm.inverse_link(f, eta[..., a]) for a, f in enumerate(families)]
  return jnp.stack(cols, axis=-1)


class GLM(nnx.Module):
  """The heads as a Flax module: a linear map (D -> A) and each head's inverse link.

  Its ``nnx.split`` state is ``{"kernel": (D, A), "bias": (A,)}``, the :attr:`Heads.params` layout,
  so the module composes with Flax code (e.g. a head fine-tuned inside a larger nnx model).
  """

  def __init__(self, kernel, bias, families: Sequence[str]):
    self.kernel = nnx.Param(jnp.asarray(kernel))
    self.bias = nnx.Param(jnp.asarray(bias))
    self.families = tuple(families)

  def __call__(self, z):
    return glm_predict({"kernel": self.kernel[...], "bias": self.bias[...]}, self.families, z)


@dataclasses.dataclass(frozen=True, eq=False)
class Heads:
  """Fitted attribute heads of one generator.

  ``params`` holds ``kernel`` (D, A) and ``bias`` (A,) on the flattened raw latent; ``diam`` is
  the diameter of each attribute's range (1 for probabilities, the observed range of the training
  labels otherwise): the denominator of local importances.
  """

  params: dict
  names: tuple[str, ...]
  families: tuple[str, ...]
  latent_shape: tuple[int, ...]
  generator: dict
  diam: np.ndarray
  strength: np.ndarray
  metrics: dict = dataclasses.field(default_factory=dict)
  info: dict = dataclasses.field(default_factory=dict)

  @property
  def num_attributes(self) -> int:
    return len(self.names)

  def _flat(self, z):
    z = jnp.asarray(z)
    lead = z.shape[: z.ndim - len(self.latent_shape)]
    return z.reshape(lead + (-1,))

  def linear_predictor(self, z) -> jax.Array:
    """``eta = z . beta + b`` of every head: (A,) for one latent, (N, A) for a batch."""
    kernel = self.params["kernel"]
    return jnp.asarray(self._flat(z), kernel.dtype) @ kernel + self.params["bias"]

  def predict(self, z) -> jax.Array:
    """Every head's mean (probability, value or rate) at latents ``z`` of ``latent_shape``.

    Usable inside ``jit``; latents are cast to the heads' dtype (float32, or float64 for imported
    float64 coefficients with x64 enabled).
    """
    return glm_predict(self.params, self.families, self._flat(z))

  def module(self) -> GLM:
    """The heads as a Flax :class:`GLM` module on flattened latents."""
    return GLM(self.params["kernel"], self.params["bias"], self.families)

  def index(self, names: str | Sequence[str]) -> list[int]:
    """Positions of attribute ``names`` (CfjaxInputError for unknown ones)."""
    names = [names] if isinstance(names, str) else list(names)
    for n in names:
      if n not in self.names:
        raise unknown_name("attribute", n, self.names)
    return [self.names.index(n) for n in names]

  def directions(self, names: str | Sequence[str]) -> np.ndarray:
    """The coefficient vectors ``beta`` of the named heads, shaped (k, *latent_shape)."""
    kernel = np.asarray(self.params["kernel"])
    return kernel[:, self.index(names)].T.reshape((-1,) + tuple(self.latent_shape))

  def select(self, names: Sequence[str]) -> "Heads":
    """The heads of ``names`` only, in that order."""
    idx = self.index(names)
    cols = np.asarray(idx, np.int32)
    params = {"kernel": jnp.asarray(self.params["kernel"])[:, cols],
              "bias": jnp.asarray(self.params["bias"])[cols]}
    return dataclasses.replace(
        self, params=params, names=tuple(self.names[i] for i in idx),
        families=tuple(self.families[i] for i in idx), diam=self.diam[idx], strength=self.strength[idx],
        metrics={self.names[i]: self.metrics[self.names[i]] for i in idx if self.names[i] in self.metrics})

  def check_generator(self, generator) -> None:
    """Refuses a generator other than the one the heads were fitted for."""
    ident = generator_identity(generator, self.latent_shape)
    if not _same_generator(self.generator, ident):
      raise CfjaxInputError(
          f"these attribute heads were fitted for generator {self.generator['name']!r} (latent shape "
          f"{tuple(self.generator['latent_shape'] or self.latent_shape)}), not for {ident['name']!r} "
          f"(latent shape {tuple(ident['latent_shape'] or self.latent_shape)}"
          f"{', different parameters' if ident['name'] == self.generator['name'] else ''}); "
          "fit heads on this generator's latents")

  def check_latents(self, z, *, name: str = "latents") -> np.ndarray:
    """Checks a batch (N, *latent_shape) of finite latents on the host; returns it as float32."""
    z = np.asarray(z)
    if z.ndim != 1 + len(self.latent_shape) or z.shape[1:] != tuple(self.latent_shape):
      raise CfjaxInputError(f"{name} must have shape (N, {', '.join(map(str, self.latent_shape))}) for "
                            f"the heads of generator {self.generator['name']!r}, got {z.shape}")
    if not np.issubdtype(z.dtype, np.floating) or not np.isfinite(z).all():
      raise CfjaxInputError(f"{name} must be finite floats")
    return z.astype(np.float32, copy=False)

  def summary(self) -> list[dict]:
    """One row per head: name, family, chosen strength, diameter and held-out metrics."""
    return [{"attribute": n, "family": f, "strength": float(s), "diam": float(d), **self.metrics.get(n, {})}
            for n, f, s, d in zip(self.names, self.families, self.strength, self.diam)]

  def save(self, path, *, overwrite: bool = False) -> Path:
    """Writes the heads to directory ``path`` (orbax arrays + ``cfjax_heads.json``)."""
    return save_heads(self, path, overwrite=overwrite)


def heads_from_coefficients(coef, intercept, names: Sequence[str], *, generator, family: str | Sequence[str]
                            = "logistic", latent_shape: Sequence[int] | None = None, diam=None) -> Heads:
  """Heads from given coefficients, e.g. scikit-learn's ``coef_`` / ``intercept_`` stacked.

  ``coef`` is (A, D) (kept in its float dtype: float64 coefficients predict in float64 when x64
  is enabled); ``diam`` defaults to 1 for logistic heads and must be given for the others.

  Example:
    >>> h = heads_from_coefficients(np.eye(2), np.zeros(2), ["a", "b"], generator="toy")
    >>> [round(float(p), 3) for p in h.predict(np.array([0.0, 2.0], np.float32))]
    [0.5, 0.881]
  """
  coef = np.asarray(coef)
  if coef.ndim != 2 or len(names) != coef.shape[0] or np.shape(intercept) != (coef.shape[0],):
    raise CfjaxInputError(f"coef must be (A, D) and intercept (A,) for {len(names)} names, got "
                          f"{coef.shape} and {np.shape(intercept)}")
  fams = (family,) * len(names) if isinstance(family, str) else tuple(family)
  for f in fams:
    check_choice("GLM family", f, glm.FAMILIES)
  if diam is None:
    if any(f != "logistic" for f in fams):
      raise CfjaxInputError("diam (the range of each attribute) is needed for linear and Poisson heads")
    diam = np.ones(len(names))
  shape = tuple(latent_shape) if latent_shape is not None else (coef.shape[1],)
  if int(np.prod(shape)) != coef.shape[1]:
    raise CfjaxInputError(f"latent shape {shape} does not hold {coef.shape[1]} coefficients")
  ident = generator_identity(generator, shape)
  params = {"kernel": jnp.asarray(coef.T), "bias": jnp.asarray(np.asarray(intercept, coef.dtype))}
  return Heads(params, tuple(names), fams, shape, ident, np.asarray(diam, np.float64),
               np.full(len(names), np.nan))


# -- fitting ----------------------------------------------------------------------------------------

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
    fams = tuple(check_choice("GLM family", f, glm.FAMILIES) for f in fam)
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


# -- metrics ----------------------------------------------------------------------------------------

def auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN with one class."""
  labels = labels.astype(bool)
  npos, nneg = int(labels.sum()), int((~labels).sum())
  if npos == 0 or nneg == 0:
    return float("nan")
  order = np.argsort(scores, kind="stable")
  ranks = np.empty(scores.size, np.float64)
  sorted_s = scores[order]
  # Average ranks over ties.
  starts = np.r_[0, np.nonzero(np.diff(sorted_s))[0] + 1]
  ends = np.r_[starts[1:], scores.size]
  for s, e in zip(starts, ends):
    ranks[order[s:e]] = 0.5 * (s + e - 1) + 1
  return float((ranks[labels].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def _metrics(family: str, pred: np.ndarray, y: np.ndarray) -> dict:
  m = np.isfinite(y)
  pred, y = pred[m].astype(np.float64), y[m].astype(np.float64)
  out = {"n": int(y.size)}
  if y.size == 0:
    return out
  if family == "logistic":
    p = np.clip(pred, 1e-12, 1 - 1e-12)
    out.update(accuracy=float(((pred >= 0.5) == (y > 0.5)).mean()), auc=auc(pred, y),
               log_loss=float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean()))
    return out
  ss_res, ss_tot = float(np.square(y - pred).sum()), float(np.square(y - y.mean()).sum())
  out.update(r2=1 - ss_res / ss_tot if ss_tot > 0 else float("nan"), rmse=float(np.sqrt(ss_res / y.size)))
  if family == "poisson":
    def dev(mu):
      mu = np.maximum(mu, 1e-12)
      return 2 * float((np.where(y > 0, y * np.log(np.maximum(y, 1e-12) / mu), 0.0) - (y - mu)).sum())
    d0 = dev(np.full_like(y, y.mean()))
    out["deviance_explained"] = 1 - dev(pred) / d0 if d0 > 0 else float("nan")
  return out


def evaluate(heads: Heads, latents, attributes: Mapping[str, Any]) -> dict:
  """Per-attribute metrics of ``heads`` on labelled latents: accuracy / AUC / log-loss (logistic),
  R^2 / RMSE (linear), and also deviance explained (Poisson). NaN labels are skipped."""
  z = heads.check_latents(latents)
  pred = np.asarray(heads.predict(z))
  out = {}
  for n, y in attributes.items():
    i = heads.index(n)[0]
    y = np.asarray(y, np.float64)
    if y.shape != (z.shape[0],):
      raise CfjaxInputError(f"attribute {n!r} must have {z.shape[0]} labels, got shape {y.shape}")
    out[n] = _metrics(heads.families[i], pred[:, i], y)
  return out


# -- saving -----------------------------------------------------------------------------------------

def save_heads(heads: Heads, path, *, overwrite: bool = False) -> Path:
  """Writes ``heads`` to directory ``path``: orbax arrays in ``arrays/`` and ``cfjax_heads.json``.

  The directory is written beside its final place and renamed into it (never half-written).
  """
  from cfjax.checkpoint import CheckpointError, _checkpointer, _file_hashes
  path = Path(path).absolute()
  if path.exists() and not overwrite:
    raise CheckpointError(f"{path} exists; pass overwrite=True to replace it")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  arrays = {"kernel": np.asarray(heads.params["kernel"]), "bias": np.asarray(heads.params["bias"]),
            "diam": np.asarray(heads.diam), "strength": np.asarray(heads.strength)}
  try:
    ckptr = _checkpointer()
    ckptr.save(tmp / "arrays", arrays)
    ckptr.wait_until_finished()
    record = {"format": FORMAT, "version": VERSION, "names": list(heads.names),
              "families": list(heads.families), "latent_shape": list(heads.latent_shape),
              "generator": heads.generator, "metrics": heads.metrics, "info": heads.info,
              "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()},
              "files": _file_hashes(tmp / "arrays")}
    (tmp / "cfjax_heads.json").write_text(json.dumps(record, indent=1, sort_keys=True, default=_json_default))
    if path.exists():
      shutil.rmtree(path)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return path


def _json_default(v):
  if isinstance(v, (np.floating, np.integer, np.bool_)):
    return v.item()
  raise TypeError(f"not JSON serialisable: {type(v)}")


def load_heads(path, *, generator=None) -> Heads:
  """Reads heads written by :meth:`Heads.save`; with ``generator``, refuses heads of another one.

  Example:
    >>> h = heads_from_coefficients(np.eye(2), np.zeros(2), ["a", "b"], generator="toy")
    >>> _ = h.save("/tmp/cfjax_doc_heads", overwrite=True)
    >>> load_heads("/tmp/cfjax_doc_heads", generator="toy").names
    ('a', 'b')
  """
  from cfjax.checkpoint import CheckpointError, _checkpointer, _sha256
  path = Path(path).absolute()
  rec_path = path / "cfjax_heads.json"
  if not rec_path.is_file():
    raise CheckpointError(f"{path} holds no attribute heads (no cfjax_heads.json)")
  try:
    rec = json.loads(rec_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{rec_path} is corrupted: {e}") from e
  if rec.get("format") != FORMAT or rec.get("version", 0) > VERSION:
    raise CheckpointError(f"{rec_path} is not a {FORMAT} record of version <= {VERSION}")
  bad = [f for f, h in rec["files"].items()
         if not (path / "arrays" / f).is_file() or _sha256(path / "arrays" / f) != h]
  if bad:
    raise CheckpointError(f"heads {path} are corrupted or incomplete: {', '.join(bad[:5])}")
  abstract = {k: jax.ShapeDtypeStruct(tuple(s), np.dtype(d)) for k, (s, d) in rec["arrays"].items()}
  try:
    arr = _checkpointer().restore(path / "arrays", abstract)
  except Exception as e:  # noqa: BLE001 - tensorstore raises many types
    raise CheckpointError(f"cannot restore heads {path}: {e}") from e
  heads = Heads({"kernel": jnp.asarray(arr["kernel"]), "bias": jnp.asarray(arr["bias"])},
                tuple(rec["names"]), tuple(rec["families"]), tuple(rec["latent_shape"]), rec["generator"],
                np.asarray(arr["diam"]), np.asarray(arr["strength"]), rec.get("metrics", {}), rec.get("info", {}))
  if generator is not None:
    heads.check_generator(generator)
  return heads
