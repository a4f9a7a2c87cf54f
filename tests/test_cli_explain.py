"""`cfjax explain` end to end (tiny settings) and its errors, which come before any compilation."""

import json

import numpy as np
import pytest

from cfjax.cli import main


@pytest.fixture(scope="module")
def diffusion_ckpt(tmp_path_factory, fixtures_dir):
  out = tmp_path_factory.mktemp("ckpt") / "small"
  assert main(["convert-checkpoint", str(fixtures_dir / "model_small.npz"), "--config", "small32",
               "--out", str(out)]) == 0
  return str(out)


def _explain(out, diffusion, *extra):
  return main(["explain", "--method", "acre", "--dataset", "squares_grid_lower", "--limit", "3",
               "--predictor", "squares_regressor_rho0", "--diffusion", diffusion, "--target", "mirror",
               "--tau", "2", "--iterations", "2", "--num-slots", "2", "--steps-per-call", "1",
               "--out", str(out), "--quiet", *extra])


def test_explain_writes_everything_and_resumes(tmp_path, diffusion_ckpt, capsys):
  out = tmp_path / "run"
  options = ("--stop-check", "refined", "--refine-noise", "fresh")
  assert _explain(out, diffusion_ckpt, *options) == 0
  printed = capsys.readouterr().out
  assert "grid.png" in printed
  summary = json.loads((out / "summary.json").read_text())
  assert summary["num_explained"] == 3 and summary["computed_this_session"] == 3
  assert summary["settings"]["tau"] == 2 and summary["settings"]["respacing"] == "25"
  assert summary["settings"]["stop_check"] == "refined" and summary["settings"]["refine_noise"] == "fresh"
  res = np.load(out / "results.npz")
  assert res["counterfactual"].shape == (3, 32, 32, 3)
  np.testing.assert_array_equal(res["image_id"], [0, 1, 2])
  np.testing.assert_allclose(res["target"], res["label"] + 128 / 255, rtol=1e-6)
  assert (out / "grid.png").stat().st_size > 1000
  # The same command again finds every CE done and computes nothing.
  assert _explain(out, diffusion_ckpt, *options) == 0
  again = json.loads((out / "summary.json").read_text())
  assert again["computed_this_session"] == 0 and again["num_explained"] == 3
  # A different run into the same directory is refused before compiling.
  assert _explain(out, diffusion_ckpt, *options, "--seed", "3") == 2
  assert "different run" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--method", "acee"], "unknown method 'acee'"),
    (["--method", "ace"], "does not fit a regression predictor"),
    (["--dataset", "squars"], "unknown dataset"),
    (["--target", "value:1.7"], "outside the label range"),
    (["--tau", "40"], "tau=40 must be in"),
    (["--predictor", "no_such_model"], "unknown bundled model"),
])
def test_explain_errors(tmp_path, diffusion_ckpt, capsys, args, message):
  base = {"--method": "acre", "--dataset": "squares_grid_lower", "--predictor": "squares_regressor_rho0",
          "--target": "mirror", "--tau": "2"}
  base.update(dict(zip(args[::2], args[1::2])))
  argv = ["explain", "--diffusion", diffusion_ckpt, "--limit", "2", "--out", str(tmp_path / "o"), "--quiet"]
  for k, v in base.items():
    argv += [k, v]
  assert main(argv) == 2
  assert message in capsys.readouterr().err


def test_explain_refuses_a_non_diffusion_checkpoint(tmp_path, capsys):
  from cfjax.assets import model_path
  argv = ["explain", "--method", "acre", "--dataset", "squares_grid_lower", "--limit", "2",
          "--predictor", "squares_regressor_rho0", "--diffusion", str(model_path("squares_regressor_rho0")),
          "--out", str(tmp_path / "o"), "--quiet"]
  assert main(argv) == 2
  assert "does not match: arch" in capsys.readouterr().err


def test_demo_runs_and_writes_its_summary(tmp_path, capsys):
  """README command (a)'s `cfjax demo`, on 2 images and 2 iterations."""
  out = tmp_path / "demo"
  assert main(["demo", "--out", str(out), "--num-images", "2", "--iterations", "2", "--quiet"]) == 0
  rows = json.loads((out / "demo.json").read_text())
  assert set(rows) == {"squares_regressor_rho0", "squares_regressor_rho1"}
  for r in rows.values():
    assert 0.0 <= r["success_rate"] <= 1.0 and 0 < r["mean_iterations"] <= 2
    assert r["mean_change_inside_square"] > 0
    assert (out / "squares_regressor_rho0" / "grid.png").exists()
  assert "summary:" in capsys.readouterr().out
