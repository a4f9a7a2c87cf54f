"""Chains, DDIM, training losses and the ACE filter with the real "small" UNet, against the
numbers of the original PyTorch code (fixtures ddim.npz, training_losses.npz, ace_filter.npz).

Long chains run in "rolled" mode (one UNet in the compiled graph); the 5-step ACE filter and its
input gradient run in both modes. Tolerances are the README's.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax import diffusion as dd


def nhwc(a):
  return jnp.asarray(np.moveaxis(np.asarray(a), -3, -1))


def nchw(a):
  return np.moveaxis(np.asarray(a), -1, -3)


def model_of(net, params):
  return lambda x, t: net.apply(params, x, t)


@pytest.fixture(scope="module")
def ddim_npz(fixtures_dir):
  return dict(np.load(fixtures_dir / "ddim.npz"))


@pytest.fixture(scope="module")
def sched_ddim25():
  return dd.make_schedule(500, "linear", "ddim25")


def test_ddim_sample_loop(unet_small, ddim_npz, sched_ddim25):
  np.testing.assert_array_equal(np.asarray(sched_ddim25.timestep_map), ddim_npz["timestep_map"])
  run = jax.jit(lambda p, x: dd.ddim_sample_loop(sched_ddim25, model_of(unet_small, p), x, mode="rolled",
                                                 return_traj=True))
  x, traj = run(unet_small.params, nhwc(ddim_npz["x_T"]))
  chex.assert_shape(traj, (26, 3, 32, 32, 3))
  np.testing.assert_allclose(nchw(x), ddim_npz["sample"], atol=3e-4, rtol=0)
  np.testing.assert_allclose(nchw(traj[:, 0]), ddim_npz["sample_traj_ex0"], atol=3e-4, rtol=0)


@pytest.mark.parametrize("clip", [True, False])
def test_ddim_invert(unet_small, ddim_npz, sched_ddim25, clip):
  run = jax.jit(lambda p, x: dd.ddim_invert(sched_ddim25, model_of(unet_small, p), x, clip_denoised=clip,
                                            mode="rolled", return_traj=True))
  x, traj = run(unet_small.params, nhwc(ddim_npz["x0"]))
  if clip:
    np.testing.assert_allclose(nchw(x), ddim_npz["encoded"], atol=3e-4, rtol=0)
    np.testing.assert_allclose(nchw(traj[:, 0]), ddim_npz["encoded_traj_ex0"], atol=3e-4, rtol=0)
  else:
    np.testing.assert_allclose(nchw(x), ddim_npz["encoded_noclip"], atol=1e-2, rtol=0)


def test_ddim_single_steps(unet_small, ddim_npz, sched_ddim25):
  s = sched_ddim25

  @jax.jit
  def steps(p, x, t, noise):
    m = model_of(unet_small, p)
    return (dd.ddim_step(s, m, x, t, eta=0.0), dd.ddim_step(s, m, x, t, noise, eta=0.5),
            dd.ddim_reverse_step(s, m, x, t))

  t = jnp.asarray(ddim_npz["step_t"], jnp.int32)
  eta0, eta05, rev = steps(unet_small.params, nhwc(ddim_npz["step_x_t"]), t, nhwc(ddim_npz["step_eta05_noise"]))
  np.testing.assert_allclose(nchw(eta0.sample), ddim_npz["step_eta0_sample"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(nchw(eta05.sample), ddim_npz["step_eta05_sample"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(nchw(rev.sample), ddim_npz["step_reverse_sample"], atol=1e-4, rtol=0)
  x0_tol = 1e-4 * np.asarray(s.sqrt_recip_alphas_cumprod)[ddim_npz["step_t"]][:, None, None, None] + 1e-7
  np.testing.assert_array_less(np.abs(nchw(eta0.pred_xstart) - ddim_npz["step_eta0_pred_xstart"]),
                               np.broadcast_to(x0_tol, eta0.pred_xstart.shape[:1] + (3, 32, 32)))
  assert np.abs(ddim_npz["step_reverse_sample"]).max() > 20  # the large t = 0 values are exercised


def test_training_losses(unet_small, fixtures_dir):
  d = np.load(fixtures_dir / "training_losses.npz")
  s = dd.make_schedule(500, "linear", "")
  run = jax.jit(lambda p, x0, t, n: dd.training_losses(s, model_of(unet_small, p), x0, t, n))
  terms = run(unet_small.params, nhwc(d["x0"]), jnp.asarray(d["t"], jnp.int32), nhwc(d["noise"]))
  for k in ("mse", "vb", "loss"):
    np.testing.assert_allclose(np.asarray(terms[k]), d[k], rtol=1e-5, err_msg=k)
  np.testing.assert_allclose(nchw(dd.q_sample(s, nhwc(d["x0"]), jnp.asarray(d["t"]), nhwc(d["noise"]))),
                             d["x_t"], atol=1e-5, rtol=0)


def test_training_losses_vb_trains_only_variance(unet_small, fixtures_dir):
  # The epsilon half is detached inside vb: d vb / d eps = 0, d vb / d v != 0 (t > 0 examples).
  d = np.load(fixtures_dir / "training_losses.npz")
  s = dd.make_schedule(500, "linear", "")
  x0, n, t = nhwc(d["x0"]), nhwc(d["noise"]), jnp.asarray(d["t"], jnp.int32)
  out = nhwc(np.zeros((3, 6, 32, 32), np.float32))
  g = jax.grad(lambda o: dd.training_losses(s, lambda x, tm: o, x0, t, n)["vb"].sum())(out)
  assert float(jnp.abs(g[..., :3]).max()) == 0.0 and float(jnp.abs(g[..., 3:]).max()) > 0.0


@pytest.fixture(scope="module")
def ace_npz(fixtures_dir):
  return dict(np.load(fixtures_dir / "ace_filter.npz"))


def ace_filter(sched, net, mode):
  """ACE's F_tau in [-1, 1] space: q_sample to re-spaced step tau - 1, then tau ancestral steps."""

  def loss_and_out(p, x0, noise_q, noise_steps, w):
    x = dd.q_sample(sched, x0, 4, noise_q)
    out, traj = dd.ddpm_chain(sched, model_of(net, p), x, 4, noise_steps, mode=mode, return_traj=True)
    return jnp.sum(w * out), (out, traj)
  return jax.value_and_grad(loss_and_out, argnums=1, has_aux=True)


