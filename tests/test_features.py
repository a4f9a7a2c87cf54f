"""Feature extractors: pytorch-fid's InceptionV3 (architecture, import, conversion) and the
penultimate-layer features of predictors, on random weights (the real .pth is never needed).

The reference key list below is written from torchvision's Inception3 and pytorch-fid's
``fid_inception_v3`` (BasicConv2d = bias-free Conv2d + BatchNorm2d; aux_logits=False; 1008
classes), independently of cfjax's module, so the coverage test checks the importer against the
file's layout rather than against itself.
"""

import numpy as np
import pytest

from cfjax._validate import CfjaxInputError
from cfjax.cli import main
from cfjax.metrics import compute, fid
from cfjax.metrics.features import FeatureExtractor, feature_extractor, from_network
from cfjax.nets import build, inception_import, registry


def _conv(name, cin, cout, k):
  kh, kw = (k, k) if isinstance(k, int) else k
  return [(name, cin, cout, kh, kw)]


def _block_a(n, cin, pf):
  return (_conv(f"{n}.branch1x1", cin, 64, 1) + _conv(f"{n}.branch5x5_1", cin, 48, 1)
          + _conv(f"{n}.branch5x5_2", 48, 64, 5) + _conv(f"{n}.branch3x3dbl_1", cin, 64, 1)
          + _conv(f"{n}.branch3x3dbl_2", 64, 96, 3) + _conv(f"{n}.branch3x3dbl_3", 96, 96, 3)
          + _conv(f"{n}.branch_pool", cin, pf, 1))


def _block_b(n, cin):
  return (_conv(f"{n}.branch3x3", cin, 384, 3) + _conv(f"{n}.branch3x3dbl_1", cin, 64, 1)
          + _conv(f"{n}.branch3x3dbl_2", 64, 96, 3) + _conv(f"{n}.branch3x3dbl_3", 96, 96, 3))


def _block_c(n, cin, c7):
  return (_conv(f"{n}.branch1x1", cin, 192, 1) + _conv(f"{n}.branch7x7_1", cin, c7, 1)
          + _conv(f"{n}.branch7x7_2", c7, c7, (1, 7)) + _conv(f"{n}.branch7x7_3", c7, 192, (7, 1))
          + _conv(f"{n}.branch7x7dbl_1", cin, c7, 1) + _conv(f"{n}.branch7x7dbl_2", c7, c7, (7, 1))
          + _conv(f"{n}.branch7x7dbl_3", c7, c7, (1, 7)) + _conv(f"{n}.branch7x7dbl_4", c7, c7, (7, 1))
          + _conv(f"{n}.branch7x7dbl_5", c7, 192, (1, 7)) + _conv(f"{n}.branch_pool", cin, 192, 1))


def _block_d(n, cin):
  return (_conv(f"{n}.branch3x3_1", cin, 192, 1) + _conv(f"{n}.branch3x3_2", 192, 320, 3)
          + _conv(f"{n}.branch7x7x3_1", cin, 192, 1) + _conv(f"{n}.branch7x7x3_2", 192, 192, (1, 7))
          + _conv(f"{n}.branch7x7x3_3", 192, 192, (7, 1)) + _conv(f"{n}.branch7x7x3_4", 192, 192, 3))


def _block_e(n, cin):
  return (_conv(f"{n}.branch1x1", cin, 320, 1) + _conv(f"{n}.branch3x3_1", cin, 384, 1)
          + _conv(f"{n}.branch3x3_2a", 384, 384, (1, 3)) + _conv(f"{n}.branch3x3_2b", 384, 384, (3, 1))
          + _conv(f"{n}.branch3x3dbl_1", cin, 448, 1) + _conv(f"{n}.branch3x3dbl_2", 448, 384, 3)
          + _conv(f"{n}.branch3x3dbl_3a", 384, 384, (1, 3))
          + _conv(f"{n}.branch3x3dbl_3b", 384, 384, (3, 1)) + _conv(f"{n}.branch_pool", cin, 192, 1))


