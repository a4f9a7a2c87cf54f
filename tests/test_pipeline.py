"""The method-agnostic edges: loaders, the flat API, and the CLI generated from method configs."""

import shutil

import numpy as np
import pytest

import cfjax
from cfjax import CfjaxInputError
from cfjax.cli import main


def test_loaders_accept_names_checkpoints_and_run_directories(tmp_path):
  from cfjax.assets import model_path
  run = tmp_path / "run"  # the layout `cfjax train-predictor --out run` leaves
  shutil.copytree(model_path("squares_regressor_rho0"), run / "model")
  (run / "log.jsonl").write_text("")
  by_name = cfjax.load_predictor("squares_regressor_rho0")
  for f in (cfjax.load_predictor(run), cfjax.load_predictor(run / "model")):
    assert f.task == "regression" and f.image_size == 32
    x = np.random.RandomState(0).rand(2, 32, 32, 3).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(f(x)), np.asarray(by_name(x)))
  ddpm = cfjax.load_diffusion("squares_ddpm")
  assert (ddpm.steps, ddpm.beta_schedule, ddpm.image_size) == (1000, "linear", 32)
  assert ddpm.schedule().num_timesteps == 50 and ddpm.schedule("25").num_timesteps == 25
  with pytest.raises(CfjaxInputError, match="holds a diffusion model, not a predictor"):
    cfjax.load_predictor("squares_ddpm")
  with pytest.raises(CfjaxInputError, match="not a generator checkpoint|holds a predictor"):
    cfjax.load_generator("squares_regressor_rho0")
  with pytest.raises(CfjaxInputError, match="does not exist"):
    cfjax.load_predictor(tmp_path / "nothing")


def test_the_public_api_is_flat():
  for name in ("load_predictor", "load_diffusion", "load_generator", "explain", "methods",
               "DiffusionModel", "Generator"):
    assert hasattr(cfjax, name), name
  for name in cfjax.methods.known_methods():
    assert callable(getattr(cfjax.methods, name.replace("-", "_")))
  assert "trajectory_every" in cfjax.methods.cf_attack.__doc__


def test_method_options_are_declared_once(capsys):
  spec = cfjax.methods.method_spec("acre")
  defaults = {o.name: o.default for o in spec.options()}
  assert defaults["stop_check"] == "refined" and defaults["lam"] == 0.003
  assert main(["explain", "--method", "acre", "--help"]) == 0
  out = capsys.readouterr().out
  for flag in ("--stop-check", "--lam", "--tau", "--respacing", "--mask-dilation", "--predictor"):
    assert flag in out, flag
  assert main(["explain", "--method", "cf-attack", "--help"]) == 0
  out = capsys.readouterr().out
  assert "--trajectory-every" in out and "--threshold" in out and "--stop-check" not in out
  assert main(["explain", "--help"]) == 0
  assert "cf-attack" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--method", "acre", "--diffusion", "squares_ddpm", "--generator", "x"], "takes no --generator"),
    (["--method", "cf-attack"], "needs --generator"),
    (["--method", "acre", "--diffusion", "squares_ddpm", "--stop-chek", "refined"],
     "unknown option(s) --stop-chek"),
    (["--method", "acre", "--diffusion", "squares_ddpm", "--stop-check", "ce"], "bad option value"),
    (["--method", "acre", "--diffusion", "squares_ddpm", "--lam", "-1", "--tau", "99"], "tau=99"),
])
def test_cli_errors_before_compiling(tmp_path, capsys, argv, message):
  base = ["explain", "--dataset", "squares_grid_lower", "--predictor", "squares_regressor_rho0",
          "--limit", "2", "--out", str(tmp_path / "o"), "--quiet"]
  assert main(base + argv) == 2
  assert message in capsys.readouterr().err
