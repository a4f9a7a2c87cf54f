"""Importances (phi, psi, tables, plot), InterFaceGAN steps and attribute-projected updates, and the
official Counterfactual Attacks attribution arithmetic (fixtures/cf_attacks/celeba_*.npz)."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cfjax import CfjaxInputError
from cfjax.attribution import (
    Attribution, attribute_ces, direction_signs, global_importance, heads_from_coefficients,
    interfacegan_counterfactuals, interfacegan_target, local_importance, project,
    project_updates, rank_order, restricted, subspace)
from cfjax.generators import Generator
from cfjax.methods.search import Search, init_search, search_step


def _hand_heads():
  # g_smile = sigmoid(z0), g_age = 10 + 20 z1 (range 40), g_count = exp(z0 + z1) (range 5)
  return heads_from_coefficients(np.array([[1.0, 0.0], [0.0, 20.0], [1.0, 1.0]]), np.array([0.0, 10.0, 0.0]),
                                 ["smile", "age", "count"], generator="toy",
                                 family=("logistic", "linear", "poisson"), diam=[1.0, 40.0, 5.0])


def test_phi_and_psi_by_hand():
  h = _hand_heads()
  z = np.array([[0.0, 0.0], [0.0, 1.0]], np.float32)
  z_cf = np.array([[np.log(3.0), 0.5], [0.0, 0.0]], np.float32)
  phi = np.asarray(local_importance(h, z, z_cf))
  expected = np.array([[0.75 - 0.5, (20.0 - 10.0) / 40, (np.exp(np.log(3) + 0.5) - 1) / 5],
                       [0.0, (10.0 - 30.0) / 40, (1 - np.e) / 5]])
  np.testing.assert_allclose(phi, expected, rtol=1e-6, atol=1e-7)
  g = global_importance(phi, np.array([1.0, -1.0]))
  np.testing.assert_allclose(g["mean_abs"], np.abs(expected).mean(0), rtol=1e-6)
  np.testing.assert_allclose(g["directed"], (expected[0] - expected[1]) / 2, rtol=1e-6)
  np.testing.assert_array_equal(rank_order([0.1, -0.3, 0.2, 0.3]), [1, 3, 2, 0])  # ties keep their order


def test_direction_signs():
  # one logit, K logits (positive class 1), probabilities, regression
  np.testing.assert_array_equal(direction_signs(np.array([-1.0, 0.0, 2.0])), [1, -1, -1])
  np.testing.assert_array_equal(direction_signs(np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]])), [1, -1])
  np.testing.assert_array_equal(direction_signs(np.array([0.2, 0.7]), logits=False), [1, -1])
  np.testing.assert_array_equal(direction_signs(np.array([[-0.5], [0.5]])), [1, -1])
  np.testing.assert_array_equal(
      direction_signs(np.array([[0.3], [0.8], [0.5]]), task="regression", target=np.array([0.9, 0.1, 0.5])),
      [1, -1, 0])
  with pytest.raises(CfjaxInputError, match="need the targets"):
    direction_signs(np.zeros(2), task="regression")


def test_attribute_ces_tables_and_plot(tmp_path):
  h = _hand_heads()
  res = {"id": np.array([7, 9]), "latent_original": np.zeros((2, 2), np.float32),
         "latent": np.array([[1.0, 0.0], [-1.0, 0.5]], np.float32), "success": np.array([True, False]),
         "original_prediction": np.array([-1.0, 1.0], np.float32), "target": np.array([1, 0])}
  np.savez(tmp_path / "results.npz", **res)
  att = attribute_ces(tmp_path, h)
  np.testing.assert_array_equal(att.signs, [1.0, -1.0])
  p1 = 1 / (1 + np.exp(-1.0))
  np.testing.assert_allclose(att.phi[:, 0], [p1 - 0.5, 0.5 - p1], rtol=1e-6)
  ranked = att.ranked()
  assert [r["attribute"] for r in ranked] == ["smile", "count", "age"] and ranked[0]["rank"] == 1
  assert ranked[0]["psi_directed"] == pytest.approx(p1 - 0.5, rel=1e-6)
  paths = att.write(tmp_path / "attribution", top=2)
  with open(paths["per_image_csv"]) as f:
    rows = list(csv.DictReader(f))
  assert [r["id"] for r in rows] == ["7", "9"] and float(rows[1]["sign"]) == -1.0
  assert float(rows[0]["phi_smile"]) == pytest.approx(p1 - 0.5, rel=1e-6)
  glob = json.loads(open(paths["global_json"]).read())
  assert glob["kind"] == "directed" and glob["num_ces"] == 2 and glob["ranking"][0]["attribute"] == "smile"
  assert json.loads(open(paths["per_image_json"]).read())[1]["success"] is False
  assert open(paths["figure"], "rb").read(4) == b"\x89PNG"
  only = attribute_ces(res, h, only_successful=True)
  assert only.phi.shape == (1, 3) and only.columns["id"].tolist() == [7]
  no_signs = attribute_ces({k: res[k] for k in ("latent", "latent_original")}, h)
  assert no_signs.signs is None and "psi_directed" not in no_signs.ranked()[0]


def _pixel_generator():
  # z = (mean of channel 0, mean of channel 1): a deterministic encoder of 4x4x3 images.
  return Generator(encode=lambda p, x, key: x.mean((0, 1))[:2] * p["s"],
                   decode=lambda p, z, key: jnp.zeros((4, 4, 3), jnp.float32) + z[0],
                   params={"s": jnp.float32(1.0)}, latent_shape=(2,), image_shape=(4, 4, 3), name="pix")


def test_pixel_space_ces_are_encoded_with_the_generator():
  g = _pixel_generator()
  h = heads_from_coefficients(np.array([[4.0, 0.0], [0.0, 1.0]]), np.zeros(2), ["a", "b"], generator=g,
                              family=("logistic", "linear"), diam=[1.0, 0.5])
  x = np.zeros((3, 4, 4, 3), np.float32)
  x_cf = x.copy()
  x_cf[..., 0] = [[[0.5]], [[0.25]], [[0.0]]]
  x_cf[..., 1] = 0.25
  att = attribute_ces({"original": x, "counterfactual": x_cf}, h, g)
  np.testing.assert_allclose(att.phi[:, 0], 1 / (1 + np.exp(-4 * np.array([0.5, 0.25, 0.0]))) - 0.5, rtol=1e-6)
  np.testing.assert_allclose(att.phi[:, 1], 0.5, rtol=1e-6)
  with pytest.raises(CfjaxInputError, match="give the generator"):
    attribute_ces({"original": x, "counterfactual": x_cf}, h)
  other = g._replace(params={"s": jnp.float32(2.0)})
  with pytest.raises(CfjaxInputError, match="fitted for generator 'pix'"):
    attribute_ces({"original": x, "counterfactual": x_cf}, h, other)
  with pytest.raises(CfjaxInputError, match=r"counterfactual latents must have shape \(N, 2\)"):
    attribute_ces({"latent_original": np.zeros((3, 2), np.float32), "latent": np.zeros((3, 5), np.float32)}, h)


# -- InterFaceGAN ----------------------------------------------------------------------------------

def test_interfacegan_reaches_the_target_exactly():
  rng = np.random.default_rng(0)
  beta = rng.normal(size=(3, 16))
  h = heads_from_coefficients(beta, np.array([0.3, -1.0, 2.0]), ["p", "v", "c"], generator="toy",
                              family=("logistic", "linear", "poisson"), diam=[1.0, 1.0, 1.0])
  z = rng.normal(size=(50, 16)).astype(np.float32)
  targets = rng.uniform(0.02, 0.98, 50)
  z1 = interfacegan_counterfactuals(h, "p", z, targets)
  np.testing.assert_allclose(np.asarray(h.predict(z1))[:, 0], targets, rtol=0, atol=2e-6)  # float32
  # The step is along beta only.
  d = np.asarray(z1) - z
  np.testing.assert_allclose(d - (d @ beta[0])[:, None] * beta[0] / (beta[0] @ beta[0]), 0, atol=1e-6)
  z2 = interfacegan_counterfactuals(h, "v", z, np.full(50, 3.0))
  np.testing.assert_allclose(np.asarray(h.predict(z2))[:, 1], 3.0, atol=2e-5)
  z3 = interfacegan_counterfactuals(h, "c", z, np.full(50, 4.0))
  np.testing.assert_allclose(np.asarray(h.predict(z3))[:, 2], 4.0, rtol=2e-5)
  # Default targets: 0.75 below 0.5, 0.25 otherwise.
  p0 = np.asarray(h.predict(z))[:, 0]
  z4 = interfacegan_counterfactuals(h, "p", z)
  np.testing.assert_allclose(np.asarray(h.predict(z4))[:, 0], np.where(p0 < 0.5, 0.75, 0.25), atol=2e-6)
  with pytest.raises(CfjaxInputError, match="strictly between 0 and 1"):
    interfacegan_counterfactuals(h, "p", z, np.ones(50))
  with pytest.raises(CfjaxInputError, match="give targets"):
    interfacegan_counterfactuals(h, "v", z)


def test_interfacegan_targets_follow_the_notebook_rules():
  p = jnp.array([0.1, 0.6, 0.8, 0.2, 0.6])
  np.testing.assert_allclose(interfacegan_target(p), [0.75, 0.25, 0.25, 0.75, 0.25])
  up = jnp.array([1, 1, 1, -1, -1])
  np.testing.assert_allclose(interfacegan_target(p, direction=up), [0.75, 0.75, 0.9, 0.1, 0.25])


# -- attribute-projected updates -------------------------------------------------------------------

def test_projection_within_and_without():
  rng = np.random.default_rng(0)
  dirs = rng.normal(size=(2, 4, 3)).astype(np.float32)
  sp = subspace(dirs)
  v = jnp.asarray(rng.normal(size=(4, 3)).astype(np.float32))
  inside, outside = project(v, sp, "within"), project(v, sp, "without")
  np.testing.assert_allclose(inside + outside, v, atol=1e-6)
  flat = dirs.reshape(2, -1)
  np.testing.assert_allclose(flat @ np.asarray(outside).reshape(-1), 0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(project(inside, sp, "within")), inside, atol=1e-6)
  with pytest.raises(CfjaxInputError, match="linearly dependent"):
    subspace(np.stack([dirs[0], 2 * dirs[0]]))
  with pytest.raises(CfjaxInputError, match="unknown projection mode"):
    project_updates(sp, "inside")


@pytest.mark.parametrize("mode", ["without", "within"])
def test_projected_latent_search_leaves_forbidden_components_unchanged(mode):
  """Adam steps on a latent, projected last: the forbidden part of the latent never moves."""
  rng = np.random.default_rng(1)
  dirs = rng.normal(size=(3, 8)).astype(np.float32)
  sp = subspace(dirs)
  goal = jnp.asarray(rng.normal(size=8).astype(np.float32))
  s = Search(objective=lambda p, z, c, it: (jnp.sum((z - c) ** 2), {}),
             reached=lambda p, z, c, aux: (jnp.bool_(False), aux),
             optimizer=restricted(optax.scale_by_adam(), sp, mode), max_steps=40)
  s = s._replace(optimizer=optax.chain(s.optimizer, optax.scale(-0.05)))
  z0 = jnp.asarray(rng.normal(size=8).astype(np.float32))
  st = init_search(s, z0, goal, aux={})
  step = jax.jit(lambda st: search_step(s, None, st))
  with jax.numpy_dtype_promotion("standard"):  # optax's Adam counts in int32
    for _ in range(40):
      st = step(st)
  moved = st.z - z0
  forbidden = "within" if mode == "without" else "without"
  np.testing.assert_allclose(np.asarray(project(moved, sp, forbidden)), 0, atol=1e-6)
  allowed = project(goal - z0, sp, "without" if mode == "without" else "within")
  assert float(jnp.sum((st.z - z0 - allowed) ** 2)) < 0.5 * float(jnp.sum(allowed ** 2))


# -- the official arithmetic (fixtures/cf_attacks) ---------------------------------------------------

@pytest.fixture(scope="module")
def celeba(cf_attacks_dir):
  return dict(np.load(cf_attacks_dir / "celeba_latent.npz")), dict(np.load(cf_attacks_dir / "celeba_logregs.npz"))


def _official_heads(regs):
  return heads_from_coefficients(regs["coef"], regs["intercept"], [str(n) for n in regs["names"]],
                                 generator="celeba-stylegan3-w")


def test_official_interfacegan_and_attribution_in_float64(celeba):
  lat, regs = celeba
  names = [str(n) for n in regs["names"]]
  with jax.enable_x64(True):
    h = _official_heads(regs)
    assert h.params["kernel"].dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(h.predict(lat["w"])), lat["probs_w"], rtol=1e-12)
    for label in ("Young", "Attractive", "Male"):
      i = names.index(label)
      w_cf = np.asarray(interfacegan_counterfactuals(h, label, lat["w"]))
      assert w_cf.dtype == np.float32
      np.testing.assert_allclose(w_cf, lat[f"ifg__{label}__w_cf"], rtol=0, atol=1e-7)
      np.testing.assert_allclose(np.asarray(h.predict(w_cf))[:, i], lat[f"ifg__{label}__p_cf"], rtol=1e-12)
      # Cell 42: the direction from the image predictor, the level from the regression's own p.
      up = np.where(lat["psi_pred_og"] < 0.5, 1, -1)
      targets = interfacegan_target(h.predict(lat["w"])[:, i], direction=up)
      w42 = np.asarray(interfacegan_counterfactuals(h, label, lat["w"], targets))
      np.testing.assert_allclose(w42, lat[f"ifg__{label}__w_cf_cell42"], rtol=0, atol=1e-7)
      np.testing.assert_allclose(np.asarray(h.predict(w42))[:, i], lat[f"ifg__{label}__p_cf_cell42"], rtol=1e-12)
    sel = h.select([str(n) for n in lat["filtered_names"]])
    res = {"latent_original": lat["w"], "latent": lat["ifg__Young__w_cf"]}
    signs = direction_signs(lat["psi_pred_og"], logits=False)
    np.testing.assert_array_equal(signs, lat["psi_dir_sign"])
    att = attribute_ces(res, sel, signs=signs)
  np.testing.assert_allclose(att.phi, lat["phi"], rtol=0, atol=1e-12)
  np.testing.assert_array_equal(rank_order(att.phi), lat["phi_order"])
  np.testing.assert_allclose(att.psi["directed"], lat["psi"], rtol=0, atol=1e-12)
  np.testing.assert_array_equal(rank_order(att.psi["directed"]), lat["psi_order"])
  assert [r["attribute"] for r in att.ranked()] == [str(lat["filtered_names"][k]) for k in lat["psi_order"]]


def test_official_arithmetic_in_float32(celeba):
  """The same numbers with float32 heads (x64 off, cfjax's default): measured tolerances."""
  lat, regs = celeba
  h = _official_heads(regs)
  assert h.params["kernel"].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(h.predict(lat["w"])), lat["probs_w"], rtol=0, atol=1e-6)
  i = h.index("Young")[0]
  w_cf = np.asarray(interfacegan_counterfactuals(h, "Young", lat["w"]))
  np.testing.assert_allclose(w_cf, lat["ifg__Young__w_cf"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(h.predict(w_cf))[:, i], lat["ifg__Young__p_cf"], atol=1e-6)
  sel = h.select([str(n) for n in lat["filtered_names"]])
  phi = np.asarray(local_importance(sel, lat["w"], lat["ifg__Young__w_cf"]), np.float64)
  np.testing.assert_allclose(phi, lat["phi"], rtol=0, atol=1e-6)
  att = Attribution(sel.names, phi, lat["psi_dir_sign"])
  np.testing.assert_allclose(att.psi["directed"], lat["psi"], rtol=0, atol=1e-6)


def test_restricted_optimizer_plugs_into_cf_attack():
  """cf-attack with an attribute-projected Adam: the latent never moves along the forbidden direction."""
  import cfjax
  from cfjax.methods.optim import torch_adam
  gen = Generator(encode=None, decode=lambda p, z, key: jnp.broadcast_to(jax.nn.sigmoid(z[:3]), (4, 4, 3)),
                  params={}, latent_shape=(4,), image_shape=(4, 4, 3), name="toy")
  predictor = (lambda p, x: x.mean((1, 2, 3)), {})   # regression on the mean pixel
  forbidden = subspace(np.array([[1.0, 1.0, 0.0, 0.0]], np.float32))
  m = cfjax.methods.cf_attack(predictor=predictor, generator=gen, task="regression", steps=200,
                              tolerance=0.01, optimizer=restricted(torch_adam(0.05), forbidden, "without"),
                              trajectory_every=0)
  z0 = np.array([[0.5, -0.5, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]], np.float32)
  res = cfjax.explain(m, z0, np.array([0.6, 0.4], np.float32), key=jax.random.key(0), progress=False)
  assert res["success"].all()
  along = (res["latent"] - z0) @ np.array([1.0, 1.0, 0.0, 0.0], np.float32)
  np.testing.assert_allclose(along, 0.0, atol=1e-5)
