"""Attribute heads: GLM fits against closed forms and numpy Newton / coordinate-descent solvers,
cross-validation, metrics, saving, the generator check, and errors before any compilation."""

import contextlib
import logging

import jax
import numpy as np
import pytest
from flax import nnx

from cfjax import CfjaxInputError
from cfjax.attribution import glm
from cfjax.attribution import fitting as heads_mod
from cfjax.attribution import (HeadsConfig, auc, evaluate, fit_heads, heads_from_coefficients, load_heads)
from cfjax.generators import Generator

N, D = 1200, 12


@pytest.fixture(scope="module")
def data():
  """Latents with unequal scales and offsets (as raw generator codes are), and labels of three families."""
  rng = np.random.default_rng(0)
  scale = rng.uniform(0.3, 4.0, D)
  z = (rng.normal(size=(N, D)) * scale + rng.normal(size=D)).astype(np.float32)
  beta = (rng.normal(size=D) / scale).astype(np.float64)
  beta[[2, 7]] = 0.0
  eta = (z - z.mean(0)) @ beta
  return {
      "z": z, "beta": beta, "eta": eta,
      "linear": (eta + 0.5 + 0.2 * rng.normal(size=N)).astype(np.float32),
      "logistic": (rng.uniform(size=N) < 1 / (1 + np.exp(-eta))).astype(np.float32),
      "poisson": rng.poisson(np.exp(0.4 * eta + 0.3)).astype(np.float32),
  }


def _fit_one(data, family, strength, penalty="l2", **kw):
  cfg = HeadsConfig(family=family, penalty=penalty, strength=strength, holdout=0.0, **kw)
  h = fit_heads(data["z"], {family: data[family]}, cfg, key=jax.random.key(0), generator="toy")
  return np.asarray(h.params["kernel"])[:, 0].astype(np.float64), float(h.params["bias"][0]), h


# -- numpy reference solvers (float64) --------------------------------------------------------------

def newton_glm(x, y, lam, family, iters=100):
  """Minimises mean NLL + lam/2 ||b||^2 (intercept free) by Newton / IRLS."""
  x = np.asarray(x, np.float64)
  xa = np.c_[x, np.ones(len(x))]
  w = np.zeros(xa.shape[1])
  reg = np.r_[np.full(x.shape[1], lam), 0.0]
  for _ in range(iters):
    eta = xa @ w
    mu = 1 / (1 + np.exp(-eta)) if family == "logistic" else np.exp(eta)
    curv = mu * (1 - mu) if family == "logistic" else mu
    g = xa.T @ (mu - y) / len(y) + reg * w
    hess = (xa * curv[:, None]).T @ xa / len(y) + np.diag(reg)
    w = w - np.linalg.solve(hess, g)
  return w[:-1], w[-1]


