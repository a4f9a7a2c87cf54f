"""Synthetic testbeds and the in-memory loader: determinism, statistics, geometry, errors."""

import importlib

import chex
import numpy as np
import pytest

import cfjax.data as data
from cfjax._validate import CfjaxInputError

squares_mod = importlib.import_module("cfjax.data.squares")
shapes_mod = importlib.import_module("cfjax.data.shapes")


@pytest.fixture(scope="module")
def sq32():
  return data.squares(300, seed=3, image_size=32)


@pytest.fixture(scope="module")
def grids():
  return {s: {w: data.squares_grid(w, image_size=s) for w in ("lower", "upper")} for s in (32, 64)}


def test_squares_deterministic_and_prefix_stable(sq32):
  again = data.squares(300, seed=3, image_size=32)
  chex.assert_trees_all_equal(sq32, again)
  prefix = data.squares(10, seed=3, image_size=32)
  chex.assert_trees_all_equal(prefix, {k: v[:10] for k, v in sq32.items()})
  other = data.squares(10, seed=4, image_size=32)
  assert not np.array_equal(other["image"], prefix["image"])


def test_squares_shapes_ranges_and_published_design():
  d = data.squares(64, seed=0, image_size=64)
  chex.assert_shape(d["image"], (64, 64, 64, 3))
  chex.assert_shape(d["mask"], (64, 64, 64))
  assert d["image"].dtype == np.float32 and d["label"].dtype == np.float32
  assert d["image"].min() >= 0 and d["image"].max() <= 1
  np.testing.assert_allclose(d["label"], d["color_a"] / 255.0, rtol=1e-6)
  i = np.arange(64)
  # Half-combination i % 16 as published: bit 0 color_a, 1 color_b, 2 x, 3 y (upper when 0).
  np.testing.assert_array_equal(d["color_a"] >= 128, i % 2 == 0)
  np.testing.assert_array_equal(d["color_b"] >= 128, (i // 2) % 2 == 0)
  np.testing.assert_array_equal(d["x"] >= 26, (i // 4) % 2 == 0)
  np.testing.assert_array_equal(d["y"] >= 26, (i // 8) % 2 == 0)
  assert d["x"].max() <= 51 and d["y"].max() <= 51
  # Pixels are 8-bit values, like the published PNGs.
  np.testing.assert_allclose(d["image"] * 255, np.round(d["image"] * 255), atol=1e-3)


@pytest.mark.parametrize("rho", [0.0, 0.5, 1.0])
def test_squares_rho_sets_half_correlation(rho):
  f = squares_mod.factors(8000, seed=1, rho=rho)
  a, b = f["color_a"] >= 128, f["color_b"] >= 128
  assert abs(a.mean() - 0.5) < 0.02 and abs(b.mean() - 0.5) < 0.03
  corr = np.corrcoef(a, b)[0, 1]
  # Standard error of a correlation over 8000 pairs is about 0.011.
  assert abs(corr - rho) < 0.04, corr
  if rho == 1.0:
    np.testing.assert_array_equal(a, b)


def test_squares_square_is_where_factors_say(sq32):
  g = squares_mod.geometry(32)
  for i in range(0, 300, 37):
    x, y = sq32["x"][i], sq32["y"][i]
    m = sq32["mask"][i]
    rows, cols = np.nonzero(m)
    assert (rows.min(), cols.min()) == (x + g["border"], y + g["border"])
    assert m.sum() == g["inner"] ** 2
  # Red interior mean approx color_a / 255 (noise std 20/255 over 16 pixels; clipping biases
  # the extremes, hence the mid-range filter).
  red = np.array([sq32["image"][i][..., 0][sq32["mask"][i]].mean() for i in range(300)])
  mid = (sq32["color_a"] > 40) & (sq32["color_a"] < 215)
  assert np.abs(red[mid] - sq32["label"][mid]).max() < 0.08
  assert np.abs(red[mid] - sq32["label"][mid]).mean() < 0.03
  green = np.array([sq32["image"][i][..., 1][sq32["mask"][i]].mean() for i in range(300)])
  assert green.mean() < 0.05  # green/blue are 0 plus clipped noise
  # The border ring is grey 127.
  ring = np.zeros_like(sq32["mask"][0])
  i = 7
  ring[sq32["x"][i]:sq32["x"][i] + g["full"], sq32["y"][i]:sq32["y"][i] + g["full"]] = True
  ring &= ~sq32["mask"][i]
  assert abs(sq32["image"][i][ring].mean() * 255 - 127) < 6


@pytest.mark.parametrize("size", [32, 64])
def test_grid_distinct_and_twins_differ_only_inside(grids, size):
  lo, hi = grids[size]["lower"], grids[size]["upper"]
  for d in (lo, hi):
    assert d["image"].shape == (315, size, size, 3)
    assert len(np.unique(d["image"].reshape(315, -1), axis=0)) == 315
  np.testing.assert_array_equal(hi["color_a"], lo["color_a"] + 128)
  assert sorted(set(lo["color_a"].tolist())) == [0, 31, 63, 95, 127]
  assert sorted(set(lo["color_b"].tolist())) == [0, 42, 85, 127, 170, 212, 255]
  p = squares_mod.geometry(size)["positions"]
  assert sorted(set(lo["x"].tolist())) == [0, p // 2, p]
  diff = hi["image"] - lo["image"]
  outside = ~lo["mask"]
  assert np.all(diff[outside] == 0)
  assert np.all(diff[lo["mask"]][:, 1:] == 0)  # green/blue never change
  red_lo = lo["image"][..., 0][lo["mask"]] * 255
  red_hi = hi["image"][..., 0][lo["mask"]] * 255
  unclipped = (red_lo > 0.5) & (red_hi < 254.5)
  assert unclipped.mean() > 0.7  # the 0 and 127+128 colours clip about half their pixels
  assert np.all((diff[..., 0][lo["mask"]] >= 0) & (diff[..., 0][lo["mask"]] <= 128 / 255 + 1e-6))
  np.testing.assert_allclose(red_hi[unclipped] - red_lo[unclipped], 128.0, atol=1e-3)


def test_grid_seed_changes_noise_only(grids):
  other = data.squares_grid("lower", seed=5, image_size=32)
  lo = grids[32]["lower"]
  assert not np.array_equal(other["image"], lo["image"])
  np.testing.assert_array_equal(other["color_b"], lo["color_b"])


@pytest.mark.parametrize("rho", [0.0, 0.5, 1.0])
def test_shapes_rho_sets_background_correlation(rho):
  f = shapes_mod.factors(8000, seed=2, rho=rho)
  corr = np.corrcoef(f["label"], f["background"])[0, 1]
  assert abs(corr - rho) < 0.04, corr
  assert abs(f["label"].mean() - 0.5) < 0.02


def test_shapes_images_and_factors():
  d = data.shapes(64, seed=0, rho=0.0, num_classes=4)
  chex.assert_shape(d["image"], (64, 32, 32, 3))
  assert d["label"].dtype == np.int32 and set(d["label"].tolist()) <= {0, 1, 2, 3}
  chex.assert_trees_all_equal(d, data.shapes(64, seed=0, rho=0.0, num_classes=4))
  for i in range(0, 64, 9):
    m = d["mask"][i]
    assert m[d["x"][i], d["y"][i]]  # the centre is inside the shape
    np.testing.assert_allclose(d["image"][i][m].mean(0), d["color"][i], atol=0.03)
    np.testing.assert_allclose(d["image"][i][~m].mean(0), shapes_mod.PALETTE[d["background"][i]],
                               atol=0.03)
  # Circle and square cover about the same area, so pixel counts do not give the class away.
  area = d["mask"].sum((1, 2)) / d["size"] ** 2
  assert abs(area[d["label"] == 0].mean() - area[d["label"] == 1].mean()) < 0.3


def test_load_testbed_batches_and_ids():
  ds = data.load("squares", image_size=32, n=50, batch_size=16, seed=1)
  bs = list(ds)
  assert [len(b["id"]) for b in bs] == [16, 16, 16, 2]
  b = bs[0]
  chex.assert_shape(b["image"], (16, 32, 32, 3))
  assert b["image"].dtype == np.float32 and b["label"].dtype == np.float32
  assert b["id"].dtype == np.int64 and set(b) >= {"color_a", "color_b", "x", "y", "mask"}
  ids = np.concatenate([b["id"] for b in bs])
  assert sorted(ids.tolist()) == list(range(50)) and ids.tolist() != list(range(50))
  # The id names the example: the same id gives the same image whatever the shuffle.
  ref = data.squares(50, image_size=32)
  for b in bs:
    np.testing.assert_array_equal(b["image"], ref["image"][b["id"]])
    np.testing.assert_array_equal(b["label"], ref["label"][b["id"]])
  two = data.load("squares", image_size=32, n=50, batch_size=16, seed=1, num_epochs=2,
                  drop_remainder=True)
  assert len(list(two)) == 6


def test_load_shapes_grid_and_info():
  b = next(iter(data.load("shapes", n=20, batch_size=20, shuffle=False, rho=1.0)))
  assert b["label"].dtype == np.int32
  np.testing.assert_array_equal(b["label"], b["background"])
  grid = list(data.load("squares_grid_upper", image_size=32, batch_size=100, shuffle=False))
  assert sum(len(b["id"]) for b in grid) == 315
  info = data.dataset_info("squares", image_size=32, n=100)
  assert info["task"] == "regression" and info["label_range"] == (0.0, 1.0)
  assert info["num_examples"]["train"] == 100 and info["image_size"] == 32
  assert data.dataset_info("shapes", num_classes=3)["num_classes"] == 3
  assert data.dataset_info("squares_grid_lower")["num_examples"]["test"] == 315
  assert data.dataset_info("mnist")["num_classes"] == 10
  assert data.dataset_info("celeb_a", attribute="Young")["attribute"] == "Young"


def test_unknown_names_raise_with_suggestions():
  with pytest.raises(CfjaxInputError, match="celeb_a"):
    data.load("celeba")
  with pytest.raises(CfjaxInputError, match="Smiling"):
    data.dataset_info("celeb_a", attribute="smiling")
  with pytest.raises(CfjaxInputError, match="rho"):
    data.load("squares", rhoo=0.5)
  with pytest.raises(CfjaxInputError, match="split"):
    data.load("squares", split="valid")
  with pytest.raises(CfjaxInputError, match="image_size"):
    data.squares(4, image_size=48)
  with pytest.raises(CfjaxInputError, match="rho"):
    data.squares(4, rho=1.5)
  with pytest.raises(CfjaxInputError, match="attribute"):
    data.load("squares", attribute="Smiling")
