"""Counterfactual Attacks with the bundled testbed VAEs: validity, and `cfjax explain` end to end.

A VAE cannot reproduce the testbeds' pixel noise, so a CE differs from the original everywhere
by the reconstruction error; what the attack itself changed is the CE minus the reconstruction of
the start code (the result's ``reconstruction``), and that is what is located here.
"""

import json

import jax
import numpy as np
import pytest

import cfjax
from cfjax import data
from cfjax.cli import main
from cfjax.metrics import squares_report

IDS = np.arange(3, 315, 20)  # 16 lower-grid images over positions, colours and backgrounds


@pytest.fixture(scope="module")
def squares_attack():
  f = cfjax.load_predictor("squares_regressor_rho0")
  m = cfjax.methods.cf_attack(predictor=f, generator=cfjax.load_generator("squares_vae"), steps=300)
  lower, upper = data.squares_grid("lower", image_size=32), data.squares_grid("upper", image_size=32)
  x = lower["image"][IDS]
  t = cfjax.make_targets("mirror", task="regression", predictions=f(x), labels=lower["label"][IDS])[:, 0]
  res = cfjax.explain(m, x, t, key=jax.random.key(2), num_slots=16, steps_per_call=4, progress=False)
  res.update(image_id=IDS, original=x, target=t)
  own = {**res, "original": res["reconstruction"]}  # the attack's own change
  return res, squares_report(res, lower, upper), squares_report(own, lower, upper)


def test_squares_attack_reaches_the_mirror_target(squares_attack):
  res, report, _ = squares_attack
  assert report["success_rate"] >= 0.95, (report, res["iterations"])
  assert report["mean_prediction_error"] <= 0.05


def test_squares_attack_changes_the_square(squares_attack):
  """The rho = 0 regressor reads the square's colour: the attack's own change is concentrated in
  the square's interior, and the interior red moves towards the ideal CE (the upper twin)."""
  _, report, own = squares_attack
  assert own["inside_over_background"] > 3, own
  assert report["interior_red_distance_to_ideal_255"] < 0.5 * report["interior_red_original_to_ideal_255"]


def test_shapes_attack_flips_the_classifier_by_changing_the_shape():
  """The shapes classifier is confident (p(other class) ~ 1e-9 on most test images), so the
  attack takes the log-probability objective; the change lies on the shape, not the background."""
  f = cfjax.load_predictor("shapes_classifier")
  m = cfjax.methods.cf_attack(predictor=f, generator=cfjax.load_generator("shapes_vae"), steps=300,
                              loss="log_probability")
  batch = next(iter(data.load("shapes", split="test", batch_size=32, shuffle=False, image_size=32)))
  t = cfjax.make_targets("flip", task="classification", predictions=f(batch["image"]))[:, 0]
  res = cfjax.explain(m, batch["image"], t, key=jax.random.key(3), num_slots=16, steps_per_call=4,
                      progress=False)
  assert res["success"].mean() >= 0.95, res["iterations"]
  assert (res["status"][res["success"]] == 0).all()
  change = np.abs(res["counterfactual"] - res["reconstruction"]).mean(-1)
  shape = batch["mask"].reshape(change.shape).astype(bool)
  inside = (change * shape).sum((1, 2)) / shape.sum((1, 2))
  outside = (change * ~shape).sum((1, 2)) / (~shape).sum((1, 2))
  assert np.median(inside / outside) > 3, inside / outside


def test_cli_explain_cf_attack_writes_grid_trajectory_and_summary(tmp_path, capsys):
  out = tmp_path / "cfa"
  argv = ["explain", "--method", "cf-attack", "--dataset", "shapes", "--predictor", "shapes_classifier",
          "--generator", "shapes_vae", "--loss", "log_probability", "--limit", "4", "--steps", "60", "--trajectory-every", "2",
          "--num-slots", "4", "--out", str(out), "--quiet"]
  assert main(argv) == 0
  printed = capsys.readouterr().out
  assert "trajectory.png" in printed
  summary = json.loads((out / "summary.json").read_text())
  assert summary["num_explained"] == 4 and 0.0 <= summary["success_rate"] <= 1.0
  assert summary["settings"]["steps"] == 60 and summary["settings"]["trajectory_every"] == 2
  res = np.load(out / "results.npz")
  assert res["counterfactual"].shape == (4, 32, 32, 3) and "mask" not in res
  assert res["latent"].shape == (4, 64) and res["trajectory"].shape == (4, 31, 64)
  assert (out / "grid.png").stat().st_size > 1000 and (out / "trajectory.png").stat().st_size > 1000
  assert main(argv) == 0  # resumes: nothing recomputed
  assert json.loads((out / "summary.json").read_text())["computed_this_session"] == 0