CONVS = (_conv("Conv2d_1a_3x3", 3, 32, 3) + _conv("Conv2d_2a_3x3", 32, 32, 3)
         + _conv("Conv2d_2b_3x3", 32, 64, 3) + _conv("Conv2d_3b_1x1", 64, 80, 1)
         + _conv("Conv2d_4a_3x3", 80, 192, 3) + _block_a("Mixed_5b", 192, 32)
         + _block_a("Mixed_5c", 256, 64) + _block_a("Mixed_5d", 288, 64) + _block_b("Mixed_6a", 288)
         + _block_c("Mixed_6b", 768, 128) + _block_c("Mixed_6c", 768, 160)
         + _block_c("Mixed_6d", 768, 160) + _block_c("Mixed_6e", 768, 192) + _block_d("Mixed_7a", 768)
         + _block_e("Mixed_7b", 1280) + _block_e("Mixed_7c", 2048))


def reference_shapes() -> dict:
  """Every tensor of pt_inception-2015-12-05-6726825d.pth with its shape."""
  shapes = {}
  for name, cin, cout, kh, kw in CONVS:
    shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.bn.{leaf}"] = (cout,)
    shapes[f"{name}.bn.num_batches_tracked"] = ()
  shapes["fc.weight"], shapes["fc.bias"] = (1008, 2048), (1008,)
  return shapes


def random_state_dict(seed=0) -> dict:
  """Random tensors of the reference shapes, scaled so activations stay of order one."""
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in reference_shapes().items():
    if key.endswith("num_batches_tracked"):
      sd[key] = np.array(0, np.int64)
    elif key.endswith("conv.weight"):
      sd[key] = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape).astype(np.float32)
    elif key.endswith(("running_var", "bn.weight")):
      sd[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      sd[key] = rng.normal(0, 0.01 if key.startswith("fc") else 0.1, shape).astype(np.float32)
  return sd


@pytest.fixture(scope="module")
def state_dict():
  return random_state_dict()


@pytest.fixture(scope="module")
def params(state_dict):
  return inception_import.convert_fid_inception(state_dict)


@pytest.fixture(scope="module")
def features_299(params):
  """The converted network's features of two 32x32 images (resized to 299), and the images."""
  import jax
  x = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)
  apply = registry.make_apply(inception_import.fid_inception_config())
  return np.asarray(jax.jit(apply)(params, x)), x


def test_key_coverage(state_dict, params):
  template = registry.abstract_params(inception_import.fid_inception_config())
  import jax
  got = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
  want = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(template)}
  assert got == want
  tensors = [k for k in state_dict if not k.endswith("num_batches_tracked")]
  assert len(got) == len(tensors) == 94 * 5 + 2
  registry.check_params(inception_import.fid_inception_config(), params)


