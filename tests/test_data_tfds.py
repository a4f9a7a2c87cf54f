"""tfds without TensorFlow: the testbed builders round trip, and the real-dataset loaders on mocks."""

import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import cfjax.data as data
from cfjax.data import real, tfds_builders
from cfjax._validate import CfjaxInputError


def test_tensorflow_is_not_installed():
  with pytest.raises(ImportError):
    import tensorflow  # noqa: F401


@pytest.fixture(scope="module")
def squares_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  tfds_builders.build("squares", data_dir=str(d), rho=0.5, image_size=32, n_train=40, n_test=24)
  return str(d)


def test_squares_builder_round_trip(squares_dir):
  name = "cfjax_squares/rho0.5_s32_n_test24_n_train40"
  src = tfds.data_source(name, split="train", data_dir=squares_dir, download=False)
  assert len(src) == 40
  ref = data.squares(40, image_size=32, rho=0.5)
  for i in (0, 17, 39):
    ex = src[i]
    assert ex["id"] == i
    np.testing.assert_array_equal(ex["image"].astype(np.float32) / 255, ref["image"][i])
    np.testing.assert_array_equal(ex["mask"], ref["mask"][i])
    assert ex["color_a"] == ref["color_a"][i] and ex["label"] == ref["label"][i]
  test = tfds.data_source(name, split="test", data_dir=squares_dir, download=False)
  ref_test = data.squares(24, image_size=32, rho=0.5, split="test")
  np.testing.assert_array_equal(test[5]["image"].astype(np.float32) / 255, ref_test["image"][5])
  for which in ("lower", "upper"):
    grid = tfds.data_source(name, split=f"grid_{which}", data_dir=squares_dir, download=False)
    g = data.squares_grid(which, image_size=32)
    assert len(grid) == 315
    np.testing.assert_array_equal(grid[300]["image"].astype(np.float32) / 255, g["image"][300])
  assert "tensorflow" not in sys.modules


def test_load_testbeds_through_tfds(squares_dir):
  bs = list(data.load("squares", data_dir=squares_dir, image_size=32, rho=0.5,
                      n={"train": 40, "test": 24}, batch_size=16))
  ids = np.concatenate([b["id"] for b in bs])
  assert sorted(ids.tolist()) == list(range(40))
  ref = data.squares(40, image_size=32, rho=0.5)
  for b in bs:
    assert b["image"].dtype == np.float32 and b["label"].dtype == np.float32
    np.testing.assert_array_equal(b["image"], ref["image"][b["id"]])
  shp = list(data.load("shapes", data_dir=squares_dir, n={"train": 20, "test": 8}, rho=1.0,
                       batch_size=8, shuffle=False))
  assert [len(b["id"]) for b in shp] == [8, 8, 4]
  ref = data.shapes(20, rho=1.0)
  np.testing.assert_array_equal(shp[1]["image"], ref["image"][8:16])
  np.testing.assert_array_equal(shp[1]["label"], shp[1]["background"])
  assert shp[0]["label"].dtype == np.int32


def test_mnist_loader_on_mock():
  with tfds.testing.mock_data(num_examples=20):
    ds = data.load("mnist", batch_size=8, image_size=32, seed=3)
    bs = list(ds)
    again = list(data.load("mnist", batch_size=8, image_size=32, seed=4))
    native = next(iter(data.load("mnist", batch_size=4, shuffle=False)))
  assert [len(b["id"]) for b in bs] == [8, 8, 4]
  b = bs[0]
  assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.float32
  assert 0 <= b["image"].min() and b["image"].max() <= 1
  np.testing.assert_array_equal(b["image"][..., 0], b["image"][..., 2])  # grey -> RGB
  assert b["label"].dtype == np.int32 and b["id"].dtype == np.int64
  assert native["image"].shape == (4, 28, 28, 3)
  # The same id gives the same example under a different shuffle.
  by_id = {int(i): (img, lab) for x in bs for i, img, lab in zip(x["id"], x["image"], x["label"])}
  order = np.concatenate([x["id"] for x in again])
  assert order.tolist() != np.concatenate([x["id"] for x in bs]).tolist()
  for x in again:
    for i, img, lab in zip(x["id"], x["image"], x["label"]):
      np.testing.assert_array_equal(img, by_id[int(i)][0])
      assert lab == by_id[int(i)][1]


def test_celeb_a_loader_on_mock():
  with tfds.testing.mock_data(num_examples=12):
    raw = tfds.data_source("celeb_a", split="validation")
    smiling = next(iter(data.load("celeb_a", split="validation", batch_size=12, shuffle=False)))
    young = next(iter(data.load("celeb_a", split="validation", batch_size=12, shuffle=False,
                                attribute="Young", image_size=64)))
    expected_young = [int(raw[i]["attributes"]["Young"]) for i in range(12)]
    expected_smiling = [int(raw[i]["attributes"]["Smiling"]) for i in range(12)]
    first = np.asarray(raw[0]["image"])
  assert smiling["image"].shape == (12, 128, 128, 3) and young["image"].shape == (12, 64, 64, 3)
  assert smiling["image"].dtype == np.float32 and 0 <= smiling["image"].min() <= 1
  assert smiling["label"].dtype == np.int32
  assert smiling["label"].tolist() == expected_smiling
  assert young["label"].tolist() == expected_young
  assert smiling["attributes"].shape == (12, 40)
  np.testing.assert_array_equal(smiling["attributes"][:, real.CELEBA_ATTRIBUTES.index("Young")],
                                young["label"])
  np.testing.assert_allclose(smiling["image"][0],
                             real.resize_center_crop(first, 128).astype(np.float32) / 255)
  with pytest.raises(CfjaxInputError, match="Smiling"):
    data.load("celeb_a", attribute="Smilling")


def test_resize_center_crop_follows_dime():
  img = np.zeros((218, 178, 3), np.uint8)
  img[:, 89:] = 255  # right half white: the crop keeps the centre column split
  out = real.resize_center_crop(img, 128)
  assert out.shape == (128, 128, 3)
  assert out[:, :60].max() == 0 and out[:, 68:].min() == 255
  rows = np.zeros((218, 178, 3), np.uint8)
  rows[:20] = 255  # top 20 rows fall outside DiME's crop (it starts at about row 19.5)
  assert real.resize_center_crop(rows, 128)[1:].max() == 0


def test_celebamask_attribute_file(tmp_path):
  names = list(real.CELEBA_ATTRIBUTES)
  rows = ["2", " ".join(reversed(names))]
  rows.append("0.jpg " + " ".join("1" if n == "Smiling" else "-1" for n in reversed(names)))
  rows.append("1.jpg " + " ".join("-1" if n == "Smiling" else "1" for n in reversed(names)))
  p = tmp_path / "anno.txt"
  p.write_text("\n".join(rows))
  table = real.read_celebamask_attributes(p)
  k = names.index("Smiling")
  assert table[0][k] == 1 and table[0].sum() == 1
  assert table[1][k] == 0 and table[1].sum() == 39


def test_missing_real_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(CfjaxInputError, match="never downloads"):
    data.load("mnist", data_dir=str(tmp_path))
