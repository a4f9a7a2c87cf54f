"""Diff-AE against the numbers of the original PyTorch code (shared/fixtures/diffae).

Tolerances are the fixtures README's suggestions for a float32 port, about ten times the error of
a float64 recomputation of the original: 1e-4 for encoder outputs, embeddings, UNet outputs,
activations and single DDIM / DDPM steps; ``1e-4 * sqrt(1 / abar_t)`` for a predicted x0; 5e-4 for
the 20-step render and the 10-step stochastic encoding; 2e-3 for the encode-render round trip;
rtol 1e-12 for the float64 schedule tables. Measured errors are 10-100x below them.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax import diffusion as dd
from cfjax.generators import diffae as gdiffae
from cfjax.nets import registry
from cfjax.nets.unet import timestep_embedding
from diffae_fixtures import *  # noqa: F401,F403
from diffae_fixtures import load_npz, nchw, nhwc

ATOL = 1e-4


def _close(got, want, atol=ATOL, rtol=0.0, what=""):
  np.testing.assert_allclose(np.asarray(got), want, atol=atol, rtol=rtol, err_msg=what)


def _everything(config):
  """One jitted function computing every quantity of forward_<name>.npz."""
  enc = registry.make_apply(config, "encode")
  unet = registry.make_apply(config)
  embed = registry.make_apply(config, "embed")
  style = registry.make_apply(config, "stylespace")

  @jax.jit
  def run(params, x0, x_t, t, z_sem):
    z, enc_acts = enc(params, x0, return_activations=True)
    pred, acts = unet(params, x_t, t, z_sem, return_activations=True)
    return dict(z=z, pred=pred, acts={**acts, **enc_acts}, emb=embed(params, t),
                style=style(params, z_sem))

  return run


@pytest.mark.parametrize("name", ["a32", "b64", "t32"])
def test_forward_matches_original(diffae_net, diffae_dir, name):
  net, _ = diffae_net(name)
  f = load_npz(diffae_dir / f"forward_{name}.npz")
  t = jnp.asarray(f["t"], jnp.int32)
  out = _everything(net.config)(net.params, nhwc(f["x0"]), nhwc(f["x_t"]), t, jnp.asarray(f["z_sem"]))
  _close(timestep_embedding(t, net.config["model_channels"]), f["temb"], what="temb")
  _close(out["z"], f["z_sem"], what="z_sem")
  _close(nchw(out["acts"]["encoder.middle_block"]), f["enc_h2d"], what="enc_h2d")
  _close(out["emb"], f["emb"], what="emb")
  _close(out["style"], f["stylespace"], what="stylespace")
  _close(nchw(out["pred"]), f["pred"], what="pred")
  blocks = [k[len("act__"):-len("__mean")] for k in f if k.startswith("act__") and k.endswith("__mean")]
  assert len(blocks) == (0 if name == "t32" else len(out["acts"]))
  for b in blocks:
    a = np.asarray(out["acts"][b])
    _close(a.mean(axis=(1, 2)), f[f"act__{b}__mean"], what=b)
    _close(nchw(a[:, :4, :4, :4]), f[f"act__{b}__win"], what=b)


@pytest.mark.parametrize("steps", [10, 20, 100, 250, 1000])
def test_schedules_match_diffae_respacing(diffae_dir, steps):
  s = load_npz(diffae_dir / "schedules.npz")
  np.testing.assert_array_equal(dd.get_named_beta_schedule("linear", 1000), s["base_betas"])
  ours = dd.make_schedule_np(1000, "linear", f"ddim{steps}")
  np.testing.assert_array_equal(ours.timestep_map, s[f"ddim{steps}__timestep_map"])
  np.testing.assert_array_equal(sorted(dd.space_timesteps(1000, f"ddim{steps}")),
                                s[f"ddim{steps}__timestep_map"])
  for field in ours._fields:
    if field in ("timestep_map", "log_betas"):
      continue
    np.testing.assert_allclose(getattr(ours, field), s[f"ddim{steps}__{field}"], rtol=1e-12, atol=0,
                               err_msg=field)
  np.testing.assert_array_equal(np.asarray(gdiffae.diffae_schedule(steps).timestep_map),
                                s[f"ddim{steps}__timestep_map"])


def test_single_steps_match_original(diffae_net, diffae_dir):
  """steps_a32.npz on the ddim20 sampler: p_mean_variance (fixed_large), DDIM, inversion, p_sample."""
  net, _ = diffae_net("a32")
  f = load_npz(diffae_dir / "steps_a32.npz")
  sched = gdiffae.diffae_schedule(20)
  t = jnp.asarray(f["t"], jnp.int32)
  np.testing.assert_array_equal(np.asarray(sched.timestep_map)[f["t"]], f["t_model"])
  x_t = nhwc(f["x_t"])
  z = jax.jit(registry.make_apply(net.config, "encode"))(net.params, nhwc(f["x_img"]))
  _close(z, f["cond"], what="cond")
  eps = jax.jit(net.apply)(net.params, x_t, jnp.asarray(f["t_model"], jnp.int32), jnp.asarray(f["cond"]))
  _close(nchw(eps), f["eps"], what="eps")

  def model(x, t_model):  # the recorded UNet output, so that only the step arithmetic is tested
    np.testing.assert_array_equal(np.asarray(t_model), f["t_model"])
    return nhwc(f["eps"])

  x0_tol = ATOL * np.asarray(sched.sqrt_recip_alphas_cumprod)[f["t"]].max()
  out = dd.p_mean_variance(sched, model, x_t, t, clip_denoised=True, variance="fixed_large")
  _close(nchw(out.mean), f["mean"], what="mean")
  _close(np.broadcast_to(nchw(out.variance), f["variance"].shape), f["variance"], rtol=1e-6, what="var")
  _close(np.broadcast_to(nchw(out.log_variance), f["log_variance"].shape), f["log_variance"], rtol=1e-6)
  _close(nchw(out.pred_xstart), f["pred_xstart"], atol=x0_tol, what="pred_xstart")
  out = dd.p_mean_variance(sched, model, x_t, t, clip_denoised=False, variance="fixed_large")
  _close(nchw(out.mean), f["noclip_mean"], what="noclip_mean")
  _close(nchw(out.pred_xstart), f["noclip_pred_xstart"], atol=x0_tol, rtol=1e-6, what="noclip x0")
  _close(nchw(dd.ddim_step(sched, model, x_t, t).sample), f["ddim_sample"], what="ddim_sample")
  _close(nchw(dd.ddim_reverse_step(sched, model, x_t, t).sample), f["ddim_reverse_sample"],
         rtol=1e-5, what="ddim_reverse_sample")
  p = dd.ddpm_step(sched, model, x_t, t, nhwc(f["p_sample_noise"]), variance="fixed_large")
  _close(nchw(p.sample), f["p_sample"], what="p_sample")


@pytest.fixture(scope="module")
def ddim_a32(diffae_dir):
  return load_npz(diffae_dir / "ddim_a32.npz")


def _model(net, params, z_sem):
  return lambda x, t: net.apply(params, x, t, z_sem)


def test_render_trajectory(diffae_net, ddim_a32):
  """LitModel.render(x_T, z_sem, T=20): every DDIM state of example 0, the sample and the image."""
  net, _ = diffae_net("a32")
  f = ddim_a32
  sched = gdiffae.diffae_schedule(int(f["render_T"]))
  np.testing.assert_array_equal(np.asarray(sched.timestep_map)[::-1], f["render__t_model"])
  run = jax.jit(lambda p, x, z: dd.ddim_sample_loop(sched, _model(net, p, z), x, mode="rolled",
                                                    return_traj=True))
  x, traj = run(net.params, nhwc(f["render__x_T"]), jnp.asarray(f["z_sem"]))
  chex.assert_shape(traj, (21, 2, 32, 32, 3))
  _close(nchw(traj[:, 0]), f["render__traj_ex0"], atol=5e-4, what="trajectory")
  _close(nchw(x), f["render__sample"], atol=5e-4, what="sample")
  _close(nchw((x + 1) / 2), f["render__image01"], atol=5e-4, what="image01")


def test_encode_stochastic_trajectory(diffae_net, ddim_a32):
  """LitModel.encode_stochastic(x0, z_sem, T=10): DDIM inversion with clipped x0, every state."""
  net, _ = diffae_net("a32")
  f = ddim_a32
  sched = gdiffae.diffae_schedule(int(f["encode_T"]))
  np.testing.assert_array_equal(np.asarray(sched.timestep_map), f["encode__t_model"])
  run = jax.jit(lambda p, x, z: dd.ddim_invert(sched, _model(net, p, z), x, mode="rolled",
                                               return_traj=True))
  x_T, traj = run(net.params, nhwc(f["x0"]), jnp.asarray(f["z_sem"]))
  _close(nchw(traj[:, 0]), f["encode__traj_ex0"], atol=5e-4, what="trajectory")
  _close(nchw(x_T), f["encode__xT"], atol=5e-4, what="x_T")


def test_plain_functions_round_trip(diffae_net, ddim_a32):
  """semantic_encode -> stochastic_encode (T=10) -> render (T=10), as the autoencoding notebook."""
  net, info = diffae_net("a32")
  f = ddim_a32
  m = gdiffae.diffae_model(net, info["diffusion"])
  x01 = (nhwc(f["x0"]) + 1) / 2

  @jax.jit
  def round_trip(params, x, x_T_given, z_given):
    z = m.semantic_encode(params, x)
    x_T = m.stochastic_encode(params, x, z, 10, mode="rolled")
    return z, x_T, m.render(params, x_T, z, 10, mode="rolled"), m.render(params, x_T_given, z_given, 10)

  z, x_T, image, image_given = round_trip(m.params, x01, nhwc(f["encode__xT"]), jnp.asarray(f["z_sem"]))
  _close(z, f["z_sem"], what="z_sem")
  _close(nchw(x_T), f["encode__xT"], atol=5e-4, what="x_T")
  # Rendering the original's x_T (measured 6.8e-5) is as precise as the 20-step render.
  _close(nchw(image_given), f["recon__image01"], atol=5e-4, what="render of the original x_T")
  # The whole round trip carries the x_T error (4e-5) through a render that amplifies it: with
  # these random weights, 1e-5 of noise on x_T moves the image by 2.7e-3. Measured 1.4e-3.
  _close(nchw(image), f["recon__image01"], atol=5e-3, what="reconstruction")


def test_rolled_and_unrolled_render_agree_with_gradients(diffae_net, diffae_dir):
  net, info = diffae_net("t32")
  m = gdiffae.diffae_model(net, info["diffusion"])
  f = load_npz(diffae_dir / "forward_t32.npz")
  x_T, z = nhwc(f["x_t"]), jnp.asarray(f["z_sem"])
  w = jax.random.normal(jax.random.key(0), x_T.shape, jnp.float32)

  def loss(z_sem, mode):
    return jnp.sum(w * m.render(m.params, x_T, z_sem, 3, mode=mode))

  results = {mode: jax.jit(jax.value_and_grad(lambda zz: loss(zz, mode)))(z) for mode in dd.MODES}
  (v_u, g_u), (v_r, g_r) = results["unrolled"], results["rolled"]
  np.testing.assert_allclose(float(v_r), float(v_u), rtol=1e-5)
  assert float(jnp.abs(g_u).max()) > 0
  np.testing.assert_allclose(np.asarray(g_r), np.asarray(g_u), rtol=1e-4,
                             atol=1e-5 * float(jnp.abs(g_u).max()))


def test_generator_round_trip_and_single_compile(diffae_net):
  net, info = diffae_net("t32")
  g = gdiffae.diffae_generator(net, {"diffusion": info["diffusion"]}, encode_steps=2, decode_steps=2)
  style_ch = net.config["enc_out_channels"]
  assert g.latent_shape == (style_ch + 32 * 32 * 3,) and g.image_shape == (32, 32, 3)
  traces = {"enc": 0, "dec": 0}

  def enc(p, x, keys):
    traces["enc"] += 1
    return jax.vmap(lambda xi, k: g.encode(p, xi, k))(x, keys)

  def dec(p, z, keys):
    traces["dec"] += 1
    return jax.vmap(lambda zi, k: g.decode(p, zi, k))(z, keys)

  enc_j, dec_j = jax.jit(enc), jax.jit(dec)
  for seed in (0, 1):
    x = jax.random.uniform(jax.random.key(seed), (2, 32, 32, 3), jnp.float32)
    keys = jax.random.split(jax.random.key(seed), 2)
    z = enc_j(g.params, x, keys)
    g.check_latents(z)
    z_sem, x_T = gdiffae.split_latent(z[0], style_ch, g.image_shape)
    np.testing.assert_array_equal(np.asarray(gdiffae.join_latent(z_sem, x_T)), np.asarray(z[0]))
    y = dec_j(g.params, z, keys)
    chex.assert_shape(y, (2, 32, 32, 3))
    assert bool(jnp.all(jnp.isfinite(y))) and float(y.min()) >= 0 and float(y.max()) <= 1
  assert traces == {"enc": 1, "dec": 1}
  # One example (HWC) and a batch give the same z_sem.
  m = gdiffae.diffae_model(net)
  np.testing.assert_allclose(np.asarray(m.semantic_encode(g.params, x[0])),
                             np.asarray(m.semantic_encode(g.params, x))[0], atol=1e-6)


def test_bad_steps_and_mode(diffae_net):
  from cfjax._validate import CfjaxInputError
  net, _ = diffae_net("t32")
  with pytest.raises(CfjaxInputError, match="steps"):
    gdiffae.diffae_generator(net, {}, decode_steps=0)
  with pytest.raises(CfjaxInputError, match="chain mode"):
    gdiffae.diffae_generator(net, {}, mode="scan")


def _to_torch_layout(v, torch_shape):
  v = np.asarray(v)
  if len(torch_shape) == 4:
    return v.transpose(3, 2, 0, 1)
  if len(torch_shape) == 3:
    return v.T[:, :, None]
  return v.T if len(torch_shape) == 2 else v


def test_training_loss_and_gradients(diffae_net, diffae_dir):
  """training_a32.npz: epsilon MSE on the 1000-step process, the encoder inside the forward, and
  the gradient of its mean with respect to every parameter."""
  from cfjax.nets import diffae_import
  net, _ = diffae_net("a32")
  f = load_npz(diffae_dir / "training_a32.npz")
  sched = dd.make_schedule(1000, "linear")
  x0, noise, t = nhwc(f["x0"]), nhwc(f["noise"]), jnp.asarray(f["t"], jnp.int32)

  def loss(params):
    terms = dd.training_losses(sched, lambda x, tm: net.apply(params, x, tm, x_start=x0), x0, t, noise)
    return terms["loss"].mean(), terms

  (mean, terms), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(net.params)
  assert set(terms) == {"mse", "loss"}
  np.testing.assert_allclose(np.asarray(terms["mse"]), f["mse"], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(terms["loss"]), f["loss"], rtol=1e-5)
  np.testing.assert_allclose(float(mean), float(f["loss_mean"]), rtol=1e-5)
  keymap = diffae_import.torch_key_map(net.config)
  assert sorted(f["grad_keys"]) == sorted(keymap)  # the same parameters

  def grad_of(key):
    path, torch_shape = keymap[key]
    node = grads
    for p in path:
      node = node[p]
    return _to_torch_layout(node, torch_shape)

  norms = np.array([np.linalg.norm(grad_of(k)) for k in f["grad_keys"]])
  big = f["grad_norms"] >= 1e-4 * f["grad_norms"].max()
  np.testing.assert_allclose(norms[big], f["grad_norms"][big], rtol=1e-4)
  np.testing.assert_allclose(norms[~big], f["grad_norms"][~big], atol=1e-6)
  for k in f:
    if k.startswith("grad__"):
      np.testing.assert_allclose(grad_of(k[len("grad__"):]), f[k], atol=1e-6, err_msg=k)
