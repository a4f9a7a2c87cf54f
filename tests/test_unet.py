"""The ADM UNet and the guided-diffusion importer against the official PyTorch numbers."""

import pickle

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax import CfjaxInputError
from cfjax.nets import build, timestep_embedding, torch_import, unet_config

import torch  # the test extra installs it


def nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


def test_timestep_embedding_matches_fixture(fixtures_dir):
  d = np.load(fixtures_dir / "unet_small.npz")
  emb = timestep_embedding(jnp.asarray(d["t"]), 32)
  np.testing.assert_allclose(np.asarray(emb), d["temb"], atol=1e-4)


def test_small_unet_output_and_activations(fixtures_dir, unet_small):
  d = np.load(fixtures_dir / "unet_small.npz")
  fwd = jax.jit(lambda p, x, t: unet_small.apply(p, x, t, return_activations=True))
  out, acts = fwd(unet_small.params, jnp.asarray(nhwc(d["x"])), jnp.asarray(d["t"]))
  chex.assert_shape(out, (3, 32, 32, 6))
  np.testing.assert_allclose(np.asarray(out), nhwc(d["out"]), atol=1e-4)
  i = int(d["act_example_index"])
  keys = [k for k in d.files if k.startswith("act__")]
  assert len(keys) == 13
  for k in keys:
    np.testing.assert_allclose(np.asarray(acts[k[5:]][i]), d[k][0].transpose(1, 2, 0), atol=1e-4,
                               err_msg=k)


def test_headch_unet_output(fixtures_dir):
  cfg = unet_config("small32_headch")
  net = torch_import.load_guided_diffusion(fixtures_dir / "model_small_headch.npz", cfg)
  d = np.load(fixtures_dir / "unet_small_headch.npz")
  out = jax.jit(net.apply)(net.params, jnp.asarray(nhwc(d["x"])), jnp.asarray(d["t"]))
  np.testing.assert_allclose(np.asarray(out), nhwc(d["out"]), atol=1e-4)


def test_pt_and_npz_import_identically(fixtures_dir, unet_small):
  net = torch_import.load_guided_diffusion(fixtures_dir / "model_small.pt", unet_config("small32"))
  chex.assert_trees_all_equal(net.params, jax.tree.map(np.asarray, unet_small.params))


@pytest.fixture(scope="module")
def state_dict(fixtures_dir):
  return torch.load(fixtures_dir / "model_small.pt", map_location="cpu", weights_only=True)


def test_renamed_key_is_named(tmp_path, state_dict):
  sd = dict(state_dict)
  sd["input_blocks.1.0.in_layers.2.weightx"] = sd.pop("input_blocks.1.0.in_layers.2.weight")
  torch.save(sd, tmp_path / "bad.pt")
  with pytest.raises(CfjaxInputError) as e:
    torch_import.load_guided_diffusion(tmp_path / "bad.pt", unet_config("small32"))
  msg = str(e.value)
  assert "input_blocks.1.0.in_layers.2.weightx" in msg
  assert "missing key for input_blocks/1/layers/0/in_conv/kernel" in msg


def test_wrong_shape_is_named(tmp_path, state_dict):
  sd = dict(state_dict)
  sd["out.2.weight"] = torch.zeros(6, 32, 5, 5)
  torch.save(sd, tmp_path / "bad.pt")
  with pytest.raises(CfjaxInputError, match=r"'out.2.weight': shape \(6, 32, 5, 5\)"):
    torch_import.load_guided_diffusion(tmp_path / "bad.pt", unet_config("small32"))


def test_wrong_config_lists_problems(fixtures_dir):
  with pytest.raises(CfjaxInputError, match="problems"):
    torch_import.load_guided_diffusion(fixtures_dir / "model_small.npz", unet_config("small32_headch"))


class _Evil:
  def __reduce__(self):
    return (print, ("this must never run",))


def test_arbitrary_pickle_is_refused(tmp_path, capsys):
  with open(tmp_path / "evil.pt", "wb") as f:
    pickle.dump({"x": _Evil()}, f)
  torch.save({"model": {"a": torch.zeros(2)}, "step": 3}, tmp_path / "nested.pt")
  with pytest.raises(CfjaxInputError, match="never unpickles"):
    torch_import.read_state_dict(tmp_path / "evil.pt")
  assert "this must never run" not in capsys.readouterr().out
  with pytest.raises(CfjaxInputError, match="not a tensor"):
    torch_import.read_state_dict(tmp_path / "nested.pt")
  np.savez(tmp_path / "obj.npz", a=np.array([{"a": 1}], dtype=object))
  with pytest.raises(CfjaxInputError, match="refusing to unpickle"):
    torch_import.read_state_dict(tmp_path / "obj.npz")


