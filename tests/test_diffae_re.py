"""Diff-AE-RE on a small random Diff-AE: the search, its modes, batching invariance, compile-once, errors.

Validity on the squares testbed with the bundled ``squares_diffae`` is in test_diffae_re_validity.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfjax
from cfjax import CfjaxInputError, engine, nets
from cfjax.generators.diffae import diffae_generator
from cfjax.nets import diffae_configs

DIFFUSION = {"steps": 1000, "schedule": "linear", "T_eval": 4}


@pytest.fixture(scope="module")
def tiny():
  net = nets.build(diffae_configs.diffae_config("tiny32"), seed=3)
  # Random Diff-AE weights are zero-initialised where the original zero-initialises; perturb them
  # so that z_sem reaches the output.
  # (numpy's generator: a jax.random draw per leaf shape would compile one program each)
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a) + 0.05 * rng.standard_normal(a.shape, np.float32)),
                        net.params)
  return diffae_generator(net._replace(params=params), {"diffusion": DIFFUSION})


def mean_red(params, x):
  """A regressor: the mean red of the image."""
  return x[..., 0].mean((1, 2)) * params["w"]


def images(n, seed=0):
  return np.asarray(jax.random.uniform(jax.random.key(seed), (n, 32, 32, 3)), np.float32)


def method(gen, **kw):
  # rolled chains compile once per program whatever decode_steps is (the suite stays short)
  opts = dict(task="regression", steps=6, lr=0.05, decode_steps=2, tolerance=0.002, trajectory_every=2,
              mode="rolled")
  return cfjax.methods.diffae_re(predictor=(mean_red, {"w": jnp.float32(1.0)}), generator=gen, **{**opts, **kw})


def targets_of(x, shift):
  return (x[..., 0].mean((1, 2)) + shift).astype(np.float32)


def test_the_search_moves_z_sem_towards_the_target(tiny):
  x = images(3)
  t = targets_of(x, 0.05)
  res = cfjax.explain(method(tiny, steps=12, tolerance=0.01), x, t, key=jax.random.key(0), num_slots=3,
                      progress=False)
  start = np.abs(res["reconstruction"][..., 0].mean((1, 2)) - t)
  end = np.abs(res["prediction"] - t)
  assert (end < start).all(), (start, end)
  assert res["latent"].shape == (3, 32) and res["latent_original"].shape == (3, 32)
  assert res["counterfactual"].min() >= 0 and res["counterfactual"].max() <= 1
  assert res["trajectory"].shape == (3, 7, 32)
  np.testing.assert_array_equal(res["trajectory"][:, 0], res["latent_original"])
  # Only z_sem moves: the change of z_sem is what the result reports.
  assert (np.abs(res["latent"] - res["latent_original"]).max(-1) > 0).all()
  assert ((res["status"] == 0) == res["success"]).all()


def test_rolled_and_unrolled_decoders_agree(tiny):
  x = images(2, seed=1)
  t = targets_of(x, 0.05)
  kw = dict(key=jax.random.key(1), num_slots=2, progress=False)
  a = cfjax.explain(method(tiny, mode="unrolled"), x, t, **kw)
  b = cfjax.explain(method(tiny, mode="rolled"), x, t, **kw)
  np.testing.assert_array_equal(a["iterations"], b["iterations"])
  for k in ("latent", "counterfactual", "reconstruction"):
    np.testing.assert_allclose(a[k], b[k], atol=2e-5, err_msg=k)


def test_results_agree_across_slots_and_init_batches(tiny):
  x = images(5, seed=2)
  t = targets_of(x, 0.04)
  kw = dict(key=jax.random.key(5), progress=False)
  m = method(tiny)
  a = cfjax.explain(m, x, t, num_slots=1, devices=jax.local_devices()[:1], **kw)
  order = np.array([3, 0, 4, 2, 1])
  b = cfjax.explain(m, x[order], t[order], ids=order, num_slots=3, init_slots=2, **kw)
  np.testing.assert_array_equal(a["iterations"], b["iterations"])
  for k in ("latent", "counterfactual", "trajectory"):
    np.testing.assert_allclose(a[k], b[k], atol=1e-4, err_msg=k)


def test_the_engine_compiles_each_program_once(tiny):
  m = method(tiny)
  eng = engine.Engine(m, num_slots=2)
  assert eng.steps_per_call == 1  # the method's own: its step is a whole decoding chain
  for seed in range(2):
    x = images(3, seed=10 + seed)
    xs, ts = m.validate(x, targets_of(x, 0.03))
    eng.run(engine.iterate_examples(xs, ts), key=jax.random.key(seed), progress=False)
  assert eng.trace_counts == {"init": 1, "advance": 1, "stash": 1, "result": 1}


def test_the_classification_analogue_reaches_a_class(tiny):
  def red_vs_green(params, x):
    return jnp.stack([x[..., 1].mean((1, 2)), x[..., 0].mean((1, 2))], -1) * 400.0

  x = images(2, seed=4)
  logits = np.asarray(red_vs_green({}, x))
  t = (1 - logits.argmax(-1)).astype(np.int32)
  m = cfjax.methods.diffae_re(predictor=(red_vs_green, {}), generator=tiny, task="classification", steps=12,
                              lr=0.05, decode_steps=2, trajectory_every=0, mode="rolled")
  res = cfjax.explain(m, x, t, key=jax.random.key(0), num_slots=2, progress=False)
  gap = lambda out: out[np.arange(2), t] - out[np.arange(2), 1 - t]  # noqa: E731
  assert (gap(res["prediction"]) > gap(logits)).all()
  assert "trajectory" not in res


def test_bad_inputs_are_refused_before_compiling(tiny):
  key = jax.random.key(0)
  m = method(tiny)
  with pytest.raises(CfjaxInputError, match="must be 32x32 pixels"):
    cfjax.explain(m, np.zeros((2, 28, 28, 3), np.float32), np.zeros(2, np.float32), key=key)
  with pytest.raises(CfjaxInputError, match=r"regression targets must have shape \(2,\)"):
    cfjax.explain(m, images(2), np.zeros((2, 3), np.float32), key=key)
  with pytest.raises(CfjaxInputError, match="steps must be a Python int in"):
    method(tiny, decode_steps=2000)
  with pytest.raises(CfjaxInputError, match="decode_steps must be >= 1"):
    method(tiny, decode_steps=0)
  with pytest.raises(CfjaxInputError, match="is not one"):
    cfjax.methods.diffae_re(predictor=(mean_red, {"w": 1.0}), generator=cfjax.load_generator("squares_vae"),
                            task="regression")
  with pytest.raises(CfjaxInputError, match="unknown mode|mode"):
    method(tiny, mode="scan")


def test_cli_explain_writes_grid_trajectory_and_summary(tmp_path, capsys):
  """``cfjax explain --method diffae-re`` end to end on the bundled Diff-AE: the trajectory strip
  decodes the recorded z_sem with the image's own x_T (``latent_fixed``), so
  ``concat(latent, latent_fixed)`` decodes to the counterfactual."""
  from cfjax.cli import main
  out = tmp_path / "dre"
  argv = ["explain", "--method", "diffae-re", "--dataset", "squares_grid_lower", "--predictor",
          "squares_regressor_rho0", "--generator", "squares_diffae", "--target", "mirror", "--limit", "2",
          "--steps", "3", "--decode-steps", "2", "--mode", "rolled", "--trajectory-every", "1",
          "--num-slots", "2", "--out", str(out), "--quiet"]
  assert main(argv) == 0
  assert "trajectory.png" in capsys.readouterr().out
  res = np.load(out / "results.npz")
  assert res["latent"].shape == (2, 128) and res["latent_fixed"].shape == (2, 32 * 32 * 3)
  assert res["trajectory"].shape == (2, 4, 128)
  assert (out / "grid.png").stat().st_size > 1000 and (out / "trajectory.png").stat().st_size > 1000
  gen = cfjax.load_generator("squares_diffae", decode_steps=2)
  z = np.concatenate([res["latent"], res["latent_fixed"]], -1)
  decoded = jax.vmap(lambda v: gen.decode(gen.params, v, jax.random.key(0)))(z)
  np.testing.assert_allclose(np.clip(decoded, 0, 1), res["counterfactual"], atol=1e-4)