@pytest.mark.parametrize("mode", ["unrolled", "rolled"])
def test_ace_filter_forward_and_gradient(unet_small, ace_npz, mode):
  s = dd.make_schedule(500, "linear", "25")
  tau = int(ace_npz["tau"])
  assert tau == 5 and ace_npz["t_loop"].tolist() == [4, 3, 2, 1, 0]
  np.testing.assert_array_equal(np.asarray(s.timestep_map)[ace_npz["t_loop"]], ace_npz["t_model_loop"])
  vg = ace_filter(s, unet_small, mode)
  chex.clear_trace_counter()  # the guard counts by code location, shared by both parameters
  f = jax.jit(chex.assert_max_traces(lambda *a: vg(*a), n=1))
  args = (nhwc(ace_npz["x0"]), nhwc(ace_npz["noise_q"]), nhwc(ace_npz["noise_steps"]), nhwc(ace_npz["w"]))
  (loss, (out, traj)), grad = f(unet_small.params, *args)
  np.testing.assert_allclose(nchw(out), ace_npz["out"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(nchw(traj), ace_npz["traj"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(float(loss), float(ace_npz["loss"]), rtol=1e-5)
  np.testing.assert_allclose(nchw(grad), ace_npz["grad_x0"], atol=2e-4, rtol=0)
  # A second call with new values reuses the compiled program (recompilation guard).
  (loss2, _), _ = f(unet_small.params, args[0] * 0.5, *args[1:])
  assert float(loss2) != float(loss)


def test_ace_filter_ignores_noise_at_step_zero(unet_small, ace_npz):
  # noise_steps[0] is random on purpose; the chain must not add noise after the last step.
  s = dd.make_schedule(500, "linear", "25")
  x = dd.q_sample(s, nhwc(ace_npz["x0"]), 4, nhwc(ace_npz["noise_q"]))
  run = jax.jit(lambda p, x, n: dd.ddpm_chain(s, model_of(unet_small, p), x, 4, n, mode="rolled"))
  n = nhwc(ace_npz["noise_steps"])
  a = run(unet_small.params, x, n)
  b = run(unet_small.params, x, n.at[0].set(0.0))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