def test_truncated_pt_is_reported(tmp_path, fixtures_dir):
  data = (fixtures_dir / "model_small.pt").read_bytes()
  (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
  with pytest.raises(CfjaxInputError, match="cannot be loaded"):
    torch_import.read_state_dict(tmp_path / "trunc.pt")


def test_bfloat16_compute_close_to_float32(fixtures_dir, unet_small):
  cfg = dict(unet_small.config, dtype="bfloat16")
  net16 = build(cfg, params=unet_small.params)
  d = np.load(fixtures_dir / "unet_small.npz")
  x, t = jnp.asarray(nhwc(d["x"])), jnp.asarray(d["t"])
  out16 = jax.jit(net16.apply)(net16.params, x, t)
  assert out16.dtype == jnp.float32
  err = float(jnp.abs(out16 - nhwc(d["out"])).max())
  assert 1e-4 < err < 0.25, err  # really computed in bfloat16, and still close


def test_class_conditional_and_dropout():
  cfg = unet_config("small32", num_classes=3, dropout=0.5, model_channels=32)
  net = build(cfg)
  # guided-diffusion zero-initialises output convs; perturb every weight so outputs depend on inputs.
  leaves, tree = jax.tree.flatten(net.params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = tree.unflatten([l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
  net = net._replace(params=params)
  x = jnp.ones((2, 32, 32, 3))
  t = jnp.array([5, 7])
  with pytest.raises(ValueError, match="class-conditional"):
    net.apply(net.params, x, t)
  a = net.apply(net.params, x, t, jnp.array([0, 1]))
  b = net.apply(net.params, x, t, jnp.array([0, 2]))
  chex.assert_trees_all_close(a[0], b[0])
  assert not np.allclose(a[1], b[1])
  # Dropout only when a key is given; different keys give different outputs.
  c = net.apply(net.params, x, t, jnp.array([0, 1]), dropout_key=jax.random.key(0))
  chex.assert_trees_all_close(net.apply(net.params, x, t, jnp.array([0, 1])), a)
  assert not np.allclose(a, c)


def test_convert_checkpoint_cli_round_trip(tmp_path, fixtures_dir, unet_small):
  from cfjax import checkpoint
  from cfjax.cli import main
  out = tmp_path / "conv"
  assert main(["convert-checkpoint", str(fixtures_dir / "model_small.pt"), "--config", "small32",
               "--out", str(out)]) == 0
  net, meta = checkpoint.load(out, expect={"arch": "adm_unet"})
  assert meta["diffusion"] == {"steps": 500, "schedule": "linear"}
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, net.params),
                              jax.tree.map(np.asarray, unet_small.params))
  # A mismatching config is refused by name, before anything is written.
  assert main(["convert-checkpoint", str(fixtures_dir / "model_small.pt"), "--config", "small32_headch",
               "--out", str(tmp_path / "bad")]) == 2
  assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("channels,offset", [(32, 0.0), (64, 0.0), (96, 50.0)])
def test_group_norm_matches_torch_and_float64(channels, offset):
  # Per-channel-sum statistics with the folded affine (with and without scale-shift) compute
  # GroupNorm(32, eps=1e-5). With a mean that dwarfs the spread (offset 50) the two-pass variance
  # stays at 5e-6 of the float64 result, where torch (1.1e-3) and nnx.GroupNorm's one-pass
  # variance (1.6e-3) drift; so torch is the reference at offset 0 only.
  from cfjax.nets.unet import group_norm
  rng = np.random.default_rng(channels)
  x = (rng.normal(size=(3, 8, 8, channels)) * rng.uniform(0.5, 3, size=channels) + offset).astype(np.float32)
  scale, bias = rng.normal(size=(2, channels)).astype(np.float32)
  s, t = rng.normal(size=(2, 3, channels)).astype(np.float32)
  g = x.astype(np.float64).reshape(3, 64, 32, channels // 32)
  mean, var = g.mean(axis=(1, 3), keepdims=True), g.var(axis=(1, 3), keepdims=True)
  ref = ((g - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * scale + bias
  out = np.asarray(group_norm(jnp.asarray(x), scale, bias))
  np.testing.assert_allclose(out, ref, atol=2e-5)
  out_ss = np.asarray(group_norm(jnp.asarray(x), scale, bias, emb_scale=s, emb_shift=t))
  np.testing.assert_allclose(out_ss, ref * (1 + s[:, None, None]) + t[:, None, None], atol=1e-4)
  if offset == 0:
    ref_torch = torch.nn.functional.group_norm(torch.from_numpy(x).permute(0, 3, 1, 2), 32,
                                               torch.from_numpy(scale), torch.from_numpy(bias), eps=1e-5)
    np.testing.assert_allclose(out, ref_torch.permute(0, 2, 3, 1).numpy(), atol=2e-5)


def test_attention_gradient_matches_autodiff():
  # The hand-written VJP (row sums of do * o) equals autodiff of the same forward pass; in
  # bfloat16 it is as close to the float32 gradient as autodiff's own bfloat16 gradient.
  from cfjax.nets.unet import attention

  def reference(q, k, v):
    w = jax.nn.softmax(jnp.einsum("bhtc,bhsc->bhts", q, k).astype(jnp.float32), axis=-1)
    return jnp.einsum("bhts,bhsc->bhtc", w.astype(v.dtype), v)

  args = [jax.random.normal(jax.random.key(i), (2, 3, 16, 8)) for i in range(4)]
  out, vjp = jax.vjp(attention, *args[:3])
  out_ref, vjp_ref = jax.vjp(reference, *args[:3])
  chex.assert_trees_all_close(out, out_ref, atol=1e-5)
  grads_f32 = vjp_ref(args[3])
  chex.assert_trees_all_close(vjp(args[3]), grads_f32, atol=1e-5)
  jax.test_util.check_grads(lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v))), args[:3],
                            order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
  low = [a.astype(jnp.bfloat16) for a in args]
  grads = jax.vjp(attention, *low[:3])[1](low[3])
  grads_autodiff = jax.vjp(reference, *low[:3])[1](low[3])
  for g, g_ad, g32 in zip(grads, grads_autodiff, grads_f32):
    assert g.dtype == jnp.bfloat16
    err, err_ad = (float(jnp.abs(a.astype(jnp.float32) - g32).max()) for a in (g, g_ad))
    assert err <= 2 * err_ad + 1e-2, (err, err_ad)
