"""Steps and chains with a small conv model: both chain modes agree (values and input gradients),
per-example vmap equals the batch, noise is indexed by step, rolled memory is flat in length."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax import diffusion as dd
from cfjax._validate import CfjaxInputError

HW, CH = 16, 32


def conv_model(key, hidden=CH):
  k1, k2 = jax.random.split(key)
  w1 = jax.random.normal(k1, (3, 3, 3, hidden)) * 0.3
  w2 = jax.random.normal(k2, (3, 3, hidden, 6)) * 0.1
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def model_fn(x, t):
    batched = x.ndim == 4
    xb = x if batched else x[None]
    tb = jnp.reshape(t, (-1, 1, 1, 1)).astype(jnp.float32) / 500.0
    h = jnp.tanh(conv(xb, w1) * (1 + tb))
    out = conv(h, w2)
    return out if batched else out[0]
  return model_fn


@pytest.fixture(scope="module")
def model():
  return conv_model(jax.random.key(0))


@pytest.fixture(scope="module")
def sched():
  return dd.make_schedule(500, "linear", "25")


@pytest.fixture(scope="module")
def data():
  k = jax.random.split(jax.random.key(1), 3)
  x = jax.random.uniform(k[0], (2, HW, HW, 3), minval=-1, maxval=1)
  noises = jax.random.normal(k[1], (25, 2, HW, HW, 3))
  return x, noises


def test_modes_agree_values_and_gradients(model, sched, data):
  x, noises = data

  def loss(x, mode):
    out, traj = dd.ddpm_chain(sched, model, x, 5, noises, mode=mode, return_traj=True)
    return jnp.sum(out ** 2), traj

  (lu, tu), gu = jax.jit(jax.value_and_grad(lambda x: loss(x, "unrolled"), has_aux=True))(x)
  (lr, tr), gr = jax.jit(jax.value_and_grad(lambda x: loss(x, "rolled"), has_aux=True))(x)
  chex.assert_shape(tu, (7, 2, HW, HW, 3))
  np.testing.assert_allclose(tu, tr, atol=1e-5)
  np.testing.assert_allclose(gu, gr, atol=1e-5, rtol=1e-4)
  assert float(jnp.abs(gu).max()) > 0
  for mode in ("unrolled", "rolled"):
    d_unr = dd.ddim_chain(sched, model, x, 6, noises, eta=0.3, mode=mode)
    np.testing.assert_allclose(d_unr, dd.ddim_chain(sched, model, x, 6, noises, eta=0.3, mode="unrolled"), atol=1e-5)


def test_chain_is_steps_with_noise_indexed_by_step(model, sched, data):
  x, noises = data
  y = x
  for k in (3, 2, 1, 0):
    y = dd.ddpm_step(sched, model, y, jnp.full((2,), k), noises[k]).sample
  np.testing.assert_allclose(dd.ddpm_chain(sched, model, x, 3, noises), y, atol=1e-6)
  # noises[0] is never used; noises beyond t_start neither.
  changed = noises.at[0].set(100.0).at[4:].set(-100.0)
  np.testing.assert_array_equal(dd.ddpm_chain(sched, model, x, 3, noises), dd.ddpm_chain(sched, model, x, 3, changed))


def test_per_example_vmap_equals_batch(model, sched, data):
  x, noises = data
  per = jax.vmap(lambda x1, n1: dd.ddpm_chain(sched, model, x1, 3, n1), in_axes=(0, 1))(x, noises)
  np.testing.assert_allclose(per, dd.ddpm_chain(sched, model, x, 3, noises), atol=1e-5)
  inv = jax.vmap(lambda x1: dd.ddim_invert(sched, model, x1, 4))(x)
  np.testing.assert_allclose(inv, dd.ddim_invert(sched, model, x, 4), atol=1e-5)


def test_ddim_eta0_ignores_noise_and_inversion_inverts(sched):
  # An x-independent epsilon model makes DDIM exactly invertible (the clipped x0 aside).
  s = dd.make_schedule(500, "linear", "ddim25")
  eps = jax.random.normal(jax.random.key(5), (1, 4, 4, 3)) * 0.1
  model = lambda x, t: jnp.broadcast_to(eps, x.shape)
  x0 = jax.random.uniform(jax.random.key(6), (1, 4, 4, 3), minval=-0.5, maxval=0.5)
  z = dd.ddim_invert(s, model, x0, 24, clip_denoised=False)  # at step 24
  back = dd.ddim_chain(s, model, z, 24, clip_denoised=False)
  # Inversion treats x0 as step 0 (sigma_0); decoding ends at sigma = 0: x_bar moves by sigma_0 eps.
  sig0 = float(s.sqrt_recipm1_alphas_cumprod[0])
  np.testing.assert_allclose(back, x0 * np.sqrt(1 + sig0 ** 2) - sig0 * eps, atol=1e-5)
  a = dd.ddim_step(s, model, z, 10, jnp.ones_like(z), eta=0.0).sample
  np.testing.assert_array_equal(a, dd.ddim_step(s, model, z, 10, None, eta=0.0).sample)


def test_ddpm_sample_loop(model):
  s = dd.make_schedule(100, "linear", "10")
  run = jax.jit(lambda k: dd.ddpm_sample_loop(s, model, k, (3, 8, 8, 3)))
  a, b, c = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
  chex.assert_shape(a, (3, 8, 8, 3))
  chex.assert_tree_all_finite(a)
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a - c).max()) > 1e-3


def test_jitted_chain_traces_once(model, sched, data):
  x, noises = data
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def filt(x, noises):
    return dd.ddpm_chain(sched, model, x, 4, noises, mode="rolled")

  for i in range(3):
    filt(x * (0.5 + 0.2 * i), noises + i)


def _temp_bytes(fn, *args):
  return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_rolled_memory_flat_in_chain_length(sched):
  model = conv_model(jax.random.key(2), hidden=64)
  x = jnp.zeros((4, 32, 32, 3))
  noises = jnp.zeros((25,) + x.shape)

  def grad_fn(t_start, mode):
    return jax.grad(lambda x: jnp.sum(dd.ddpm_chain(sched, model, x, t_start, noises, mode=mode)))

  rolled = [_temp_bytes(grad_fn(n, "rolled"), x) for n in (2, 10)]
  unrolled = [_temp_bytes(grad_fn(n, "unrolled"), x) for n in (2, 10)]
  # One step's activations are 4*32*32*64 floats = 1 MiB; unrolled keeps those of every step.
  assert rolled[1] < 1.3 * rolled[0] + (1 << 20), rolled
  assert unrolled[1] > 2.0 * unrolled[0], unrolled
  assert unrolled[1] > 2.0 * rolled[1], (rolled, unrolled)


def test_errors_at_the_edges(model, sched, data):
  x, noises = data
  with pytest.raises(CfjaxInputError, match="t_start"):
    dd.ddpm_chain(sched, model, x, 25, noises)
  with pytest.raises(CfjaxInputError, match="indexed by re-spaced step"):
    dd.ddpm_chain(sched, model, x, 4, noises[:3])
  with pytest.raises(CfjaxInputError, match="Did you mean 'rolled'"):
    dd.ddpm_chain(sched, model, x, 4, noises, mode="roled")
  with pytest.raises(CfjaxInputError, match="needs noise"):
    dd.ddim_chain(sched, model, x, 4, eta=0.5)
