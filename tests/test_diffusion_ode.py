"""The probability-flow ODE: Euler on the schedule's grid is DDIM, accurate solves match the
analytic flow of Gaussian data and many-step DDIM, and gradients flow through diffrax."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax import diffusion as dd
from cfjax._validate import CfjaxInputError

S = 0.5  # data std of the Gaussian test distribution


def gaussian_oracle(sched):
  """Exact epsilon for data ~ N(0, S^2): eps(x, sigma) = sigma sqrt(1 + sigma^2) x / (S^2 + sigma^2)."""

  def model_fn(x, t):
    sigma = dd.sigma_from_timestep(sched, t)
    sigma = sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))
    eps = sigma * jnp.sqrt(1 + sigma ** 2) * x / (S ** 2 + sigma ** 2)
    return jnp.concatenate([eps, jnp.zeros_like(x)], axis=-1)  # 6 channels, as the UNet
  return model_fn


def wiggly(sched):
  """A nonlinear, non-oracle epsilon model, smooth in x and t."""
  def model_fn(x, t):
    tf = t.astype(jnp.float32).reshape(t.shape + (1, 1, 1)) / 500.0
    return jnp.tanh(1.3 * x + 0.4 * jnp.roll(x, 1, axis=-2) * jnp.cos(3 * tf)) * (0.5 + tf)
  return model_fn


@pytest.fixture(scope="module")
def sched():
  return dd.make_schedule(1000, "linear", "50")


@pytest.fixture(scope="module")
def x_T():
  return jax.random.normal(jax.random.key(3), (2, 4, 4, 3))


def test_sigma_timestep_maps_invert(sched):
  sig = dd.schedule_sigmas(sched)
  np.testing.assert_allclose(dd.timestep_from_sigma(sched, sig), np.asarray(sched.timestep_map), atol=1e-3)
  mid = 0.5 * (sig[10] + sig[11])
  np.testing.assert_allclose(dd.sigma_from_timestep(sched, dd.timestep_from_sigma(sched, mid)), mid, rtol=1e-5)


def test_euler_on_schedule_grid_is_ddim(sched, x_T):
  m = wiggly(sched)
  sig = dd.schedule_sigmas(sched)
  grid = jnp.concatenate([sig[::-1], jnp.zeros(1)])
  ode = jax.jit(lambda x: dd.pf_ode(sched, m, x, grid[0], 0.0, step_sigmas=grid))(x_T)
  ddim = jax.jit(lambda x: dd.ddim_sample_loop(sched, m, x, clip_denoised=False, mode="rolled"))(x_T)
  np.testing.assert_allclose(ode, ddim, atol=1e-4, rtol=1e-4)


def test_euler_up_the_grid_is_ddim_inversion(sched, x_T):
  m = wiggly(sched)
  sig = dd.schedule_sigmas(sched)
  x0 = jnp.tanh(x_T)
  ode = jax.jit(lambda x: dd.pf_ode(sched, m, x, sig[0], sig[-1], step_sigmas=sig))(x0)
  inv = jax.jit(lambda x: dd.ddim_invert(sched, m, x, sched.num_timesteps - 1, clip_denoised=False,
                                         mode="rolled"))(x0)
  np.testing.assert_allclose(ode, inv, atol=1e-4, rtol=1e-4)


def test_adaptive_solve_matches_analytic_flow_and_gradient(sched, x_T):
  m = gaussian_oracle(sched)
  sig_T = float(dd.schedule_sigmas(sched)[-1])
  decode = jax.jit(lambda x: dd.ode_decode(sched, m, x))
  x0 = decode(x_T)
  # x_bar = x sqrt(1 + sigma^2) scales like sqrt(S^2 + sigma^2) along the flow.
  gain = np.sqrt(1 + sig_T ** 2) * S / np.sqrt(S ** 2 + sig_T ** 2)
  np.testing.assert_allclose(x0, gain * x_T, rtol=1e-3, atol=1e-4)
  g = jax.jit(jax.grad(lambda x: dd.ode_decode(sched, m, x).sum()))(x_T)
  np.testing.assert_allclose(g, np.full(x_T.shape, gain), rtol=1e-3)


def test_adaptive_solve_is_the_limit_of_ddim(x_T):
  # DDIM is Euler on the sigma grid: its error shrinks like 1/K. "100" and "" both start at
  # timestep 999, and the coarse nodes are nodes of the full grid, so both approximate one ODE.
  full = dd.make_schedule(1000, "linear", "")
  coarse = dd.make_schedule(1000, "linear", "100")
  ode = jax.jit(lambda x: dd.ode_decode(full, wiggly(full), x, rtol=1e-6, atol=1e-6))(x_T)
  errs = []
  for s in (full, coarse):
    d = jax.jit(lambda x: dd.ddim_sample_loop(s, wiggly(s), x, clip_denoised=False, mode="rolled"))(x_T)
    errs.append(float(jnp.abs(ode - d).max()))
  scale = float(jnp.abs(ode).max())
  assert errs[0] < 2e-3 * scale and errs[0] < 0.2 * errs[1], (errs, scale)


def test_encode_decode_round_trip(sched, x_T):
  # A well-conditioned nonlinear flow (the saturating wiggly model forgets x0 on the way up).
  oracle = gaussian_oracle(sched)
  m = lambda x, t: oracle(x, t)[..., :3] * (1 + 0.2 * jnp.tanh(x))
  x0 = jnp.tanh(x_T)
  z = jax.jit(lambda x: dd.ode_encode(sched, m, x))(x0)
  back = jax.jit(lambda z: dd.ode_decode(sched, m, z))(z)
  np.testing.assert_allclose(back, x0, atol=2e-3)
  assert float(jnp.abs(z - x0).max()) > 0.1  # it did move


def test_bad_level_is_reported(sched, x_T):
  with pytest.raises(CfjaxInputError, match="t_start"):
    dd.ode_decode(sched, wiggly(sched), x_T, t_start=50)


def test_explicit_solver_and_adjoint(sched, x_T):
  m = gaussian_oracle(sched)
  out = dd.ode_decode(sched, m, x_T, solver=diffrax.Heun(), adjoint=diffrax.RecursiveCheckpointAdjoint(),
                      rtol=1e-4, atol=1e-4)
  sig_T = float(dd.schedule_sigmas(sched)[-1])
  gain = np.sqrt(1 + sig_T ** 2) * S / np.sqrt(S ** 2 + sig_T ** 2)
  np.testing.assert_allclose(out, gain * x_T, rtol=1e-2, atol=1e-3)
