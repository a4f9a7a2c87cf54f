"""Diff-AE-RE validity on the squares testbed with the bundled ``squares_diffae``, on a small subset
for CI.

Diff-AE-RE runs with its defaults (Adam lr 0.002 on z_sem, 10 DDIM decode steps, at most 200 steps)
on lower-grid images spread over positions, colours and backgrounds, with the mirror target
(+128/255, whose ideal counterfactual is the image's upper twin) and key seed 1. The larger figures
come from ``benchmarks/validity_latent.py`` (see benchmarks/README.md).
"""

import jax
import numpy as np
import pytest

import cfjax
from cfjax import data, methods
from cfjax.metrics import squares_report

IDS = np.arange(4, 315, 40)
KEY = jax.random.key(1)


@pytest.fixture(scope="module")
def grids():
  return data.squares_grid("lower", image_size=32), data.squares_grid("upper", image_size=32)


def _diffae_re(name, grids):
  f = cfjax.load_predictor(name)
  m = cfjax.methods.diffae_re(predictor=f, generator=cfjax.load_generator("squares_diffae"))
  lower, upper = grids
  x = lower["image"][IDS]
  t = methods.make_targets("mirror", task="regression", predictions=np.asarray(f(x)),
                           labels=lower["label"][IDS])[:, 0]
  res = cfjax.explain(m, x, t, key=KEY, ids=IDS, num_slots=len(IDS), progress=False)
  res.update(image_id=IDS, original=x, target=t)
  report = squares_report(res, lower, upper)
  # what the latent edit itself changed, apart from the autoencoder's reconstruction error
  report["own_change"] = squares_report({**res, "original": res["reconstruction"]}, lower, upper)
  return report


@pytest.fixture(scope="module")
def rho0(grids):
  return _diffae_re("squares_regressor_rho0", grids)


def test_diffae_re_reaches_the_mirror_target(rho0):
  """The issue's bar: >= 90% of the CEs within 0.05 of the target. The bundled 8500-step Diff-AE
  reaches it on all 8 of these images (mean 91 iterations of 200) and on 15 of the 16 of
  benchmarks/results/validity_latent_diffae_re_8500_seed2.json."""
  assert rho0["success_rate"] >= 0.9, rho0
  assert rho0["mean_prediction_error"] < 0.05, rho0


def test_diffae_re_edit_is_concentrated_in_the_square(rho0):
  """The edit of z_sem changes the square's interior more than the background, per pixel (4.2x
  on these images), and moves the interior red towards the ideal counterfactual (the upper twin)."""
  own = rho0["own_change"]
  assert own["inside_over_background"] > 4, own
  assert rho0["interior_red_distance_to_ideal_255"] < rho0["interior_red_original_to_ideal_255"], rho0
