"""Gaussian diffusion arithmetic: q_sample, the posterior, x0 <-> epsilon and p_mean_variance.

Shapes: images are ``(..., H, W, C)``; a step index ``t`` is an int array of shape ``x.shape[:-3]``
(``(B,)`` for a batch, ``()`` for one example under ``vmap``), or a Python int. Table values are
broadcast over H, W, C, so one ``t`` per example. ``t`` is always the RE-SPACED index into the
``Schedule``; only the model sees ``sched.timestep_map[t]`` (guided-diffusion's ``_WrappedModel``).

Example:
  >>> import jax.numpy as jnp
  >>> from cfjax.diffusion import make_schedule
  >>> sched = make_schedule(500, "linear", "25")
  >>> x0 = jnp.zeros((2, 8, 8, 3))
  >>> q_sample(sched, x0, jnp.array([0, 24]), jnp.ones_like(x0)).shape
  (2, 8, 8, 3)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from cfjax._validate import CfjaxInputError, check_choice
from cfjax.diffusion.schedules import Schedule

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
VARIANCES = ("learned_range", "fixed_small", "fixed_large")


def extract(table: jax.Array, t, x: jax.Array) -> jax.Array:
  """``table[t]`` shaped to broadcast against x: ``t.shape + (1,) * (x.ndim - t.ndim)``."""
  v = jnp.asarray(table)[t]
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def model_timesteps(sched: Schedule, t, x: jax.Array) -> jax.Array:
  """The original timesteps the model receives at re-spaced index t, shape ``x.shape[:-3]``."""
  return jnp.broadcast_to(jnp.asarray(sched.timestep_map)[t], x.shape[:-3]).astype(jnp.int32)


def q_sample(sched: Schedule, x_start: jax.Array, t, noise: jax.Array) -> jax.Array:
  """Samples q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with the given noise.

  Example:
    >>> from cfjax.diffusion import make_schedule
    >>> import jax.numpy as jnp
    >>> s = make_schedule(100)
    >>> x = q_sample(s, jnp.ones((1, 1, 1, 1)), jnp.array([0]), jnp.zeros((1, 1, 1, 1)))
    >>> round(float(x[0, 0, 0, 0]), 4)
    0.9995
  """
  return extract(sched.sqrt_alphas_cumprod, t, x_start) * x_start + \
      extract(sched.sqrt_one_minus_alphas_cumprod, t, x_start) * noise


def q_posterior_mean_variance(sched: Schedule, x_start: jax.Array, x_t: jax.Array, t):
  """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0).

  Returns:
    ``(mean, variance, log_variance_clipped)``; mean has x's shape, the other two broadcast.
  """
  mean = extract(sched.posterior_mean_coef1, t, x_t) * x_start + \
      extract(sched.posterior_mean_coef2, t, x_t) * x_t
  return (mean, extract(sched.posterior_variance, t, x_t),
          extract(sched.posterior_log_variance_clipped, t, x_t))


def predict_xstart_from_eps(sched: Schedule, x_t: jax.Array, t, eps: jax.Array) -> jax.Array:
  """x_0 = sqrt(1 / abar) x_t - sqrt(1 / abar - 1) eps."""
  return extract(sched.sqrt_recip_alphas_cumprod, t, x_t) * x_t - \
      extract(sched.sqrt_recipm1_alphas_cumprod, t, x_t) * eps


def predict_eps_from_xstart(sched: Schedule, x_t: jax.Array, t, pred_xstart: jax.Array) -> jax.Array:
  """eps = (sqrt(1 / abar) x_t - x_0) / sqrt(1 / abar - 1)."""
  return (extract(sched.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_xstart) / \
      extract(sched.sqrt_recipm1_alphas_cumprod, t, x_t)


class MeanVariance(NamedTuple):
  """Output of ``p_mean_variance``; image-shaped except variance / log_variance (they broadcast).

  ``model_output`` is the raw model output (all 3 or 6 channels).
  """
  mean: jax.Array
  variance: jax.Array
  log_variance: jax.Array
  pred_xstart: jax.Array
  model_output: jax.Array


def p_mean_variance_from_output(sched: Schedule, model_output: jax.Array, x: jax.Array, t, *,
                                clip_denoised: bool = True,
                                variance: str = "learned_range") -> MeanVariance:
  """``p_mean_variance`` given the model's output instead of the model (see there)."""
  check_choice("variance type", variance, VARIANCES)
  c = x.shape[-1]
  want = 2 * c if variance == "learned_range" else c
  if model_output.shape[-1] < want or model_output.shape[:-1] != x.shape[:-1]:
    # Static shapes: this fires at trace time, never on values.
    raise CfjaxInputError(
        f"model output of shape {model_output.shape} does not fit x of shape {x.shape}: "
        f"variance={variance!r} needs at least {want} channels")
  eps = model_output[..., :c]
  if variance == "learned_range":
    # v is not clamped: frac may leave [0, 1] (as upstream). log(betas) is a float64 table.
    frac = (model_output[..., c:2 * c] + 1) / 2
    log_var = frac * extract(sched.log_betas, t, x) + \
        (1 - frac) * extract(sched.posterior_log_variance_clipped, t, x)
    var = jnp.exp(log_var)
  elif variance == "fixed_small":
    var = extract(sched.posterior_variance, t, x)
    log_var = extract(sched.posterior_log_variance_clipped, t, x)
  else:
    var = extract(sched.fixed_large_variance, t, x)
    log_var = extract(sched.fixed_large_log_variance, t, x)
  pred_xstart = predict_xstart_from_eps(sched, x, t, eps)
  if clip_denoised:
    # Clamp before the posterior mean (upstream's process_xstart); gradient 0 outside [-1, 1].
    pred_xstart = jnp.clip(pred_xstart, -1.0, 1.0)
  mean, _, _ = q_posterior_mean_variance(sched, pred_xstart, x, t)
  return MeanVariance(mean, var, log_var, pred_xstart, model_output)


