"""The probability-flow ODE of a discrete DDPM (DDIM's continuous limit), solved with diffrax.

With ``sigma = sqrt(1 / abar - 1)`` and the scaled state ``x_bar = x / sqrt(abar) =
x * sqrt(1 + sigma^2)`` the ODE is ``d x_bar / d sigma = eps(x_bar / sqrt(1 + sigma^2), t(sigma))``
(Song et al. 2021, DDIM section 4.3). A DDIM (eta = 0, no clipping) step from sigma_k to
sigma_{k-1} is exactly one Euler step of it, so Euler on the schedule's sigma grid reproduces
DDIM, and an accurate solver gives the limit DDIM approaches as the steps shrink.

``t(sigma)`` interpolates the ORIGINAL timesteps piecewise-linearly between the schedule's nodes
(``timestep_map[k]`` at ``sigma_k = sqrt_recipm1_alphas_cumprod[k]``; clamped outside, so
t = timestep_map[0] on [0, sigma_0], as DDIM's last step). The model therefore receives FLOAT32
timesteps here (the guided-diffusion UNet's embedding accepts them). Gradients flow through
``diffrax.RecursiveCheckpointAdjoint`` (memory logarithmic in the number of steps).

Example:
  >>> import jax.numpy as jnp
  >>> from cfjax.diffusion import make_schedule
  >>> s = make_schedule(1000, respacing="100")
  >>> eps_model = lambda x, t: jnp.zeros_like(x)  # eps = 0: x_bar is constant
  >>> x_T = ode_encode(s, eps_model, jnp.ones((1, 2, 2, 3)))
  >>> round(float(x_T[0, 0, 0, 0]) / float(s.sqrt_alphas_cumprod[-1]), 3)
  1.0
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp

from cfjax._validate import CfjaxInputError
from cfjax.diffusion.gaussian import ModelFn
from cfjax.diffusion.schedules import Schedule


def schedule_sigmas(sched: Schedule) -> jax.Array:
  """sigma_k = sqrt(1 / abar_k - 1) for every re-spaced step k (increasing), float32 (K,)."""
  return jnp.asarray(sched.sqrt_recipm1_alphas_cumprod)


def timestep_from_sigma(sched: Schedule, sigma) -> jax.Array:
  """Continuous original timestep at noise level sigma (piecewise linear, clamped), float32."""
  return jnp.interp(sigma, schedule_sigmas(sched), jnp.asarray(sched.timestep_map, jnp.float32))


def sigma_from_timestep(sched: Schedule, t) -> jax.Array:
  """Inverse of ``timestep_from_sigma`` on the schedule's range (for models written in sigma)."""
  return jnp.interp(jnp.asarray(t, jnp.float32), jnp.asarray(sched.timestep_map, jnp.float32),
                    schedule_sigmas(sched))


def pf_ode(sched: Schedule, model_fn: ModelFn, x: jax.Array, sigma_from, sigma_to, *,
           solver: diffrax.AbstractSolver | None = None, step_sigmas: jax.Array | None = None,
           rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 4096,
           adjoint: diffrax.AbstractAdjoint | None = None) -> jax.Array:
  """Carries x (in x space, NOT x_bar) from noise level sigma_from to sigma_to along the PF-ODE.

  Args:
    sched: schedule whose sigma grid defines t(sigma).
    model_fn: ``model_fn(x, t)`` with float32 original timesteps ``t`` of shape ``x.shape[:-3]``;
      the first C output channels are epsilon (a 2C-channel learned-variance output is fine).
    x: ``(..., H, W, C)`` state at sigma_from.
    sigma_from, sigma_to: noise levels (either order: encode goes up, decode down).
    solver: a diffrax ODE solver; default ``Tsit5`` with adaptive steps (rtol, atol).
    step_sigmas: explicit step locations (``diffrax.StepTo``), from sigma_from to sigma_to
      inclusive; e.g. the schedule's sigmas with ``diffrax.Euler()`` reproduce DDIM.
    rtol, atol, max_steps: adaptive step control (ignored with ``step_sigmas``).
    adjoint: default ``diffrax.RecursiveCheckpointAdjoint()``, differentiable in x.

  Returns:
    x at sigma_to, like x. Nothing raises inside jit: a failed solve gives non-finite values.
  """
  c = x.shape[-1]

  def vector_field(sigma, x_bar, _):
    t = jnp.broadcast_to(timestep_from_sigma(sched, sigma), x.shape[:-3])
    return model_fn(x_bar / jnp.sqrt(1 + sigma ** 2), t)[..., :c]

  sigma_from = jnp.asarray(sigma_from, jnp.float32)
  sigma_to = jnp.asarray(sigma_to, jnp.float32)
  if step_sigmas is not None:
    controller = diffrax.StepTo(ts=jnp.asarray(step_sigmas, jnp.float32))
    solver = diffrax.Euler() if solver is None else solver
  else:
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    solver = diffrax.Tsit5() if solver is None else solver
  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(vector_field), solver, sigma_from, sigma_to, None,
      x * jnp.sqrt(1 + sigma_from ** 2), stepsize_controller=controller, max_steps=max_steps,
      adjoint=diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
      throw=False)
  return sol.ys[-1] / jnp.sqrt(1 + sigma_to ** 2)


def _level(sched: Schedule, t, name: str) -> int:
  k = sched.num_timesteps - 1 if t is None else t
  if not isinstance(k, int) or not 0 <= k < sched.num_timesteps:
    raise CfjaxInputError(f"{name} must be a Python int in [0, {sched.num_timesteps}), got {t!r}")
  return k


def ode_encode(sched: Schedule, model_fn: ModelFn, x0: jax.Array, t_end: int | None = None,
               **kwargs) -> jax.Array:
  """x_0 (sigma = 0) -> x at re-spaced step t_end (default the last), along the PF-ODE.

  ``kwargs`` go to ``pf_ode``. Unlike ``ddim_invert``, whose last step jumps to abar = 0, this
  ends at the finite noise level of step t_end, so ``ode_decode`` inverts it.
  """
  k = _level(sched, t_end, "t_end")
  return pf_ode(sched, model_fn, x0, 0.0, schedule_sigmas(sched)[k], **kwargs)


def ode_decode(sched: Schedule, model_fn: ModelFn, x_t: jax.Array, t_start: int | None = None,
               **kwargs) -> jax.Array:
  """x at re-spaced step t_start (default the last) -> x_0 (sigma = 0), along the PF-ODE.

  Example:
    >>> import jax.numpy as jnp
    >>> from cfjax.diffusion import make_schedule
    >>> s = make_schedule(100, respacing="10")
    >>> ode_decode(s, lambda x, t: jnp.zeros_like(x), jnp.ones((1, 2, 2, 3))).shape
    (1, 2, 2, 3)
  """
  k = _level(sched, t_start, "t_start")
  return pf_ode(sched, model_fn, x_t, schedule_sigmas(sched)[k], 0.0, **kwargs)
