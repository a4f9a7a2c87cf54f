"""Import of official Diff-AE weights: .npz state dicts, the Lightning .ckpt container, errors, CLI."""

import argparse
import json

import jax
import numpy as np
import pytest

from cfjax._validate import CfjaxInputError
from cfjax.generators import diffae as gdiffae  # noqa: F401  (registers the "diffae" generator)
from cfjax.nets import diffae_configs, diffae_import
from diffae_fixtures import *  # noqa: F401,F403
from diffae_fixtures import load_npz


def _leaves(params):
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(params)}


def _assert_same(a, b):
  la, lb = _leaves(a), _leaves(b)
  assert la.keys() == lb.keys()
  for k in la:
    np.testing.assert_array_equal(la[k], lb[k], err_msg=k)


@pytest.mark.parametrize("name", ["a32", "b64", "t32"])
def test_key_map_is_the_state_dict(diffae_dir, name):
  """Every torch key of the fixture's state dict, with its shape; the named template
  config builds the same network as the fixture's resolved config."""
  spec = json.loads((diffae_dir / f"config_{name}.json").read_text())
  cfg = diffae_configs.config_from_train_config(spec)
  keymap = diffae_import.torch_key_map(cfg)
  assert {k: list(s) for k, (_, s) in keymap.items()} == spec["state_dict"]
  n = sum(int(np.prod(s)) for _, s in keymap.values())
  assert n == spec["num_parameters"]
  tc = spec["train_config"]
  template = dict(spec["template_overrides"], net_enc_num_res_blocks=tc["net_enc_num_res_blocks"],
                  net_num_res_blocks=tc["net_num_res_blocks"])
  assert diffae_configs.config_from_train_config(
      diffae_configs.train_config("ffhq128_autoenc_130M", **template)) == cfg


def test_tiny32_is_the_t32_fixture(diffae_dir):
  spec = json.loads((diffae_dir / "config_t32.json").read_text())
  assert diffae_configs.diffae_config("tiny32") == diffae_configs.config_from_train_config(spec)


def test_lightning_ckpt_ema_and_model(diffae_dir, diffae_net):
  pytest.importorskip("torch")
  ref, ref_info = diffae_net("t32")
  net, info = diffae_import.load_diffae(diffae_dir / "ckpt_t32.ckpt")  # config from hyper_parameters
  assert net.config == ref.config
  assert info["diffusion"] == {"steps": 1000, "schedule": "linear", "T_eval": 20, "variance": "fixed_large"}
  _assert_same(net.params, ref.params)
  raw, _ = diffae_import.load_diffae(diffae_dir / "ckpt_t32.ckpt", "tiny32", weights="model")
  diff = [k for k, v in _leaves(raw.params).items() if not np.array_equal(v, _leaves(ref.params)[k])]
  assert len(diff) == len(_leaves(ref.params))  # every tensor of the non-EMA copy differs


def test_npz_of_a_lightning_state_dict(diffae_dir, tmp_path):
  torch = pytest.importorskip("torch")
  sd = torch.load(diffae_dir / "ckpt_t32.ckpt", map_location="cpu", weights_only=True)["state_dict"]
  path = tmp_path / "sd.npz"
  np.savez(path, **{k: v.numpy() for k, v in sd.items()}, **{"ema_model.latent_net.0.weight": np.ones(2)})
  for weights in ("ema", "model"):
    a, _ = diffae_import.load_diffae(path, "tiny32", weights=weights)
    b, _ = diffae_import.load_diffae(diffae_dir / "ckpt_t32.ckpt", "tiny32", weights=weights)
    _assert_same(a.params, b.params)


def _state(diffae_dir):
  return load_npz(diffae_dir / "model_t32.npz")


