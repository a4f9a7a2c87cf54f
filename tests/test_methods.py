"""ACE and AC-RE as methods: they move decisions, stop early, report status, refuse bad settings.

The diffusion model is a small random-weight UNet (it only needs to be differentiable here; two
levels and no attention keep each method's programs quick to compile); predictors are hand-written pure functions, which also shows that any ``apply(params, x)``
plugs in.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfjax
from cfjax import CfjaxInputError, methods, nets
from cfjax.methods import Status, make_targets
from cfjax.nets import unet_config


@pytest.fixture(scope="module")
def ddpm():
  """A random-weight ADM UNet (learned variance) with a 500-step linear schedule, re-spaced to 25
  by the methods."""
  unet = nets.build(unet_config("small32", channel_mult=[1, 2], attention_resolutions=[]), seed=0)
  return cfjax.DiffusionModel(unet, 500, "linear")


@pytest.fixture(scope="module")
def fixtures_ddpm(unet_small):
  """The fixtures' random-weight UNet (three levels, attention): its filtered samples differ from
  the original by less than the mask threshold in places the left-half regressor reads."""
  return cfjax.DiffusionModel(unet_small, 500, "linear")


def red_logit(params, x):
  """A binary classifier: class 1 when the mean red intensity is above 0.5."""
  return (x[..., 0].mean(axis=(1, 2)) - 0.5) * params["gain"]


def red_value(params, x):
  """A regressor: mean red intensity, NaN for images that are mostly blue (a failure case)."""
  v = x[..., 0].mean(axis=(1, 2)) * params["gain"]
  return jnp.where(x[..., 2].mean(axis=(1, 2)) > 0.8, jnp.nan, v)


def images(n, seed=0, red=0.3):
  rs = np.random.RandomState(seed)
  x = rs.uniform(0.2, 0.6, (n, 32, 32, 3)).astype(np.float32)
  x[..., 0] = np.clip(red + rs.normal(0, 0.05, (n, 32, 32)), 0, 1)
  return x


@pytest.fixture(scope="module")
def ace(ddpm):
  return methods.make("ace", predictor=(red_logit, {"gain": jnp.float32(20.0)}), diffusion=ddpm,
                      respacing="25", tau=2, iterations=20, step_size=4 / 255, early_stop=True,
                      margin=0.2, mask_dilation=5)


@pytest.fixture(scope="module")
def acre(ddpm):
  return methods.make("acre", predictor=(red_value, {"gain": jnp.float32(1.0)}), diffusion=ddpm,
                      respacing="25", tau=2, iterations=15, step_size=4 / 255, tolerance=0.05,
                      mask_dilation=5, lam=0.0, stop_check="filter")  # a mean-red regressor's per-pixel gradient (~1e-4)
                                                 # is below the default l1 lam: no proximity term


def test_ace_flips_a_tiny_classifier(ace):
  x = images(6, red=0.42)
  outputs = np.asarray(red_logit({"gain": 20.0}, x))
  assert (outputs < 0).all()
  targets = make_targets("flip", task="classification", predictions=outputs)[:, 0]
  res = cfjax.explain(ace, x, targets, key=jax.random.key(0), num_slots=4, steps_per_call=1,
                       progress=False)
  assert res["success"].mean() >= 0.95, res["prediction"]
  assert (res["status"] == Status.SUCCESS).all()
  assert (np.asarray(res["prediction"]) > 0).all()
  # Early stop: images stop as soon as their filtered image is classified as the target.
  assert (res["iterations"] < 20).all()
  chex.assert_shape(res["mask"], (6, 32, 32))
  # Outside the refinement mask the counterfactual is the original, pixel for pixel.
  keep = res["mask"] == 0
  np.testing.assert_array_equal(res["counterfactual"][keep], x[keep])


def test_acre_reaches_targets_and_reports_nonfinite(acre):
  x = images(5, seed=1)
  x[4, ..., 2] = 1.0  # the regressor returns NaN on this image
  targets = np.array([0.45, 0.5, 0.4, 0.55, 0.5], np.float32)
  res = cfjax.explain(acre, x, targets, key=jax.random.key(0), num_slots=4, steps_per_call=1,
                       progress=False)
  # Every pre-explanation's filtered image met the tolerance (that is what stopped it) ...
  np.testing.assert_array_less(np.abs(res["pre_prediction"][:4] - targets[:4]), 0.05 + 1e-6)
  assert (res["iterations"][:4] < 15).all()
  # ... and the refined CEs mostly keep it (the random-weight UNet's refinement adds some drift).
  ok = res["status"][:4] == Status.SUCCESS
  assert ok.sum() >= 3, (res["prediction"], res["iterations"])
  np.testing.assert_array_less(np.abs(res["prediction"][:4][ok] - targets[:4][ok]), 0.05 + 1e-6)
  assert res["status"][4] == Status.NONFINITE
  assert not res["success"][4]
  # The failing image does not disturb the others, and its last finite iterate is kept.
  assert np.isfinite(res["pre_explanation"][4]).all()
  # Per-image early stop: iteration counts differ between images.
  assert len(set(res["iterations"][:4].tolist())) > 1


def test_acre_margin_tightens_the_early_stop(ddpm, acre):
  """With margin m the attack stops at |f(F(x')) - t| <= tolerance - m, so it runs at least as long."""
  tight = methods.make("acre", predictor=(red_value, {"gain": jnp.float32(1.0)}), diffusion=ddpm,
                       respacing="25", tau=2, iterations=15, step_size=4 / 255, tolerance=0.05,
                       margin=0.03, mask_dilation=5, lam=0.0, stop_check="filter")
  x = images(4, seed=1)
  targets = np.array([0.45, 0.5, 0.4, 0.55], np.float32)
  kw = dict(key=jax.random.key(0), num_slots=4, steps_per_call=1, progress=False)
  loose, strict = cfjax.explain(acre, x, targets, **kw), cfjax.explain(tight, x, targets, **kw)
  stopped = strict["iterations"] < 15
  assert stopped.sum() >= 3, strict["iterations"]
  np.testing.assert_array_less(np.abs(strict["pre_prediction"] - targets)[stopped], 0.02 + 1e-6)
  assert (strict["iterations"] >= loose["iterations"]).all()
  assert (strict["iterations"] > loose["iterations"]).any()


def test_refinement_with_the_attack_noise_reproduces_the_judged_sample(ddpm):
  """refine_noise="attack" reuses the noise of the evaluation that stopped the attack: with a mask
  that regenerates every pixel (threshold 0) the CE is that filtered sample, so its prediction is
  the one the early stop judged; fresh noise gives a different sample."""
  kw = dict(predictor=(red_value, {"gain": jnp.float32(1.0)}), diffusion=ddpm, respacing="25",
            tau=2, iterations=15, step_size=4 / 255, mask_dilation=5, mask_threshold=0.0, lam=0.0,
            stop_check="filter")
  x = images(4, seed=1)
  targets = np.array([0.45, 0.5, 0.4, 0.55], np.float32)
  run = dict(key=jax.random.key(0), num_slots=4, steps_per_call=1, progress=False)
  same = cfjax.explain(methods.make("acre", refine_noise="attack", **kw), x, targets, **run)
  fresh = cfjax.explain(methods.make("acre", refine_noise="fresh", **kw), x, targets, **run)
  stopped = same["iterations"] < 15
  assert stopped.all(), same["iterations"]
  assert (same["mask"] == 1).all()
  np.testing.assert_allclose(same["prediction"], same["pre_prediction"], atol=1e-5)
  assert same["success"].all()
  # The attack itself does not depend on the refinement's noise.
  np.testing.assert_array_equal(same["pre_explanation"], fresh["pre_explanation"])
  assert np.abs(fresh["prediction"] - fresh["pre_prediction"]).max() > 1e-3


def left_red(params, x):
  """A regressor that reads the left half only, so the refinement mask keeps the right half."""
  return x[:, :, :16, 0].mean(axis=(1, 2)) * params["gain"]


@pytest.mark.parametrize("refine_noise", ["attack", "fresh"])
def test_stop_check_on_the_refined_ce(fixtures_ddpm, refine_noise):
  """stop_check="refined": the stop judges the very CE that is returned, whatever the noise, also
  with a partial mask (the original is kept where the filtered sample had regenerated it)."""
  kw = dict(predictor=(left_red, {"gain": jnp.float32(1.0)}), diffusion=fixtures_ddpm, respacing="25",
            tau=2, iterations=15, optimizer="sgd", step_size=100.0, mask_dilation=1, lam=0.0,
            refine_noise=refine_noise)
  x = images(4, seed=1)
  targets = np.array([0.45, 0.5, 0.4, 0.55], np.float32)
  run = dict(key=jax.random.key(0), num_slots=4, steps_per_call=1, progress=False)
  res = cfjax.explain(methods.make("acre", stop_check="refined", **kw), x, targets, **run)
  assert (res["iterations"] < 15).all(), res["iterations"]
  kept = (res["mask"] == 0).mean(axis=(1, 2))
  assert ((kept > 0.05) & (kept < 0.95)).all(), kept
  np.testing.assert_allclose(res["prediction"], res["pre_prediction"], atol=1e-5)
  assert res["success"].all()
  # Judged on the filtered sample instead, the prediction that stopped the attack is not the CE's.
  filt = cfjax.explain(methods.make("acre", stop_check="filter", **kw), x, targets, **run)
  assert np.abs(filt["prediction"] - filt["pre_prediction"]).max() > 1e-4


def test_step_compiles_once_and_modes_agree(ddpm):
  kw = dict(predictor=(red_value, {"gain": jnp.float32(1.0)}), diffusion=ddpm, respacing="25",
            tau=2, iterations=3, step_size=1 / 255, lam=0.001, stop_check="filter")
  unrolled = methods.make("acre", chain_mode="unrolled", **kw)
  rolled = methods.make("acre", chain_mode="rolled", **kw)
  x = jnp.asarray(images(2, seed=2))
  t = jnp.array([0.5, 0.45], jnp.float32)
  keys = jax.random.split(jax.random.key(3), 2)
  outs = []
  for m in (unrolled, rolled):
    chex.clear_trace_counter()  # both modes share the step's code object
    step = jax.jit(jax.vmap(chex.assert_max_traces(m.step, n=1), in_axes=(None, 0)))
    s = jax.vmap(m.init, in_axes=(None, 0, 0, 0))(m.params, x, t, keys)
    for _ in range(2):
      s = step(m.params, s)
    outs.append(s)
  np.testing.assert_allclose(np.asarray(outs[0].aux["pred"]), np.asarray(outs[1].aux["pred"]), atol=1e-5)
  # sign-PGD: the two modes' gradients agree in sign almost everywhere.
  assert np.mean(np.asarray(outs[0].z) == np.asarray(outs[1].z)) > 0.99


def test_bad_settings_are_named(ddpm):
  kw = dict(predictor=(red_value, {"gain": 1.0}), diffusion=ddpm, respacing="25")
  with pytest.raises(CfjaxInputError, match=r"tau=30 must be in \[1, 25\]"):
    methods.make("acre", tau=30, **kw)
  with pytest.raises(CfjaxInputError, match="unknown optimizer 'sgn'.*'sign'"):
    methods.make("acre", optimizer="sgn", **kw)
  with pytest.raises(CfjaxInputError, match="unknown distance"):
    methods.make("acre", dist="l3", **kw)
  with pytest.raises(CfjaxInputError, match="odd"):
    methods.make("acre", mask_dilation=4, **kw)
  with pytest.raises(CfjaxInputError, match=r"margin=0.05 must be in \[0, tolerance=0.05\)"):
    methods.make("acre", margin=0.05, **kw)
  with pytest.raises(CfjaxInputError, match="unknown refine_noise 'same'"):
    methods.make("acre", refine_noise="same", **kw)
  with pytest.raises(CfjaxInputError, match="unknown stop_check 'ce'"):
    methods.make("acre", stop_check="ce", **kw)
  with pytest.raises(CfjaxInputError, match="unknown method 'acee'"):
    methods.make("acee", **kw)


def test_target_rules_and_their_errors():
  logits = np.array([-1.0, 2.0, -0.5])
  np.testing.assert_array_equal(make_targets("flip", task="classification", predictions=logits)[:, 0],
                                [1, 0, 1])
  with pytest.raises(CfjaxInputError, match=r"equal the current decision \(images \[1\]\)"):
    make_targets("class:1", task="classification", predictions=logits)
  with pytest.raises(CfjaxInputError, match="binary"):
    make_targets("flip", task="classification", predictions=np.zeros((3, 4)))
  np.testing.assert_array_equal(
      make_targets("next", task="classification", predictions=np.eye(3) * 5)[:, 0], [1, 2, 0])
  v = np.array([0.2, 0.9], np.float32)
  with pytest.raises(CfjaxInputError, match=r"outside the label range \[0.0, 1.0\] \(images \[1\]"):
    make_targets("shift:0.3", task="regression", predictions=v)
  chex.assert_shape(make_targets("values:0.1,0.5,0.9", task="regression", predictions=v), (2, 3))
  with pytest.raises(CfjaxInputError, match="unknown regression target rule"):
    make_targets("mirrror", task="regression", predictions=v)


def test_ace_results_do_not_depend_on_batching_or_devices(ace):
  """Per-image keys make the noise identical; the images agree to float round-off.

  Measured here: 1 device x 2 slots vs 2 devices x 4 slots (shuffled order) give bit-identical
  pre-explanations and counterfactuals. sign-PGD could amplify a reassociated float sum into a
  one-step (4/255) difference at a pixel, so the assertion allows that on at most 1% of pixels.
  """
  x = images(6, seed=4, red=0.42)
  t = np.ones(6, np.int32)
  a = cfjax.explain(ace, x, t, key=jax.random.key(7), num_slots=2, devices=jax.local_devices()[:1],
                     steps_per_call=1, progress=False)
  order = np.array([3, 0, 5, 1, 4, 2])
  b = cfjax.explain(ace, x[order], t[order], ids=order, key=jax.random.key(7), num_slots=4,
                     steps_per_call=1, progress=False)
  np.testing.assert_array_equal(a["iterations"], b["iterations"])
  for k in ("pre_explanation", "counterfactual"):
    diff = np.abs(a[k] - b[k])
    assert np.mean(diff > 1e-5) <= 0.01, (k, diff.max())
    assert diff.max() <= 4 / 255 + 1e-6, (k, diff.max())