def lasso_cd(x, y, lam, iters=3000):
  """Minimises ||y - x b - c||^2 / (2n) + lam ||b||_1 by coordinate descent on centred data."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  xm, ym = x.mean(0), y.mean()
  xc, yc = x - xm, y - ym
  n = len(y)
  col = (xc * xc).sum(0) / n
  b = np.zeros(x.shape[1])
  r = yc.copy()
  for _ in range(iters):
    for j in range(x.shape[1]):
      r += xc[:, j] * b[j]
      rho = xc[:, j] @ r / n
      b[j] = np.sign(rho) * max(abs(rho) - lam, 0.0) / col[j]
      r -= xc[:, j] * b[j]
  return b, ym - xm @ b


# -- fits ------------------------------------------------------------------------------------------

def test_linear_l2_is_the_ridge_closed_form(data):
  lam = 0.05
  coef, b0, h = _fit_one(data, "linear", lam)
  x = data["z"].astype(np.float64)
  xc, yc = x - x.mean(0), data["linear"] - data["linear"].mean()
  ref = np.linalg.solve(xc.T @ xc / N + lam * np.eye(D), xc.T @ yc / N)
  np.testing.assert_allclose(coef, ref, rtol=0, atol=2e-6)      # measured 3.3e-7 (float32 L-BFGS)
  assert abs(b0 - (data["linear"].mean() - x.mean(0) @ ref)) < 1e-6
  assert h.info["converged"] == [True]


def test_logistic_l2_matches_newton_and_recovers_the_coefficients(data):
  lam = 1e-3
  coef, b0, _ = _fit_one(data, "logistic", lam)
  ref, ref0 = newton_glm(data["z"], data["logistic"], lam, "logistic")
  # L-BFGS stops at gradient norm 1e-5; the flat logistic loss leaves the coefficients 1.4e-4 away.
  np.testing.assert_allclose(coef, ref, rtol=0, atol=5e-4)
  assert abs(b0 - ref0) < 3e-4                                    # measured 5.8e-5
  # 1200 draws: the coefficients are recovered to sampling error (about 0.1 here).
  np.testing.assert_allclose(coef, data["beta"], atol=0.25)


def test_poisson_l2_matches_newton(data):
  lam = 1e-3
  coef, b0, _ = _fit_one(data, "poisson", lam)
  ref, ref0 = newton_glm(data["z"], data["poisson"], lam, "poisson")
  np.testing.assert_allclose(coef, ref, rtol=0, atol=2e-5)       # measured 2.3e-6
  assert abs(b0 - ref0) < 5e-6                                    # measured 4.2e-7
  np.testing.assert_allclose(coef, 0.4 * data["beta"], atol=0.1)


def test_linear_l1_matches_coordinate_descent_lasso(data):
  lam = 0.02
  coef, b0, _ = _fit_one(data, "linear", lam, penalty="l1")
  ref, ref0 = lasso_cd(data["z"], data["linear"], lam)
  assert (ref[[2, 7]] == 0).all()
  # The smooth surrogate (eps 1e-4) moves the solution by about eps: measured 2.6e-5.
  np.testing.assert_allclose(coef, ref, rtol=0, atol=1e-4)
  assert abs(b0 - ref0) < 5e-5
  assert np.abs(coef[[2, 7]]).max() < 1e-4


def test_minibatch_adam_approaches_the_full_batch_fit(data):
  full, _, _ = _fit_one(data, "logistic", 1e-3)
  mini, _, h = _fit_one(data, "logistic", 1e-3, batch_size=100, epochs=60, learning_rate=0.02)
  np.testing.assert_allclose(mini, full, atol=0.1)   # constant-step Adam: measured 0.047
  assert h.info["converged"] == [False]  # Adam runs its epochs; only L-BFGS reports convergence


def test_all_families_at_once_with_cross_validated_strengths(data):
  rng = np.random.default_rng(1)
  attrs = {"lin": data["linear"], "bin": data["logistic"], "cnt": data["poisson"],
           "noise": (rng.uniform(size=N) < 0.4).astype(np.float32)}
  cfg = HeadsConfig(strength=(1e-4, 1.0), folds=3, holdout=0.25)
  h = fit_heads(data["z"], attrs, cfg, key=jax.random.key(0), generator="toy")
  assert h.families == ("linear", "logistic", "poisson", "logistic")
  assert h.strength.tolist()[:3] == [1e-4, 1e-4, 1e-4]
  assert h.strength[3] == 1.0     # pure noise: the strong penalty predicts held-out folds better
  m = h.metrics
  assert m["lin"]["r2"] > 0.9 and m["bin"]["accuracy"] > 0.75 and m["bin"]["auc"] > 0.85
  assert m["cnt"]["deviance_explained"] > 0.5 and 0.4 < m["noise"]["auc"] < 0.6
  assert m["lin"]["n"] == 300 and h.info["num_train"] == 900
  assert h.diam[1] == 1.0 and h.diam[0] == pytest.approx(np.ptp(data["linear"]), rel=0.2)
  pred = np.asarray(h.predict(data["z"][:5]))
  assert pred.shape == (5, 4) and ((pred[:, 1] > 0) & (pred[:, 1] < 1)).all() and (pred[:, 2] > 0).all()
  graphdef, state = nnx.split(h.module())  # the same heads as a Flax module
  np.testing.assert_allclose(np.asarray(nnx.merge(graphdef, state)(data["z"][:5])), pred, rtol=1e-6)
  assert set(nnx.to_pure_dict(state)) == {"kernel", "bias"}
  # The same shapes again reuse the compiled fits (recompilation guard).
  before = glm._fit_jit._cache_size()
  fit_heads(data["z"] + 1.0, attrs, cfg, key=jax.random.key(1), generator="toy")
  assert glm._fit_jit._cache_size() == before


def test_latents_of_any_shape(data):
  """Heads on (N, 3, 4) latents are the heads of the flattened codes."""
  cfg = HeadsConfig(strength=1e-3, holdout=0.0)
  flat = fit_heads(data["z"], {"a": data["logistic"]}, cfg, key=jax.random.key(0), generator="toy")
  z3 = data["z"].reshape(N, 3, 4)
  h = fit_heads(z3, {"a": data["logistic"]}, cfg, key=jax.random.key(0), generator="toy")
  assert h.latent_shape == (3, 4) and h.directions("a").shape == (1, 3, 4)
  np.testing.assert_array_equal(np.asarray(h.predict(z3[:4])), np.asarray(flat.predict(data["z"][:4])))
  assert h.predict(z3[0]).shape == (1,)
  with pytest.raises(CfjaxInputError, match=r"\(N, 3, 4\)"):
    h.check_latents(data["z"])


def test_missing_labels_are_left_out(data):
  y = data["logistic"].copy()
  y_nan = y.copy()
  y_nan[:100] = np.nan
  cfg = HeadsConfig(strength=1e-3, holdout=0.0)
  full = fit_heads(data["z"][100:], {"a": y[100:]}, cfg, key=jax.random.key(0), generator="toy")
  nan = fit_heads(data["z"], {"a": y_nan}, cfg, key=jax.random.key(0), generator="toy")
  np.testing.assert_allclose(np.asarray(nan.params["kernel"]), np.asarray(full.params["kernel"]), atol=1e-4)


def test_auc_and_metrics_by_hand():
  assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
  assert auc(np.array([0.5, 0.5, 0.5]), np.array([0, 1, 1])) == 0.5   # ties count half
  h = heads_from_coefficients(np.array([[1.0], [2.0]]), np.array([0.0, 1.0]), ["p", "v"], generator="toy",
                              family=("logistic", "linear"), diam=[1.0, 4.0])
  z = np.array([[-1.0], [0.5], [2.0]], np.float32)
  m = evaluate(h, z, {"p": np.array([0.0, 0.0, 1.0]), "v": np.array([-1.0, 2.0, 5.0])})
  assert m["p"]["accuracy"] == pytest.approx(2 / 3) and m["p"]["auc"] == 1.0
  # v predictions -1, 2, 5: exact, so R^2 = 1 and RMSE = 0.
  assert m["v"]["r2"] == pytest.approx(1.0) and m["v"]["rmse"] == pytest.approx(0.0, abs=1e-6)


# -- saving and the generator they belong to --------------------------------------------------------

def _toy_generator(name: str, offset: float, latent: int = D) -> Generator:
  import jax.numpy as jnp
  params = {"w": jnp.full((latent,), offset, jnp.float32)}
  return Generator(encode=lambda p, x, key: x.mean((0, 1)).mean() + p["w"],
                   decode=lambda p, z, key: jnp.zeros((4, 4, 3), jnp.float32) + z.mean(),
                   params=params, latent_shape=(latent,), image_shape=(4, 4, 3), name=name)


def test_save_load_roundtrip_and_generator_check(data, tmp_path):
  g, other = _toy_generator("vae", 0.0), _toy_generator("vae", 1.0)
  cfg = HeadsConfig(strength=1e-3, holdout=0.2)
  h = fit_heads(data["z"], {"bin": data["logistic"], "lin": data["linear"]}, cfg, key=jax.random.key(0),
                generator=g)
  path = h.save(tmp_path / "heads")
  back = load_heads(path, generator=g)
  assert back.names == h.names and back.families == h.families and back.latent_shape == (D,)
  np.testing.assert_array_equal(np.asarray(back.params["kernel"]), np.asarray(h.params["kernel"]))
  np.testing.assert_array_equal(back.diam, h.diam)
  assert back.metrics == h.metrics and back.generator == h.generator
  with pytest.raises(CfjaxInputError, match="fitted for generator 'vae'.*different parameters"):
    load_heads(path, generator=other)
  with pytest.raises(CfjaxInputError, match="fitted for generator 'vae'"):
    back.check_generator(_toy_generator("vae", 0.0, latent=8))
  with pytest.raises(CfjaxInputError, match="exists"):
    h.save(path)
  victim = next(p for p in sorted((path / "arrays").rglob("*")) if p.is_file() and p.stat().st_size > 0)
  victim.write_bytes(b"x")
  with pytest.raises(CfjaxInputError, match="corrupted"):
    load_heads(path)


# -- errors, before anything compiles ----------------------------------------------------------------

@contextlib.contextmanager
def no_compilation():
  messages = []

  class Catch(logging.Handler):
    def emit(self, record):
      messages.append(record.getMessage())

  handler, logger = Catch(), logging.getLogger("jax")
  logger.addHandler(handler)
  try:
    with jax.log_compiles(True):
      yield
  finally:
    logger.removeHandler(handler)
  compiled = [m for m in messages if m.startswith("Compiling")]
  assert not compiled, compiled


def test_bad_inputs_are_refused_before_compiling(data):
  g = _toy_generator("vae", 0.0)
  key = jax.random.key(0)
  z, y = data["z"], data["logistic"]
  few = np.zeros(N, np.float32)
  few[:3] = 1
  cases = [
      (lambda: fit_heads(z[:, :8], {"a": y}, key=key, generator=g), r"must have shape \(N, 12\)"),
      (lambda: fit_heads(z, {"a": y[:10]}, key=key, generator=g), "must be 1200 numbers"),
      (lambda: fit_heads(z, {"a": few}, key=key, generator=g),
       "too few examples of one class to fit a logistic head: 3 positives and 1197 negatives"),
      (lambda: fit_heads(z, {"a": np.where(np.arange(N) < 5, 1.0, 0.0)},
                         HeadsConfig(strength=(1.0, 2.0), holdout=0.0), key=key, generator=g),
       r"in a cross-validation training split \(5 folds\): [0-4] "),
      (lambda: fit_heads(z, {"a": y * 2}, HeadsConfig(family="logistic"), key=key, generator=g), "0/1 labels"),
      (lambda: fit_heads(z, {"a": y - 0.5}, HeadsConfig(family="poisson"), key=key, generator=g), "non-negative"),
      (lambda: fit_heads(z, {"a": y}, HeadsConfig(family="probit"), key=key, generator=g), "unknown GLM family"),
      (lambda: fit_heads(z, {"a": y}, HeadsConfig(penalty="l3"), key=key, generator=g), "unknown penalty"),
      (lambda: fit_heads(z, {"a": y}, HeadsConfig(strength=(1.0, 2.0), folds=1), key=key, generator=g),
       "folds >= 2"),
      (lambda: fit_heads(z, {"a": np.ones(N)}, HeadsConfig(family="linear"), key=key, generator=g), "constant"),
      (lambda: fit_heads(z, {}, key=key, generator=g), "non-empty mapping"),
  ]
  h = heads_from_coefficients(np.ones((2, D)), np.zeros(2), ["Smiling", "Young"], generator=g)
  cases += [
      (lambda: h.index("Smilling"), "unknown attribute 'Smilling'.*Did you mean 'Smiling'"),
      (lambda: h.directions(["Young", "Old"]), "unknown attribute 'Old'"),
      (lambda: h.check_latents(z[:, :5]), r"\(N, 12\)"),
      (lambda: h.check_generator(_toy_generator("stylegan", 2.0)), "fitted for generator 'vae'"),
      (lambda: heads_from_coefficients(np.ones((1, D)), np.zeros(1), ["a"], generator="w-space")
       .check_generator(g),
       "fitted for generator 'w-space'"),
  ]
  h.check_generator(_toy_generator("renamed", 0.0))  # the same parameters under another name
  for fn, message in cases:
    with no_compilation(), pytest.raises(CfjaxInputError, match=message):
      fn()


def test_infer_family():
  assert heads_mod.infer_family(np.array([0.0, 1.0, np.nan])) == "logistic"
  assert heads_mod.infer_family(np.array([0.0, 3.0, 1.0])) == "poisson"
  assert heads_mod.infer_family(np.array([0.5, 3.0])) == "linear"


def test_per_attribute_families_may_be_auto(data):
  cfg = HeadsConfig(family=("auto", "linear"), strength=1e-3, holdout=0.0)
  h = fit_heads(data["z"], {"b": data["logistic"], "c": data["poisson"]}, cfg, key=jax.random.key(0),
                generator="toy")
  assert h.families == ("logistic", "linear")
