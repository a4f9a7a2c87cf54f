"""InterFaceGAN-style counterfactuals as a method: the closed-form step on the engine, both
directions (the predictor's decision head, an attribute head), the result contract and the edge
errors; on a toy linear generator whose predictor is exactly linear in the latent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfjax
from cfjax import CfjaxInputError
from cfjax import attribution as at
from cfjax.generators import Generator
from cfjax.methods import REQUIRED_RESULTS

D, H = 4, 6
A = np.random.default_rng(0).normal(size=(H * H * 3, D)).astype(np.float32) * 0.05
W = np.random.default_rng(1).normal(size=(H, H, 3)).astype(np.float32)


def _generator(scale=1.0, name="toy"):
  a = jnp.asarray(A * scale)
  return Generator(encode=lambda p, x, key: jnp.linalg.lstsq(p["a"], x.reshape(-1) - 0.5)[0],
                   decode=lambda p, z, key: (0.5 + p["a"] @ z).reshape(H, H, 3),
                   params={"a": a}, latent_shape=(D,), image_shape=(H, H, 3), name=name)


def _predictor(offset=0.0):
  w = jnp.asarray(W)
  return (lambda p, x: jnp.sum((x - 0.5) * p, axis=(1, 2, 3)) + offset, w)


@pytest.fixture(scope="module")
def toy():
  gen = _generator()
  z = np.random.default_rng(2).normal(size=(600, D)).astype(np.float32)
  images = np.clip(np.asarray(jax.vmap(lambda zz: gen.decode(gen.params, zz, None))(jnp.asarray(z))), 0, 1)
  heads = at.fit_decision_heads(_predictor(), gen, images, at.HeadsConfig(strength=1e-3), key=jax.random.key(0),
                                task="classification")
  return gen, heads, z[:12]


def test_classifier_direction_reaches_the_level_and_flips(toy):
  gen, heads, z = toy
  f = _predictor()
  logits = np.asarray(f[0](f[1], jax.vmap(lambda zz: gen.decode(gen.params, zz, None))(jnp.asarray(z))))
  t = (logits < 0).astype(np.int32)  # flip
  m = cfjax.methods.interfacegan(predictor=f, generator=gen, heads=heads, task="classification")
  res = cfjax.explain(m, z, t, key=jax.random.key(1), num_slots=8, progress=False)
  for k in REQUIRED_RESULTS + ("latent", "latent_original"):
    assert k in res
  np.testing.assert_array_equal(res["iterations"], 1)
  assert res["success"].all() and (res["status"] == 0).all()
  h = np.asarray(res["head_original"])
  expected = np.where(h < 0.75, 0.75, 0.9)
  np.testing.assert_allclose(res["head_counterfactual"], expected, atol=1e-4)
  # The step is along the target class's head normal, by the closed-form length.
  beta = np.asarray(heads.params["kernel"])[:, t]
  dz = res["latent"] - res["latent_original"]
  cos = np.sum(dz * beta.T, 1) / np.linalg.norm(dz, axis=1) / np.linalg.norm(beta, axis=0)
  np.testing.assert_allclose(cos, 1.0, atol=1e-4)
  logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
  delta = (logit(expected) - logit(h)) / np.sum(beta * beta, 0)
  np.testing.assert_allclose(np.linalg.norm(dz, axis=1), delta * np.linalg.norm(beta, axis=0), rtol=1e-3)


def test_explicit_level_and_images_as_inputs(toy):
  gen, heads, z = toy
  images = np.clip(np.asarray(jax.vmap(lambda zz: gen.decode(gen.params, zz, None))(jnp.asarray(z))), 0, 1)
  m = cfjax.methods.interfacegan(predictor=_predictor(), generator=gen, heads=heads, task="classification",
                                 level=0.95)
  res = cfjax.explain(m, images, np.ones(len(z), np.int32), key=jax.random.key(1), num_slots=4, progress=False)
  np.testing.assert_allclose(res["head_counterfactual"], 0.95, atol=1e-4)
  assert res["success"].all()


def test_regression_decision_head_moves_to_the_target():
  gen = _generator()
  f = _predictor(offset=0.3)
  z = np.random.default_rng(3).normal(size=(400, D)).astype(np.float32)
  images = np.clip(np.asarray(jax.vmap(lambda zz: gen.decode(gen.params, zz, None))(jnp.asarray(z))), 0, 1)
  heads = at.fit_decision_heads(f, gen, images, at.HeadsConfig(strength=1e-6), key=jax.random.key(0),
                                task="regression")
  assert heads.names == ("prediction",) and heads.metrics["prediction"]["r2"] > 0.99
  t = np.linspace(-0.5, 0.5, 8).astype(np.float32)
  m = cfjax.methods.interfacegan(predictor=f, generator=gen, heads=heads, task="regression")
  res = cfjax.explain(m, z[:8], t, key=jax.random.key(1), num_slots=8, progress=False)
  np.testing.assert_allclose(res["head_counterfactual"], t, atol=1e-4)
  np.testing.assert_allclose(res["prediction"], t, atol=0.05)
  assert res["success"].all()


def test_attribute_direction_takes_the_way_towards_the_target(toy):
  gen, _, z = toy
  # Attribute "a" along the first latent axis; the predictor's logit rises along it iff c > 0.
  c = float((A.T @ W.reshape(-1))[0])
  heads = at.heads_from_coefficients(np.eye(D, dtype=np.float32)[:1], np.zeros(1), ["a"], generator=gen)
  m = cfjax.methods.interfacegan(predictor=_predictor(), generator=gen, heads=heads, task="classification",
                                 direction="attribute", attribute="a")
  res = cfjax.explain(m, z, np.ones(len(z), np.int32), key=jax.random.key(1), num_slots=4, progress=False)
  up = res["head_counterfactual"] > res["head_original"]
  assert (up == (c > 0)).all()
  down = cfjax.methods.interfacegan(predictor=_predictor(), generator=gen, heads=heads, task="classification",
                                    direction="attribute", attribute="a", attribute_sign="down")
  res = cfjax.explain(down, z, np.ones(len(z), np.int32), key=jax.random.key(1), num_slots=4, progress=False)
  assert (res["head_counterfactual"] < res["head_original"]).all()


def test_edge_errors(toy):
  gen, heads, _ = toy
  f = _predictor()
  with pytest.raises(CfjaxInputError, match="attribute"):
    cfjax.methods.interfacegan(predictor=f, generator=gen, heads=heads, task="classification",
                               direction="attribute")
  with pytest.raises(CfjaxInputError, match="Did you mean|unknown|not"):
    cfjax.methods.interfacegan(predictor=f, generator=gen, heads=heads, task="classification",
                               direction="attribute", attribute="smiling")
  with pytest.raises(CfjaxInputError, match="fitted for generator"):
    cfjax.methods.interfacegan(predictor=f, generator=_generator(2.0), heads=heads, task="classification")
  other = at.heads_from_coefficients(np.ones((1, D)), np.zeros(1), ["a"], generator=gen)
  with pytest.raises(CfjaxInputError, match="no decision heads"):
    cfjax.methods.interfacegan(predictor=f, generator=gen, heads=other, task="classification")
  with pytest.raises(CfjaxInputError, match="fit_dataset"):
    cfjax.methods.interfacegan(predictor=f, generator=gen, task="classification")
  lin = at.heads_from_coefficients(np.ones((1, D)), np.zeros(1), ["age"], generator=gen, family="linear",
                                   diam=[10.0])
  with pytest.raises(CfjaxInputError, match="give level"):
    cfjax.methods.interfacegan(predictor=f, generator=gen, heads=lin, task="classification",
                               direction="attribute", attribute="age")
  with pytest.raises(CfjaxInputError, match="without|not both"):
    cfjax.methods.cf_attack(predictor=f, generator=gen, task="classification", heads=heads,
                            only="class_0", without="class_1")
  with pytest.raises(CfjaxInputError, match="need attribute heads"):
    cfjax.methods.cf_attack(predictor=f, generator=gen, task="classification", without="a")