def p_mean_variance(sched: Schedule, model_fn: ModelFn, x: jax.Array, t, *,
                    clip_denoised: bool = True, variance: str = "learned_range") -> MeanVariance:
  """Mean and variance of p(x_{t-1} | x_t) for an epsilon-predicting model.

  Args:
    sched: the (re-spaced) schedule.
    model_fn: ``model_fn(x, t_model)``; receives ``sched.timestep_map[t]`` broadcast to
      ``x.shape[:-3]``; returns C channels (epsilon) or 2C (epsilon, v) in the last axis.
    x: x_t, ``(..., H, W, C)``.
    t: re-spaced step, int array of shape ``x.shape[:-3]`` or a scalar.
    clip_denoised: clamp the predicted x_0 to [-1, 1] before the posterior mean.
    variance: "learned_range" (needs 2C output channels: log variance interpolated between
      log beta_t and the clipped posterior log variance with frac = (v + 1) / 2), "fixed_small"
      (posterior variance) or "fixed_large" (betas, with posterior_variance[1] at t = 0).

  Returns:
    ``MeanVariance(mean, variance, log_variance, pred_xstart, model_output)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from cfjax.diffusion import make_schedule
    >>> s = make_schedule(100, respacing="10")
    >>> out = p_mean_variance(s, lambda x, tm: jnp.zeros(x.shape[:-1] + (6,)),
    ...                       jnp.ones((2, 4, 4, 3)), jnp.array([3, 9]))
    >>> out.mean.shape, out.log_variance.shape
    ((2, 4, 4, 3), (2, 4, 4, 3))
  """
  model_output = model_fn(x, model_timesteps(sched, t, x))
  return p_mean_variance_from_output(sched, model_output, x, t, clip_denoised=clip_denoised,
                                     variance=variance)
