"""Predictor networks, the input-checking Predictor wrapper, and the bundled default models."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax import nets
from cfjax._validate import CfjaxInputError
from cfjax.assets import MODELS
from cfjax.training import predictor as tp

CONFIGS = {
    "cnn_scalar": ({"arch": "small_cnn", "num_outputs": 1, "image_size": 32, "width": 4}, (5,)),
    "cnn_group": ({"arch": "small_cnn", "num_outputs": 4, "image_size": 16, "width": 4, "stages": 2,
                   "norm": "group"}, (5, 4)),
    "resnet18": ({"arch": "resnet18", "num_outputs": 3, "width": 4}, (5, 3)),
    "oracle": ({"arch": "oracle", "num_attributes": 6, "image_size": 32, "width": 4, "stages": 3,
                "hidden": 8}, (5, 6)),
}
BUNDLED = ("squares_regressor_rho0", "squares_regressor_rho1", "shapes_classifier", "squares_features",
           "shapes_features")


@pytest.fixture(scope="session", params=list(CONFIGS))
def built(request):
  config, shape = CONFIGS[request.param]
  return nets.build(config), shape


def test_registered():
  assert {"small_cnn", "resnet18", "oracle"} <= set(nets.known_archs())


def test_output_shapes_and_per_example_independence(built):
  net, shape = built
  size = net.config.get("image_size", 32)
  x = jax.random.uniform(jax.random.key(0), (5, size, size, 3))
  y = jax.jit(net.apply)(net.params, x)
  chex.assert_shape(y, shape)
  chex.assert_tree_all_finite(y)
  # No batch statistics: an example's output does not depend on its batch neighbours.
  y1 = jax.jit(net.apply)(net.params, x[2:3])
  np.testing.assert_allclose(y1[0], y[2], rtol=1e-4, atol=1e-5)


def test_input_gradient_is_pure():
  net = nets.build(CONFIGS["cnn_scalar"][0])
  g = jax.jit(jax.grad(lambda x: net.apply(net.params, x).sum()))(jnp.full((2, 32, 32, 3), 0.5))
  chex.assert_shape(g, (2, 32, 32, 3))
  assert float(jnp.abs(g).sum()) > 0


@pytest.mark.parametrize("config, message", [
    ({"arch": "resnet19"}, "Did you mean 'resnet18'"),
    ({"arch": "small_cnn", "widht": 8}, "bad options for network 'small_cnn'"),
    ({"arch": "small_cnn", "image_size": 30}, "multiple of 8"),
    ({"arch": "resnet18", "norm": "batch"}, "unknown normalisation 'batch'"),
    ({"num_outputs": 1}, "'arch' entry"),
])
def test_bad_configs(config, message):
  with pytest.raises(CfjaxInputError, match=message):
    nets.registry.abstract_params(config) if "arch" in config else nets.build(config)


@pytest.fixture(scope="session")
def wrapped():
  return nets.Predictor(nets.build(CONFIGS["cnn_scalar"][0]))


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 32, 32, 3), np.uint8), "uint8"),
    (np.zeros((2, 16, 16, 3), np.float32), "32x32"),
    (np.zeros((2, 3, 32, 32), np.float32), "NCHW"),
    (np.zeros((32, 32, 3), np.float32), "rank 4"),
    (np.full((2, 32, 32, 3), 200.0, np.float32), "divide by 255"),
    (np.full((2, 32, 32, 3), -0.5, np.float32), r"\(x \+ 1\) / 2"),
    (np.full((2, 32, 32, 3), np.nan, np.float32), "NaN"),
    (np.zeros((2, 32, 32, 3), np.int32), "float"),
])
def test_predictor_wrapper_rejects_bad_images(wrapped, images, message):
  with pytest.raises(CfjaxInputError, match=message):
    wrapped(images)


def test_predictor_wrapper_accepts_good_images(wrapped):
  x = np.random.default_rng(0).random((3, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(wrapped(x), wrapped.net.apply(wrapped.net.params, jnp.asarray(x)), rtol=1e-4, atol=1e-6)


def test_unknown_bundled_model():
  with pytest.raises(CfjaxInputError, match="unknown bundled model 'squares_regressor_rho2'"):
    nets.load_predictor("squares_regressor_rho2")


@pytest.fixture(scope="session")
def bundled():
  return {name: nets.load_predictor(name) for name in BUNDLED}


def test_bundled_models_are_small_and_documented(bundled):
  total = 0
  for name, f in bundled.items():
    d = MODELS / name
    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    assert size < 1_000_000, (name, size)
    total += size
    command = (d / "COMMAND.txt").read_text().strip()
    assert command == f.meta["command"] and command.startswith("cfjax train-predictor")
    assert json.loads((d / "metrics.json").read_text()) == f.meta["metrics"]
  assert total < 3_000_000


def test_bundled_regressors_reproduce_their_metrics(bundled):
  sets = tp.eval_set("squares", image_size=32)
  reliance = {}
  for name in BUNDLED[:2]:
    f = bundled[name]
    got = tp.make_evaluator(f.net.apply, "regression", 1, sets)(f.net.params)
    assert got["mae"] == pytest.approx(f.meta["metrics"]["mae"], abs=1e-5)
    reliance[name] = tp.background_reliance(f.net.apply, f.net.params, image_size=32)
    assert reliance[name] == pytest.approx(f.meta["metrics"]["background_reliance"], abs=1e-5)
  assert bundled["squares_regressor_rho0"].meta["metrics"]["mae"] <= 0.05
  # The model trained with the shortcut (rho=1, stopped at 500 steps while it still reads it)
  # follows the background; the rho=0 model does not (measured bg_flip 0.109 vs 0.0096).
  r0, r1 = reliance["squares_regressor_rho0"], reliance["squares_regressor_rho1"]
  assert r1["bg_flip"] > 5 * r0["bg_flip"] and r1["bg_flip_ratio"] > 0.15
  assert r1["bg_flip_signed"] > 0.05 and r1["bg_flip_signed"] > 10 * abs(r0["bg_flip_signed"])


@pytest.mark.parametrize("name,dataset", [("squares_features", "squares"), ("shapes_features", "shapes")])
def test_bundled_feature_networks_reproduce_their_metrics(bundled, name, dataset):
  """The in-domain feature networks of the metrics regress every factor of their testbed."""
  f = bundled[name]
  targets = tp.Targets(**{k: tuple(v) for k, v in f.meta["targets"].items()})
  sets = tp.eval_set(dataset, image_size=32, targets=targets)
  got = tp.make_evaluator(f.net.apply, "regression", len(targets.names), sets, targets)(f.net.params)
  assert got == pytest.approx(f.meta["metrics"], abs=1e-5)
  assert min(got[f"r2_{n}"] for n in targets.names) > 0.95, got


def test_bundled_classifier(bundled):
  f = bundled["shapes_classifier"]
  assert f.meta["task"] == "classification" and f.config["num_outputs"] == 1
  assert f.meta["metrics"]["accuracy"] > 0.9
  got = tp.make_evaluator(f.net.apply, "classification", 1, tp.eval_set("shapes", image_size=32))(f.net.params)
  assert got["accuracy"] == pytest.approx(f.meta["metrics"]["accuracy"], abs=1e-6)