def test_layouts(state_dict, params):
  w = state_dict["Mixed_6b.branch7x7_2.conv.weight"]  # (out, in, 1, 7)
  np.testing.assert_array_equal(params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
                                w.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["fc"]["kernel"], state_dict["fc.weight"].T)
  np.testing.assert_array_equal(params["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                state_dict["Mixed_7c.branch_pool.bn.running_var"])
  assert "num_batches_tracked" not in str(params.keys())


def test_state_dict_without_num_batches_tracked(state_dict):
  sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  inception_import.convert_fid_inception(sd)


@pytest.mark.parametrize("edit, words", [
    ("missing", ["missing key for Mixed_5b/branch_pool/conv/kernel"]),
    ("unexpected", ["unexpected key 'AuxLogits.fc.weight'", "unexpected key 'Mixed_5b.branch1x1.conv.bias'"]),
    ("shape", ["'Mixed_6e.branch1x1.conv.weight': shape (192, 768, 3, 3)"]),
])
def test_conversion_errors_name_keys(state_dict, edit, words):
  sd = dict(state_dict)
  if edit == "missing":
    del sd["Mixed_5b.branch_pool.conv.weight"]
  elif edit == "unexpected":
    sd["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
    sd["Mixed_5b.branch1x1.conv.bias"] = np.zeros((64,), np.float32)
  else:
    sd["Mixed_6e.branch1x1.conv.weight"] = np.zeros((192, 768, 3, 3), np.float32)
  with pytest.raises(CfjaxInputError) as e:
    inception_import.convert_fid_inception(sd)
  for w in words:
    assert w in str(e.value)
  assert inception_import.WEIGHTS_FILE in str(e.value)


def test_architecture_shapes_without_resize(params):
  import jax
  apply = registry.make_apply(inception_import.fid_inception_config(resize_input=False))
  out = jax.eval_shape(apply, params, jax.ShapeDtypeStruct((3, 75, 75, 3), np.float32))
  assert out.shape == (3, 2048)
  logits = registry.make_apply(inception_import.fid_inception_config(), "logits")
  assert jax.eval_shape(logits, params, jax.ShapeDtypeStruct((2, 299, 299, 3), np.float32)).shape == (2, 1008)


def test_prepare_input_resizes_bilinear_and_normalises():
  torch = pytest.importorskip("torch")
  from cfjax.nets.inception import prepare_input
  x = np.random.default_rng(0).random((2, 40, 24, 3), dtype=np.float32)
  got = np.asarray(prepare_input(x))
  ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299),
                                        mode="bilinear", align_corners=False)
  ref = (2 * ref - 1).permute(0, 2, 3, 1).numpy()
  assert got.shape == (2, 299, 299, 3)
  np.testing.assert_allclose(got, ref, atol=1e-5)
  big = np.random.default_rng(1).random((1, 512, 512, 3), dtype=np.float32)
  ref = torch.nn.functional.interpolate(torch.from_numpy(big).permute(0, 3, 1, 2), size=(299, 299),
                                        mode="bilinear", align_corners=False)
  np.testing.assert_allclose(np.asarray(prepare_input(big, normalize_input=False)),
                             ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)
  assert prepare_input(np.ones((1, 8, 8, 1), np.float32)).shape == (1, 299, 299, 3)


def _torch_reference(sd, x):
  """pytorch-fid's forward pass (blocks 0-3, resize, normalise) in torch.nn.functional."""
  import torch
  F = torch.nn.functional
  t = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}
  pads = {}
  for name, _, _, kh, kw in CONVS:
    pads[name] = ((kh - 1) // 2, (kw - 1) // 2)
  for n in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_4a_3x3", "Mixed_6a.branch3x3",
            "Mixed_6a.branch3x3dbl_3", "Mixed_7a.branch3x3_2", "Mixed_7a.branch7x7x3_4"):
    pads[n] = (0, 0)
  strides = {n: 2 for n in ("Conv2d_1a_3x3", "Mixed_6a.branch3x3", "Mixed_6a.branch3x3dbl_3",
                            "Mixed_7a.branch3x3_2", "Mixed_7a.branch7x7x3_4")}

  def bc(name, h):
    h = F.conv2d(h, t[f"{name}.conv.weight"], stride=strides.get(name, 1), padding=pads[name])
    h = F.batch_norm(h, t[f"{name}.bn.running_mean"], t[f"{name}.bn.running_var"],
                     t[f"{name}.bn.weight"], t[f"{name}.bn.bias"], False, 0.0, 1e-3)
    return F.relu(h)

  def seq(h, *names):
    for nm in names:
      h = bc(nm, h)
    return h

  def avg(h):
    return F.avg_pool2d(h, 3, 1, 1, count_include_pad=False)

  def a(n, h):
    return torch.cat([bc(f"{n}.branch1x1", h), seq(h, f"{n}.branch5x5_1", f"{n}.branch5x5_2"),
                      seq(h, *(f"{n}.branch3x3dbl_{i}" for i in (1, 2, 3))),
                      bc(f"{n}.branch_pool", avg(h))], 1)

  def b(n, h):
    return torch.cat([bc(f"{n}.branch3x3", h), seq(h, *(f"{n}.branch3x3dbl_{i}" for i in (1, 2, 3))),
                      F.max_pool2d(h, 3, 2)], 1)

  def c(n, h):
    return torch.cat([bc(f"{n}.branch1x1", h), seq(h, *(f"{n}.branch7x7_{i}" for i in (1, 2, 3))),
                      seq(h, *(f"{n}.branch7x7dbl_{i}" for i in (1, 2, 3, 4, 5))),
                      bc(f"{n}.branch_pool", avg(h))], 1)

  def d(n, h):
    return torch.cat([seq(h, f"{n}.branch3x3_1", f"{n}.branch3x3_2"),
                      seq(h, *(f"{n}.branch7x7x3_{i}" for i in (1, 2, 3, 4))), F.max_pool2d(h, 3, 2)], 1)

  def e(n, h, pool):
    b3, dd = bc(f"{n}.branch3x3_1", h), seq(h, f"{n}.branch3x3dbl_1", f"{n}.branch3x3dbl_2")
    return torch.cat([bc(f"{n}.branch1x1", h), bc(f"{n}.branch3x3_2a", b3), bc(f"{n}.branch3x3_2b", b3),
                      bc(f"{n}.branch3x3dbl_3a", dd), bc(f"{n}.branch3x3dbl_3b", dd),
                      bc(f"{n}.branch_pool", pool(h))], 1)

  with torch.no_grad():
    h = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
                      align_corners=False) * 2 - 1
    h = F.max_pool2d(seq(h, "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"), 3, 2)
    h = F.max_pool2d(seq(h, "Conv2d_3b_1x1", "Conv2d_4a_3x3"), 3, 2)
    for n in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
      h = a(n, h)
    h = b("Mixed_6a", h)
    for n in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
      h = c(n, h)
    h = e("Mixed_7b", d("Mixed_7a", h), avg)
    h = e("Mixed_7c", h, lambda z: F.max_pool2d(z, 3, 1, 1))
    return F.adaptive_avg_pool2d(h, (1, 1)).flatten(1).numpy()


