"""The Counterfactual Attacks VAE and MNIST classifier against the official code's numbers.

Fixtures: ``shared/fixtures/cf_attacks`` (the paper's trained weights re-saved as .npz, and the
outputs of its notebook classes). Fixture images are NCHW; cfjax is NHWC. Tolerances are the
fixture README's: encoder rtol 1e-5 + atol 1e-4, decoder images atol 1e-5, logits atol 1e-4.
"""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax import checkpoint
from cfjax._validate import CfjaxInputError
from cfjax.cli import main
from cfjax.nets import cf_attacks_import as cfa
from cfjax.nets import registry
from cfjax.nets import vae as vae_mod

RAW_VAE = cfa.named_config("cf_attacks_mnist_vae", normalize=False)  # the fixture feeds x_in as is
CLF = cfa.named_config("cf_attacks_mnist_classifier")
CLF_NORM = cfa.named_config("cf_attacks_mnist_classifier", normalize=True)


def nhwc(a):
  a = np.asarray(a)
  return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


@pytest.fixture(scope="module")
def fwd(cf_attacks_dir):
  with np.load(cf_attacks_dir / "mnist_forward.npz") as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def vae(cf_attacks_dir):
  return cfa.load_cf_attacks(cf_attacks_dir / "vae_weights.npz", RAW_VAE)


@pytest.fixture(scope="module")
def clf(cf_attacks_dir):
  return cfa.load_cf_attacks(cf_attacks_dir / "classifier_weights.npz", CLF)


def _method(net, name):
  return jax.jit(registry.make_apply(net.config, name))


