"""``cfjax fit-heads``, ``cfjax attribute`` and ``cfjax explain --method interfacegan`` end to end on
the squares testbed (small: a few hundred training images, four CEs)."""

import json

import numpy as np
import pytest

from cfjax.attribution import load_heads
from cfjax.cli import main


@pytest.fixture(scope="module")
def heads_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("heads") / "squares"
  rc = main(["fit-heads", "--generator", "squares_vae", "--dataset", "squares", "--attributes", "color_b,x,y",
             "--predictor", "squares_regressor_rho1", "--limit", "300", "--family", "linear",
             "--strength", "1e-4", "--out", str(out)])
  assert rc == 0
  return out


def test_fit_heads_writes_attribute_and_decision_heads(heads_dir, capsys):
  heads = load_heads(heads_dir)
  assert heads.names == ("color_b", "x", "y", "prediction")
  assert heads.generator["name"] == "squares_vae" and heads.metrics["color_b"]["r2"] > 0.9
  assert main(["fit-heads", "--generator", "squares_vae", "--dataset", "squares", "--attributes", "colour_b",
               "--limit", "50", "--out", str(heads_dir.parent / "bad")]) == 2
  assert "Did you mean 'color_b'" in capsys.readouterr().err
  assert main(["fit-heads", "--generator", "squares_vae", "--dataset", "squares", "--out", str(heads_dir)]) == 2
  only = heads_dir.parent / "decisions"
  assert main(["fit-heads", "--generator", "squares_vae", "--dataset", "squares", "--attributes", "none",
               "--predictor", "squares_regressor_rho0", "--limit", "60", "--out", str(only)]) == 0
  assert load_heads(only).names == ("prediction",) and load_heads(only).families == ("linear",)


def test_explain_and_attribute(heads_dir, tmp_path, capsys):
  ces = tmp_path / "ces"
  rc = main(["explain", "--method", "cf-attack", "--dataset", "squares_grid_lower", "--limit", "4",
             "--predictor", "squares_regressor_rho1", "--generator", "squares_vae", "--steps", "100",
             "--heads", str(heads_dir), "--without", "color_b", "--num-slots", "4", "--quiet", "--out", str(ces)])
  assert rc == 0
  with np.load(ces / "results.npz") as r:
    change = r["attribute_change"]
  assert change.shape == (4, 4) and np.abs(change[:, 0]).max() <= 1e-4
  out = tmp_path / "attribution"
  assert main(["attribute", "--ces", str(ces), "--heads", str(heads_dir), "--out", str(out)]) == 0
  glob = json.loads((out / "global.json").read_text())
  assert glob["kind"] == "directed" and glob["num_ces"] == 4 and len(glob["ranking"]) == 4
  assert (out / "importance.png").read_bytes()[:4] == b"\x89PNG" and (out / "per_image.csv").is_file()
  assert "ranked by directed" in capsys.readouterr().out


def test_explain_interfacegan_with_decision_heads(heads_dir, tmp_path):
  ces = tmp_path / "ifg"
  rc = main(["explain", "--method", "interfacegan", "--dataset", "squares_grid_lower", "--limit", "4",
             "--predictor", "squares_regressor_rho1", "--generator", "squares_vae", "--heads", str(heads_dir),
             "--num-slots", "4", "--quiet", "--out", str(ces)])
  assert rc == 0
  summary = json.loads((ces / "summary.json").read_text())
  assert summary["settings"]["direction_heads"] == ["prediction"] and summary["mean_iterations"] == 1.0
  with np.load(ces / "results.npz") as r:
    np.testing.assert_allclose(r["head_counterfactual"], r["target"], atol=1e-3)
  # heads of another generator are refused before anything compiles
  rc = main(["explain", "--method", "interfacegan", "--dataset", "shapes", "--limit", "2",
             "--predictor", "shapes_classifier", "--generator", "shapes_vae", "--heads", str(heads_dir),
             "--quiet", "--out", str(tmp_path / "bad")])
  assert rc == 2