def test_pool3_features_match_a_torch_forward(state_dict, features_299):
  pytest.importorskip("torch")
  got, x = features_299
  ref = _torch_reference(state_dict, x)
  assert got.shape == (2, 2048)
  np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


def test_npz_conversion_round_trip(state_dict, params, tmp_path):
  path = tmp_path / "inception.npz"
  np.savez(path, **state_dict)
  net = inception_import.load_fid_inception(path, resize_input=False)
  assert net.config["resize_input"] is False
  np.testing.assert_array_equal(net.params["Mixed_7b"]["branch3x3_2a"]["conv"]["kernel"],
                                params["Mixed_7b"]["branch3x3_2a"]["conv"]["kernel"])


def test_torch_file_converts_with_the_cli_and_loads(state_dict, params, features_299, tmp_path):
  torch = pytest.importorskip("torch")
  src = tmp_path / inception_import.WEIGHTS_FILE
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, src)
  out = tmp_path / "inception"
  assert main(["convert-checkpoint", str(src), "--config", "fid_inception_v3", "--out", str(out)]) == 0
  f = feature_extractor("inception", checkpoint=out)
  assert f.dim == 2048 and f.image_size is None
  got, x = features_299
  np.testing.assert_allclose(np.asarray(f(x)), got, rtol=1e-5, atol=1e-6)
  from cfjax.nets import load_network
  net, meta = load_network(out)
  assert meta["kind"] == "features" and meta["dim"] == 2048
  for name in ("Conv2d_1a_3x3", "Mixed_6e"):
    np.testing.assert_array_equal(np.asarray(_first_leaf(net.params[name])),
                                  np.asarray(_first_leaf(params[name])))


def _first_leaf(tree):
  import jax
  return jax.tree.leaves(tree)[0]


def test_torch_file_with_objects_is_refused(tmp_path):
  torch = pytest.importorskip("torch")
  src = tmp_path / "model.pth"
  torch.save({"model": torch.nn.Linear(2, 2)}, src)
  with pytest.raises(CfjaxInputError, match="weights_only"):
    inception_import.load_fid_inception(src)


def test_inception_needs_an_explicit_path(tmp_path):
  for checkpoint in (None, tmp_path / "absent", tmp_path / inception_import.WEIGHTS_FILE):
    with pytest.raises(CfjaxInputError, match="convert-checkpoint .* --config fid_inception_v3"):
      feature_extractor("inception", checkpoint=checkpoint)


def test_inception_checkpoint_must_hold_inception():
  from cfjax.assets import model_path
  with pytest.raises(CfjaxInputError, match="not 'fid_inception_v3'"):
    feature_extractor("inception", checkpoint=model_path("squares_regressor_rho0"))


def test_unknown_and_misused_names():
  with pytest.raises(CfjaxInputError, match="no_such_model"):
    feature_extractor("no_such_model")
  with pytest.raises(CfjaxInputError, match="checkpoint= applies"):
    feature_extractor("squares_regressor_rho0", checkpoint="x")
  with pytest.raises(CfjaxInputError, match="no feature layer"):
    from_network(build({"arch": "cf_mnist_cnn"}), name="mnist")


@pytest.mark.parametrize("config, dim", [
    ({"arch": "small_cnn", "image_size": 16, "hidden": 12, "width": 4, "stages": 2}, 12),
    ({"arch": "resnet18", "width": 4, "num_outputs": 3}, 32),
    ({"arch": "oracle", "image_size": 16, "width": 4, "stages": 2, "hidden": 10}, 10),
])
def test_predictor_features_are_the_penultimate_layer(config, dim):
  net = build(config)
  x = np.random.default_rng(0).random((3, 16, 16, 3), dtype=np.float32)
  f = registry.make_apply(config, "features")(net.params, x)
  assert f.shape == (3, dim)
  head = net.params.get("out", net.params.get("heads"))
  logits = np.asarray(f) @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
  out = np.asarray(net.apply(net.params, x))
  np.testing.assert_allclose(out.reshape(3, -1), logits, rtol=1e-4, atol=1e-5)