def test_encoder_matches_official(vae, fwd):
  mu, logvar = _method(vae, "encode")(vae.params, nhwc(fwd["x_in"]))
  chex.assert_shape((mu, logvar), (12, 64))
  np.testing.assert_allclose(mu, fwd["mu"], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(logvar, fwd["logvar"], rtol=1e-5, atol=1e-4)
  # The encoder's sample, with the fixture's replayed randn_like draw.
  z = mu + fwd["enc_eps"] * jnp.exp(logvar / 2)
  np.testing.assert_allclose(z, fwd["z"], rtol=1e-5, atol=1e-4)


def test_reparameterize_is_mu_plus_scaled_noise():
  mu, logvar = jnp.full((3, 5), 2.0), jnp.full((3, 5), np.log(4.0), jnp.float32)
  key = jax.random.key(1)
  z = vae_mod.reparameterize(mu, logvar, key)
  chex.assert_trees_all_close(z, mu + 2.0 * jax.random.normal(key, (3, 5)), atol=1e-6)


def test_decoder_matches_official(vae, fwd):
  decode = _method(vae, "decode")
  for latent, image in (("z", "x_dec_z"), ("mu", "x_dec_mu"), ("z_prior", "x_prior")):
    out = decode(vae.params, fwd[latent])
    chex.assert_shape(out, (len(fwd[latent]), 28, 28, 1))
    np.testing.assert_allclose(out, nhwc(fwd[image]), rtol=0, atol=1e-5, err_msg=image)


def test_call_is_decode_of_mean(vae, fwd):
  x = nhwc(fwd["x_in"][:4])
  recon = jax.jit(vae.apply)(vae.params, x)
  np.testing.assert_allclose(recon, nhwc(fwd["x_dec_mu"][:4]), rtol=0, atol=1e-5)


def test_normalized_encoder_takes_unit_range_images(cf_attacks_dir, fwd):
  # Rows 9-11 of x_in are the hand-drawn digits normalised once: normalize=True on the [0, 1]
  # digits is the same computation.
  net = cfa.load_cf_attacks(cf_attacks_dir / "vae_weights.npz", "cf_attacks_mnist_vae")
  mu, logvar = _method(net, "encode")(net.params, nhwc(fwd["x_hand"]))
  np.testing.assert_allclose(mu, fwd["mu"][9:12], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(logvar, fwd["logvar"][9:12], rtol=1e-5, atol=1e-4)


def test_layer_activations_match_official(vae, clf, fwd):
  enc = _method(vae, "trace_encoder")(vae.params, nhwc(fwd["x_in"][:1]))
  for i in range(6):
    name = f"encoder_conv.{i}"
    np.testing.assert_allclose(enc[name], nhwc(fwd[f"act_enc__{name}"]), rtol=1e-5, atol=1e-4, err_msg=name)
  dec = _method(vae, "trace_decoder")(vae.params, fwd["z_prior"][:1])
  np.testing.assert_allclose(dec["decoder_input"], fwd["act_dec__decoder_input"], rtol=1e-5, atol=1e-4)
  for i in range(1, 7):
    name = f"decoder_net.{i}"
    atol = 1e-5 if i == 6 else 1e-4
    np.testing.assert_allclose(dec[name], nhwc(fwd[f"act_dec__{name}"]), rtol=1e-5, atol=atol, err_msg=name)
  trace = _method(clf, "trace")(clf.params, nhwc(fwd["x_in"][:1]))
  for i in range(10):
    name = f"network.{i}"
    np.testing.assert_allclose(trace[name], nhwc(fwd[f"act_clf__{name}"]), rtol=1e-5, atol=1e-4, err_msg=name)


def test_classifier_logits_match_official(cf_attacks_dir, clf, fwd):
  x = nhwc(fwd["x_in"])
  logits = jax.jit(clf.apply)(clf.params, x)
  chex.assert_shape(logits, (12, 10))
  np.testing.assert_allclose(logits, fwd["clf_logits"], rtol=0, atol=1e-4)
  np.testing.assert_allclose(jax.nn.softmax(logits), fwd["clf_probs"], rtol=0, atol=1e-5)
  norm = cfa.load_cf_attacks(cf_attacks_dir / "classifier_weights.npz", CLF_NORM)
  np.testing.assert_allclose(jax.jit(norm.apply)(norm.params, x), fwd["clf_logits_norm"], rtol=0, atol=1e-4)
  # The hand-drawn digits (rows 6-8), normalised as in training, are read as 0, 1, 7.
  assert np.argmax(fwd["clf_logits_norm"][6:9], -1).tolist() == [0, 1, 7]


def _npz_state(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def test_import_from_pth_weights_only(cf_attacks_dir, tmp_path, vae, clf):
  torch = pytest.importorskip("torch")
  for name, ref, config in (("vae_weights", vae, RAW_VAE), ("classifier_weights", clf, CLF)):
    sd = {k: torch.from_numpy(v) for k, v in _npz_state(cf_attacks_dir / f"{name}.npz").items()}
    path = tmp_path / f"{name}.pth"
    torch.save(sd, path)
    net = cfa.load_cf_attacks(path, config)
    chex.assert_trees_all_equal(net.params, ref.params)


def test_pth_holding_objects_is_refused(tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / "model.pth"
  torch.save({"net": torch.nn.Linear(2, 2)}, path)  # a pickled module, not a state dict
  with pytest.raises(CfjaxInputError, match="weights_only"):
    cfa.load_cf_attacks(path, CLF)


@pytest.mark.parametrize("change, message", [
    ("missing", "missing key 'fc_mu.bias'"),
    ("extra", "unexpected key 'encoder_conv.6.weight'"),
    ("shape", "'decoder_net.5.weight': shape \\(16, 3, 2, 2\\), expected \\(16, 1, 2, 2\\)"),
])
def test_import_names_bad_keys(cf_attacks_dir, tmp_path, change, message):
  sd = _npz_state(cf_attacks_dir / "vae_weights.npz")
  if change == "missing":
    del sd["fc_mu.bias"]
  elif change == "extra":
    sd["encoder_conv.6.weight"] = np.zeros((3, 3), np.float32)
  else:
    sd["decoder_net.5.weight"] = np.zeros((16, 3, 2, 2), np.float32)
  path = tmp_path / "bad.npz"
  np.savez(path, **sd)
  with pytest.raises(CfjaxInputError, match=message):
    cfa.load_cf_attacks(path, RAW_VAE)


def test_import_errors_before_anything_else(cf_attacks_dir, tmp_path):
  with pytest.raises(CfjaxInputError, match="does not exist"):
    cfa.load_cf_attacks(tmp_path / "nope.pth", CLF)
  with pytest.raises(CfjaxInputError, match="unknown Counterfactual Attacks config"):
    cfa.load_cf_attacks(cf_attacks_dir / "vae_weights.npz", "cf_attacks_mnist_vea")
  # The classifier's weights are not the VAE's: every key is named.
  with pytest.raises(CfjaxInputError, match="unexpected key 'network.0.weight'"):
    cfa.load_cf_attacks(cf_attacks_dir / "classifier_weights.npz", RAW_VAE)


def test_bad_options_are_reported():
  with pytest.raises(CfjaxInputError, match="image_size must be one of"):
    registry.build({"arch": "cf_vae", "image_size": 64})
  with pytest.raises(CfjaxInputError, match="channels must be 1 or 3"):
    registry.build({"arch": "cf_mnist_cnn", "channels": 2})


def test_rgb32_transposed_convolutions_match_torch():
  torch = pytest.importorskip("torch")
  cfg = {"arch": "cf_vae", "image_size": 32, "channels": 3, "latent_dim": 8}
  net = registry.build(cfg, seed=4)
  z = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
  out = _method(net, "trace_decoder")(net.params, z)
  p = jax.tree.map(lambda a: torch.from_numpy(np.array(a)), net.params)
  h = torch.from_numpy(z) @ p["decoder_input"]["kernel"] + p["decoder_input"]["bias"]
  h = h.reshape(2, 64, 4, 4)
  for i, (pad, opad) in enumerate(((1, 1), (1, 1), (0, 0))):
    w = p["decoder_net"][i]["kernel"].permute(2, 3, 0, 1)  # (kh, kw, in, out) -> torch (in, out, kh, kw)
    h = torch.nn.functional.conv_transpose2d(h, w, p["decoder_net"][i]["bias"], stride=2, padding=pad,
                                             output_padding=opad)
    np.testing.assert_allclose(out[f"decoder_net.{2 * i + 1}"], h.numpy().transpose(0, 2, 3, 1), atol=1e-5)
    h = torch.sigmoid(h) if i == 2 else torch.nn.functional.leaky_relu(h, 0.2)
  chex.assert_shape(out["decoder_net.6"], (2, 32, 32, 3))
  mu, logvar = _method(net, "encode")(net.params, jnp.full((2, 32, 32, 3), 0.5))
  chex.assert_shape((mu, logvar), (2, 8))
  clf = registry.build({"arch": "cf_mnist_cnn", "image_size": 32, "channels": 3, "num_classes": 4})
  chex.assert_shape(clf.apply(clf.params, jnp.zeros((2, 32, 32, 3))), (2, 4))


@pytest.mark.parametrize("name, weights", [("cf_attacks_mnist_vae", "vae_weights"),
                                           ("cf_attacks_mnist_classifier", "classifier_weights")])
def test_convert_checkpoint_round_trip(cf_attacks_dir, tmp_path, fwd, name, weights):
  out = tmp_path / name
  assert main(["convert-checkpoint", str(cf_attacks_dir / f"{weights}.npz"), "--config", name,
               "--out", str(out)]) == 0
  net, meta = checkpoint.load(out)
  ref = cfa.load_cf_attacks(cf_attacks_dir / f"{weights}.npz", name)
  assert net.config == ref.config
  chex.assert_trees_all_equal(net.params, ref.params)
  assert meta["named_config"] == name and len(meta["source_sha256"]) == 64
  if name == "cf_attacks_mnist_vae":
    assert {k: meta[k] for k in ("kind", "generator", "image_size", "channels", "latent_dim")} == {
        "kind": "generator", "generator": "vae", "image_size": 28, "channels": 1, "latent_dim": 64}
    assert meta["input_normalization"] == {"mean": 0.1307, "std": 0.3081}
    decode = _method(net, "decode")
    np.testing.assert_allclose(decode(net.params, fwd["z_prior"]), nhwc(fwd["x_prior"]), atol=1e-5)
  else:
    assert {k: meta[k] for k in ("kind", "task", "num_classes", "image_size")} == {
        "kind": "predictor", "task": "classification", "num_classes": 10, "image_size": 28}
    np.testing.assert_allclose(net.apply(net.params, nhwc(fwd["x_in"])), fwd["clf_logits"], atol=1e-4)
  json.dumps(meta)


def test_convert_checkpoint_refuses_diffusion_options(cf_attacks_dir, tmp_path, capsys):
  assert main(["convert-checkpoint", str(cf_attacks_dir / "vae_weights.npz"), "--config",
               "cf_attacks_mnist_vae", "--steps", "1000", "--out", str(tmp_path / "x")]) == 2
  assert "--steps and --schedule" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()