def test_errors_name_the_key(diffae_dir):
  cfg = diffae_configs.diffae_config("tiny32")
  sd = _state(diffae_dir)
  missing = dict(sd)
  del missing["encoder.out.3.weight"]
  with pytest.raises(CfjaxInputError, match=r"missing key 'encoder.out.3.weight' \(32, 16, 1, 1\)"):
    diffae_import.convert_state_dict(missing, cfg)
  with pytest.raises(CfjaxInputError, match="unexpected key 'input_blocks.9.0.weight'"):
    diffae_import.convert_state_dict({**sd, "input_blocks.9.0.weight": np.zeros((3, 3))}, cfg)
  bad = {**sd, "time_embed.time_embed.0.weight": np.zeros((32, 15), np.float32)}
  with pytest.raises(CfjaxInputError,
                     match=r"'time_embed.time_embed.0.weight': shape \(32, 15\), expected \(32, 16\)"):
    diffae_import.convert_state_dict(bad, cfg)
  # A state dict of another size does not fit: every mismatch is listed.
  with pytest.raises(CfjaxInputError, match="problems"):
    diffae_import.load_diffae(diffae_dir / "model_a32.npz", "tiny32")


def test_errors_config_and_file(diffae_dir, tmp_path):
  with pytest.raises(CfjaxInputError, match="unknown Diff-AE config 'ffhq128'.*ffhq128_autoenc"):
    diffae_import.load_diffae(diffae_dir / "model_t32.npz", "ffhq128")
  with pytest.raises(CfjaxInputError, match="net_enc_pool='depthconv' is not supported"):
    diffae_configs.config_from_train_config(diffae_configs.train_config("tiny32", net_enc_pool="depthconv"))
  with pytest.raises(CfjaxInputError, match="records none"):
    diffae_import.load_diffae(diffae_dir / "model_t32.npz")
  with pytest.raises(CfjaxInputError, match="does not exist"):
    diffae_import.load_diffae(tmp_path / "nope.ckpt", "tiny32")
  with pytest.raises(CfjaxInputError, match="weights"):
    diffae_import.load_diffae(diffae_dir / "model_t32.npz", "tiny32", weights="best")


def test_unsafe_or_foreign_ckpt_is_refused(tmp_path):
  torch = pytest.importorskip("torch")
  torch.save({"epoch": 1, "weights": torch.zeros(2)}, tmp_path / "plain.ckpt")
  with pytest.raises(CfjaxInputError, match="no 'state_dict'"):
    diffae_import.load_diffae(tmp_path / "plain.ckpt", "tiny32")
  torch.save({"state_dict": {}, "obj": argparse.Namespace(a=1)}, tmp_path / "pickled.ckpt")
  with pytest.raises(CfjaxInputError, match="weights_only=True"):
    diffae_import.load_diffae(tmp_path / "pickled.ckpt", "tiny32")


def test_convert_checkpoint_cli_and_load_generator(diffae_dir, diffae_net, tmp_path):
  pytest.importorskip("torch")
  import cfjax.generators as generators
  from cfjax.cli import main
  ckpt = str(diffae_dir / "ckpt_t32.ckpt")
  assert main(["convert-checkpoint", ckpt, "--config", "diffae", "--out", str(tmp_path / "ema")]) == 0
  g = generators.load_generator(tmp_path / "ema", encode_steps=2, decode_steps=3)
  ref, _ = diffae_net("t32")
  _assert_same(g.params, ref.params)
  assert g.latent_shape == (32 + 32 * 32 * 3,) and g.image_shape == (32, 32, 3)
  assert g.meta["generator"] == "diffae" and g.meta["diffusion"]["T_eval"] == 20
  assert (g.meta["encode_steps"], g.meta["decode_steps"]) == (2, 3)
  assert main(["convert-checkpoint", ckpt, "--config", "tiny32", "--weights", "model",
               "--out", str(tmp_path / "raw")]) == 0
  raw, _ = diffae_import.load_diffae(ckpt, "tiny32", weights="model")
  _assert_same(generators.load_generator(tmp_path / "raw").params, raw.params)
  # Options of other formats and mismatching configs are refused before anything is written.
  assert main(["convert-checkpoint", ckpt, "--config", "diffae", "--steps", "500",
               "--out", str(tmp_path / "bad")]) == 2
  assert main(["convert-checkpoint", ckpt, "--config", "ffhq64_autoenc", "--out", str(tmp_path / "bad")]) == 2
  assert not (tmp_path / "bad").exists()