def test_testbed_extractor_fid_of_a_set_with_itself_is_zero():
  f = feature_extractor("squares")
  assert isinstance(f, FeatureExtractor) and f.dim == 64 and f.image_size == 32
  x = np.random.default_rng(0).random((24, 32, 32, 3), dtype=np.float32)
  batches = [{"original": x[i:i + 8], "counterfactual": x[i:i + 8]} for i in range(0, 24, 8)]
  assert abs(compute(fid(f), batches)["fid"]) < 1e-6
  shifted = [{"original": b["original"], "counterfactual": b["counterfactual"] * 0.5} for b in batches]
  assert compute(fid(f), shifted)["fid"] > 1e-3


def test_features_compile_once():
  f = feature_extractor("shapes")
  x = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
  for _ in range(3):
    f(x)
  compute(fid(f), [{"original": x, "counterfactual": x}, {"original": x, "counterfactual": x}])
  assert f._compiled._cache_size() == 1


def test_features_check_inputs_at_the_edge():
  f = feature_extractor("squares")
  with pytest.raises(CfjaxInputError, match="feature inputs"):
    f(np.zeros((2, 16, 16, 3), np.float32))
  with pytest.raises(CfjaxInputError):
    f(np.full((2, 32, 32, 3), 2.0, np.float32))


@pytest.mark.parametrize("module", ["cfjax.metrics.features", "cfjax.nets.inception",
                                    "cfjax.nets.inception_import"])
def test_docstring_examples_run(module):
  import doctest
  import importlib
  result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
  assert result.failed == 0 and result.attempted > 0


def _fids(name, reference, *others):
  from cfjax.metrics.realism import fid_from_features
  f = feature_extractor(name)
  ref = np.asarray(f(reference), np.float64)
  return [fid_from_features(ref, np.asarray(f(o), np.float64)) for o in others]


def test_squares_features_see_the_background_where_the_regressor_does_not():
  """The bundled squares feature network (every factor) against the rho = 0 regressor's features
  (color_a only): a background shifted by 64 grey levels is far from fresh pixel noise for the
  first (about 470x on 1024 squares, benchmarks/feature_sensitivity.py) and not for the second."""
  import importlib
  sq = importlib.import_module("cfjax.data.squares")
  n = 256
  f = sq.factors(n, image_size=32, split="test")
  rng = np.random.default_rng(0)
  noise = [rng.normal(0, sq.NOISE_STD, (n, 32, 32, 3)).astype(np.float32) for _ in range(2)]

  def render(factors, z):
    return sq.render(factors["color_a"], factors["color_b"], factors["x"], factors["y"], z, 32).astype(
        np.float32) / 255

  x = render(f, noise[0])
  fresh = render(f, noise[1])
  background = render({**f, "color_b": np.minimum(f["color_b"] + 64, 255)}, noise[0])
  colour = render({**f, "color_a": np.minimum(f["color_a"] + 64, 255)}, noise[0])
  noise_fid, bg_fid, colour_fid = _fids("squares", x, fresh, background, colour)
  assert bg_fid > 50 * noise_fid and colour_fid > 50 * noise_fid, (noise_fid, bg_fid, colour_fid)
  noise_fid, bg_fid, colour_fid = _fids("squares_regressor_rho0", x, fresh, background, colour)
  assert bg_fid < 0.05 * colour_fid, (noise_fid, bg_fid, colour_fid)


def test_shapes_features_see_the_background():
  import importlib
  from cfjax import data
  sh = importlib.import_module("cfjax.data.shapes")
  it = iter(data.load("shapes", split="test", batch_size=256, shuffle=False, image_size=32))
  b, other = next(it), next(it)
  mask = b["mask"].reshape(b["mask"].shape[:3])[..., None]
  new_bg = sh.PALETTE[(b["background"] + 1) % len(sh.PALETTE)][:, None, None]
  moved = np.clip(b["image"] - sh.PALETTE[b["background"]][:, None, None] + new_bg, 0, 1)
  changed = np.where(mask, b["image"], moved).astype(np.float32)
  sample_fid, bg_fid = _fids("shapes", b["image"], other["image"], changed)
  assert bg_fid > 5 * sample_fid, (sample_fid, bg_fid)
