"""Validity on the testbeds with the bundled models (issue thresholds, on small subsets for CI).

AC-RE runs with its defaults on held-out grid images (ids 2, 42, ..., 282: none is a multiple of 5,
the images the defaults were chosen on) with key seed 1 (the defaults were chosen with seed 0).
The larger held-out figures come from ``benchmarks/validity.py`` (see benchmarks/README.md).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfjax
from cfjax import data, methods
from cfjax.diffusion import ddim_invert, ddim_sample_loop
from cfjax.metrics import squares_report

IDS = np.arange(2, 315, 40)  # 8 held-out lower-grid images spread over positions, colours and backgrounds
KEY = jax.random.key(1)  # the explain key; per-example keys fold in the grid id, as in benchmarks/validity.py


@pytest.fixture(scope="module")
def squares_ddpm():
  return cfjax.load_diffusion("squares_ddpm")


@pytest.fixture(scope="module")
def grids():
  return data.squares_grid("lower", image_size=32), data.squares_grid("upper", image_size=32)


def _acre(name, squares_ddpm, grids):
  f = cfjax.load_predictor(name)
  # AC-RE's defaults: the paper's squares setting, with the early stop judging the refined CE and
  # the l1 weight 0.003.
  m = cfjax.methods.acre(predictor=f, diffusion=squares_ddpm)
  lower, upper = grids
  x = lower["image"][IDS]
  p0 = np.asarray(f(x))
  t = methods.make_targets("mirror", task="regression", predictions=p0, labels=lower["label"][IDS])[:, 0]
  res = cfjax.explain(m, x, t, key=KEY, ids=IDS, num_slots=8, progress=False)
  res.update(image_id=IDS, original=x, target=t)
  report = squares_report(res, lower, upper)
  report.update(pre_reached=float(np.mean(np.abs(res["pre_prediction"] - t) <= m.settings["tolerance"])),
                original_error=float(np.abs(p0 - t).mean()))
  return report


@pytest.fixture(scope="module")
def acre_rho0(squares_ddpm, grids):
  return _acre("squares_regressor_rho0", squares_ddpm, grids)


def test_acre_reaches_the_mirror_target(acre_rho0):
  """The issue's bar: >= 90% of the refined CEs within 0.05 of the target (with the original's
  fresh refinement noise about a third reach it, see cfjax.methods.ace's module docstring;
  benchmarks/validity.py has the 32-image figures)."""
  assert acre_rho0["success_rate"] >= 0.9, acre_rho0
  assert acre_rho0["mean_prediction_error"] < 0.05, acre_rho0


def test_acre_change_is_concentrated_in_the_square(acre_rho0):
  # Per pixel, the interior (16 of 1024 pixels) changes far more than the background (43.9 vs 1.15
  # /255 on the 32 held-out grid images of benchmarks/validity.py with seed 1), and the CE lands near
  # its ideal counterfactual (the upper twin): interior red 28 /255 away instead of the original's 125.
  assert acre_rho0["inside_over_background"] > 10, acre_rho0
  assert acre_rho0["interior_red_distance_to_ideal_255"] < 0.5 * acre_rho0["interior_red_original_to_ideal_255"]


@pytest.fixture(scope="module")
def acre_rho1(squares_ddpm, grids):
  return _acre("squares_regressor_rho1", squares_ddpm, grids)


def test_acre_exposes_the_background_shortcut(acre_rho0, acre_rho1):
  """The regressor that reads the background (rho = 1) gets CEs that change the background (on the
  32 held-out grid images with seed 1: 17.0 /255 per pixel against 1.15 for rho = 0; inside/background
  1.4 vs 38) and move the interior colour less towards the ideal: part of the target is reached
  through the background."""
  assert acre_rho1["success_rate"] >= 0.75, acre_rho1
  assert acre_rho1["mean_change_background_255"] > 5 * acre_rho0["mean_change_background_255"]
  assert acre_rho1["inside_over_background"] < 0.25 * acre_rho0["inside_over_background"]
  assert acre_rho1["interior_red_distance_to_ideal_255"] > acre_rho0["interior_red_distance_to_ideal_255"]


def test_ace_flips_the_shapes_classifier():
  """ACE at tau = 5 of 50 with early stop flips every decision of these 8 (16 of 16 on a larger
  sample; the issue asks >= 95%). The refinement reuses the noise of the sample that flipped."""
  f = cfjax.load_predictor("shapes_classifier")
  m = cfjax.methods.ace(predictor=f, diffusion=cfjax.load_diffusion("shapes_ddpm"), respacing="50", tau=5,
                        iterations=40, step_size=2 / 255, mask_dilation=5, early_stop=True)
  batch = next(iter(data.load("shapes", split="test", batch_size=8, shuffle=False, image_size=32)))
  t = methods.make_targets("flip", task="classification", predictions=f(batch["image"]))[:, 0]
  res = cfjax.explain(m, batch["image"], t, key=jax.random.key(0), num_slots=8, progress=False)
  assert res["success"].mean() >= 0.95, (res["prediction"], res["iterations"])
  assert (res["iterations"] < 40).all(), res["iterations"]


def test_ddim_round_trip_on_the_trained_model(squares_ddpm, grids):
  unet, sched = squares_ddpm.net, squares_ddpm.schedule("ddim100")
  model = lambda x, t: unet.apply(unet.params, x, t)  # noqa: E731
  x0 = jnp.asarray(grids[0]["image"][IDS[:4]]) * 2 - 1
  run = jax.jit(lambda x: ddim_sample_loop(sched, model, ddim_invert(sched, model, x, mode="rolled"),
                                           mode="rolled"))
  rec = run(x0)
  err = float(jnp.abs(rec - x0).mean()) * 127.5
  # Mean absolute error in [0, 255] units; two independent noise draws of the same grid image
  # differ by 19.3 (the testbed's N(0, 20^2) pixel noise), so the round trip keeps most of it
  # (measured 10.8 with the 2750-step model, 12.2 with the bundled 7000-step one; a sample that
  # ignored its input would differ in square position, colour and background level as well).
  assert err < 0.75 * 19.3, err
