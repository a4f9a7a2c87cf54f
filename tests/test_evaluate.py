"""`cfjax evaluate` over `cfjax explain` runs, `cfjax explain --metrics`, and their errors.

Two tiny cf-attack runs on shapes (4 images, 20 steps, seeds 0 and 1) are made once per module;
the squares ground-truth join is checked on a run directory written by hand (the upper twins as
CEs of shuffled lower-grid ids), so it needs no explanation.
"""

import json
import shutil

import numpy as np
import pytest

from cfjax import data
from cfjax.cli import main
from cfjax.metrics import evaluate_run, evaluate_runs

STREAMED = "success_rate,flip_rate,proximity,shapes_background_change,fid"


def _explain(out, seed, *extra):
  return main(["explain", "--method", "cf-attack", "--dataset", "shapes", "--predictor", "shapes_classifier",
               "--generator", "shapes_vae", "--loss", "log_probability", "--limit", "4", "--steps", "20",
               "--num-slots", "4", "--seed", str(seed), "--out", str(out), "--quiet", *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  assert _explain(root / "seed0", 0, "--metrics", STREAMED) == 0
  assert _explain(root / "seed1", 1) == 0
  return root / "seed0", root / "seed1"


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
  out = tmp_path_factory.mktemp("eval") / "compare"
  assert main(["evaluate", "--ces", str(runs[0]), str(runs[1]), "--out", str(out), "--examples", "4"]) == 0
  return out


def test_evaluate_writes_json_markdown_and_figures(runs, report):
  table = json.loads((report / "metrics.json").read_text())
  assert table["metrics"] == ["success_rate", "flip_rate", "proximity", "shapes_background_change"]
  names = [r["name"] for r in table["runs"]]
  assert names == ["cf-attack (seed0)", "cf-attack (seed1)"]
  assert {"success_rate", "flip_rate", "target_rate", "l1", "l2", "mae", "background_changed"} <= set(table["columns"])
  assert table["groups"]["proximity"] == ["l1", "l2", "mae"]
  for r, d in zip(table["runs"], runs):
    assert r["num_explained"] == 4
    assert r["values"]["success_rate"] == json.loads((d / "summary.json").read_text())["success_rate"]
  md = (report / "metrics.md").read_text().splitlines()
  assert md[0].startswith("| method | n | success_rate | flip_rate | target_rate | l1 |")
  assert len(md) == 4 and md[2].startswith("| cf-attack (seed0) | 4 |")
  assert md[3].startswith("| cf-attack (seed1) | 4 |")
  figures = sorted(p.name for p in (report / "figures").iterdir())
  assert figures == ["examples_cf-attack_seed0.png", "examples_cf-attack_seed1.png", "flip_rate.png",
                     "proximity.png", "shapes_background_change.png", "success_rate.png"]
  assert all((report / "figures" / f).stat().st_size > 1000 for f in figures)


def test_explain_metrics_match_evaluate(runs):
  summary = json.loads((runs[0] / "summary.json").read_text())
  streamed = summary["metrics"]
  stored = evaluate_run(runs[0], STREAMED.split(","))["values"]
  assert set(streamed) == set(stored)
  for k in stored:
    assert streamed[k] == pytest.approx(stored[k], rel=1e-5, abs=1e-6), k
  assert streamed["success_rate"] == summary["success_rate"]
  assert "metrics" not in json.loads((runs[1] / "summary.json").read_text())


def test_resumed_explain_metrics_cover_the_stored_ces(runs, tmp_path, capsys):
  again = tmp_path / "again"
  shutil.copytree(runs[0], again)
  assert _explain(again, 0, "--metrics", "success_rate", "--metrics", "proximity") == 0
  assert "success_rate:" in capsys.readouterr().out
  summary = json.loads((again / "summary.json").read_text())
  first = json.loads((runs[0] / "summary.json").read_text())["metrics"]
  assert summary["computed_this_session"] == 0
  assert summary["metrics"] == pytest.approx({k: first[k] for k in ("success_rate", "l1", "l2", "mae")}, rel=1e-6)


@pytest.fixture(scope="module")
def squares_run(tmp_path_factory):
  """A hand-written run: the upper twins as CEs of shuffled lower-grid ids (the ideal CEs)."""
  d = tmp_path_factory.mktemp("squares") / "ideal"
  d.mkdir()
  lo, hi = data.squares_grid("lower", image_size=32), data.squares_grid("upper", image_size=32)
  ids = np.array([17, 3, 16, 14, 15])
  res = {"id": np.arange(5), "image_id": ids, "original": lo["image"][ids], "counterfactual": hi["image"][ids],
         "success": np.ones(5, bool), "prediction": hi["label"][ids], "target": hi["label"][ids],
         "original_prediction": lo["label"][ids], "iterations": np.ones(5, np.int32)}
  np.savez(d / "results.npz", **res)
  summary = {"method": "twin", "settings": {"task": "regression"}, "run": {
      "dataset": "squares_grid_lower", "split": "test", "target": "mirror", "predictor": "squares_regressor_rho0",
      "dataset_options": {}}}
  (d / "summary.json").write_text(json.dumps(summary))
  return d


def test_squares_ground_truth_is_joined_by_image_id(squares_run):
  row = evaluate_run(squares_run)
  assert row["metrics"] == ["success_rate", "oracle_mae", "proximity", "squares_factor_change", "ideal_distance"]
  v = row["values"]
  assert v["ideal_distance"] == 0.0 and v["ideal_gap_closed"] == 1.0
  assert v["oracle_mae"] == 0.0
  # Ids 14..17 have color_a 63 (no clipping at 255): +128; id 3 has 127 and the twin's noise clips.
  assert 100 < v["delta_color_a"] <= 128 and v["changed_color_b"] == 0.0 and v["changed_border"] == 0.0
  regions = evaluate_run(squares_run, ["region_change"])["values"]
  assert regions["change_background"] == 0.0 and regions["change_interior"] > 40  # red +128: 128 / 3 channels


def _fake_run(src, dst, **run):
  shutil.copytree(src, dst)
  summary = json.loads((dst / "summary.json").read_text())
  summary["run"].update(run)
  (dst / "summary.json").write_text(json.dumps(summary))
  return dst


@pytest.mark.parametrize("metric,message", [
    ("proximty", "unknown metric 'proximty'"),
    ("mnac", "needs a model of its own"),
    ("oracle_mae", "is for regression runs"),
    ("ideal_distance", "needs an ideal CE"),
    ("squares_factor_change", "need(s) a squares data set"),
])
def test_evaluate_metric_errors(runs, tmp_path, capsys, metric, message):
  assert main(["evaluate", "--ces", str(runs[0]), "--out", str(tmp_path / "e"), "--metric", metric]) == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "e").exists()


def test_evaluate_input_errors(runs, tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  assert main(["evaluate", "--ces", str(runs[0]), str(tmp_path / "empty"), "--out", str(tmp_path / "e")]) == 2
  assert "holds no results of cfjax explain" in capsys.readouterr().err
  other = _fake_run(runs[1], tmp_path / "other", dataset_options={"rho": 1.0})
  assert main(["evaluate", "--ces", str(runs[0]), str(other), "--out", str(tmp_path / "e"),
               "--metric", "shapes_background_change"]) == 2
  assert "different data" in capsys.readouterr().err
  assert main(["explain", "--metrics", "succes_rate", "--method", "cf-attack", "--dataset", "shapes",
               "--predictor", "shapes_classifier", "--generator", "shapes_vae", "--out", str(tmp_path / "x")]) == 2
  assert "unknown metric 'succes_rate'" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()


def test_fid_and_sfid_by_name_use_the_testbed_features(squares_run, tmp_path):
  from cfjax import metrics
  from cfjax.metrics.features import feature_extractor
  row = evaluate_run(squares_run, ["fid", "sfid"])["values"]
  res = np.load(squares_run / "results.npz")
  f = feature_extractor("squares")
  direct = metrics.compute(metrics.fid(f), {"original": res["original"], "counterfactual": res["counterfactual"]})
  assert row["fid"] == pytest.approx(direct["fid"], rel=1e-5) and row["fid"] > 0
  assert row["sfid"] > 0 and np.isfinite(row["sfid_std"])
  # The features a run records (cfjax explain --features) are used, and --features overrides them.
  other = _fake_run(squares_run, tmp_path / "shapes_features", features="shapes")
  by_record = evaluate_run(other, ["fid"])["values"]["fid"]
  assert by_record != pytest.approx(row["fid"])
  assert evaluate_run(other, ["fid"], features="squares")["values"]["fid"] == pytest.approx(row["fid"], rel=1e-6)


def test_fid_needs_features_off_the_testbeds(runs, tmp_path, capsys):
  other = _fake_run(runs[0], tmp_path / "mnist", dataset="mnist")
  assert main(["evaluate", "--ces", str(other), "--out", str(tmp_path / "e"), "--metric", "fid"]) == 2
  assert "need a feature extractor" in capsys.readouterr().err
  assert main(["evaluate", "--ces", str(runs[0]), str(_fake_run(runs[1], tmp_path / "f", features="squares")),
               "--out", str(tmp_path / "e"), "--metric", "fid"]) == 2
  assert "incomparable" in capsys.readouterr().err
  assert not (tmp_path / "e").exists()


def test_defaults_are_shared_across_tasks(runs, squares_run):
  table = evaluate_runs([runs[0], squares_run])
  assert table["metrics"] == ["success_rate", "proximity"]
  assert [r["name"] for r in table["runs"]] == ["cf-attack", "twin"]


@pytest.mark.parametrize("module", ["runs", "report"])
def test_docstring_examples_run(module):
  import doctest
  import importlib
  result = doctest.testmod(importlib.import_module(f"cfjax.metrics.{module}"), optionflags=doctest.ELLIPSIS)
  assert result.failed == 0 and result.attempted > 0
