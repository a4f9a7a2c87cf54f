"""cfjax.metrics on the testbeds: factor changes and ideal-CE distances with known answers."""

import importlib

import numpy as np
import pytest

from cfjax import CfjaxInputError, data, metrics

sq = importlib.import_module("cfjax.data.squares")
sh = importlib.import_module("cfjax.data.shapes")
SIZE = 32
MID = np.arange(14, 21)  # lower-grid ids with color_a 63: the twins' red differs by 128 but where
# the upper twin's noise clips at 255 (a few pixels in 3 sigma), hence abs=0.1 on these numbers


@pytest.fixture(scope="module")
def twins():
  return data.squares_grid("lower", image_size=SIZE), data.squares_grid("upper", image_size=SIZE)


def _rerender(factors, noise_seed=0, **changes):
  """The grid images with some factors replaced and the same pixel noise as the grid."""
  f = {k: np.asarray(factors[k]) for k in ("color_a", "color_b", "x", "y")}
  f.update(changes)
  noise = sq.chunk_rng(noise_seed, sq.SPLIT_CODES["grid"], 0).standard_normal(
      (315, SIZE, SIZE, 3), dtype=np.float32) * sq.NOISE_STD
  ids = factors["ids"]
  img = sq.render(f["color_a"], f["color_b"], f["x"], f["y"], noise[ids], SIZE)
  return img.astype(np.float32) / np.float32(255.0)


def test_rerender_reproduces_the_grid(twins):
  lo, _ = twins
  f = {k: lo[k][MID] for k in ("color_a", "color_b", "x", "y")} | {"ids": MID}
  np.testing.assert_array_equal(_rerender(f), lo["image"][MID])


def test_squares_factor_change_and_regions_on_the_ideal_ce(twins):
  lo, hi = twins
  b = {"original": lo["image"][MID], "counterfactual": hi["image"][MID], "ideal": hi["image"][MID],
       "x": lo["x"][MID], "y": lo["y"][MID], **metrics.squares_regions(lo["x"][MID], lo["y"][MID], SIZE)}
  r = metrics.compute([metrics.squares_factor_change(SIZE), metrics.region_change(),
                       metrics.ideal_distance(region_key="interior", channel=0, scale=255.0)], b)
  assert r["delta_color_a"] == pytest.approx(128.0, abs=0.1) and r["changed_color_a"] == 1.0
  assert r["abs_delta_color_b"] == 0.0 and r["abs_delta_border"] == 0.0 and r["changed_color_b"] == 0.0
  assert r["color_b_over_color_a"] == 0.0
  assert r["change_interior"] == pytest.approx(128.0 / 3, abs=0.1)  # red moves by 128, channel mean
  assert r["change_background"] == 0.0 and r["change_interior_over_background"] == np.inf
  assert r["ideal_distance"] == 0.0 and r["original_ideal_distance"] == pytest.approx(128.0, abs=0.1)
  assert r["ideal_gap_closed"] == 1.0


def test_squares_shortcut_ce_changes_the_background(twins):
  lo, _ = twins
  ids = MID[:-1]  # backgrounds 0..212: room for +40
  f = {k: lo[k][ids] for k in ("color_a", "color_b", "x", "y")} | {"ids": ids}
  # A shortcut's CE: the background brightened by 40 grey levels, the square untouched.
  shortcut = _rerender(f, color_b=lo["color_b"][ids] + 40)
  b = {"original": lo["image"][ids], "counterfactual": shortcut, "x": lo["x"][ids], "y": lo["y"][ids]}
  r = metrics.compute(metrics.squares_factor_change(SIZE), b)
  assert r["abs_delta_color_a"] == 0.0 and r["changed_color_a"] == 0.0
  assert r["changed_color_b"] == 1.0 and 30 < r["abs_delta_color_b"] <= 40  # noise clipping at 0 and 255
  assert r["color_b_over_color_a"] == np.inf
  moved = _rerender(f, x=lo["x"][ids] - 3 * np.sign(lo["x"][ids] - 13))  # a moved square changes the ring
  r = metrics.compute(metrics.squares_factor_change(SIZE), {**b, "counterfactual": moved})
  assert r["changed_border"] > 0.5


def test_ideal_distance_of_the_input_is_zero_progress(twins):
  lo, hi = twins
  b = {"original": lo["image"][:20], "counterfactual": lo["image"][:20], "ideal": hi["image"][:20]}
  r = metrics.compute(metrics.ideal_distance(), b)
  assert r["ideal_gap_closed"] == 0.0 and r["ideal_distance"] == r["original_ideal_distance"] > 0


def test_shapes_background_change():
  d = data.shapes(16, rho=0.0)
  other = (d["background"] + 1) % 2
  repainted = np.where(d["mask"][..., None], d["image"], sh.PALETTE[other][:, None, None, :])
  b = {"original": d["image"], "shape_mask": d["mask"]}
  same = metrics.compute(metrics.shapes_background_change(), {**b, "counterfactual": d["image"]})
  assert same == pytest.approx({"background_changed": 0.0, "abs_delta_background": 0.0,
                                 "abs_delta_shape": 0.0}, abs=1e-4)
  r = metrics.compute(metrics.shapes_background_change(), {**b, "counterfactual": repainted})
  assert r["background_changed"] == 1.0 and r["abs_delta_shape"] == pytest.approx(0.0, abs=1e-4)
  assert r["abs_delta_background"] > 30


def test_testbed_bad_input(twins):
  lo, hi = twins
  b = {"original": lo["image"][:2], "counterfactual": hi["image"][:2], "x": lo["x"][:2], "y": lo["y"][:2]}
  with pytest.raises(CfjaxInputError, match="32x32"):
    metrics.compute(metrics.squares_factor_change(64), b)
  with pytest.raises(CfjaxInputError, match="region 'interior'"):
    metrics.compute(metrics.region_change(), {**b, "interior": lo["mask"][:2, :16], "background": ~lo["mask"][:2]})
  with pytest.raises(CfjaxInputError, match="needs batch keys ideal"):
    metrics.compute(metrics.ideal_distance(), b)
