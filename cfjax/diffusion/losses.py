"""guided-diffusion's training loss: epsilon MSE plus the variational-bound term of a learned variance.

All terms are per example (shape ``x.shape[:-3]``); mean over H, W, C. The vb term is in bits per
dimension (divided by ln 2).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from cfjax.diffusion import make_schedule
  >>> s = make_schedule(100)
  >>> x0 = jnp.zeros((2, 4, 4, 3))
  >>> m = lambda x, t: jnp.zeros(x.shape[:-1] + (6,))
  >>> terms = training_losses(s, m, x0, jnp.array([0, 50]), jnp.ones_like(x0))
  >>> sorted(terms), terms["loss"].shape
  (['loss', 'mse', 'vb'], (2,))
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from cfjax.diffusion.gaussian import (ModelFn, model_timesteps, p_mean_variance_from_output,
                                      q_posterior_mean_variance, q_sample)
from cfjax.diffusion.schedules import Schedule


def normal_kl(mean1, logvar1, mean2, logvar2):
  """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + ((mean1 - mean2) ** 2) * jnp.exp(-logvar2))


def _cdf_argument(x):
  return math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)


def approx_standard_normal_cdf(x):
  """guided-diffusion's tanh approximation of the standard normal CDF, ``0.5 * (1 + tanh(u))``.

  Computed as the identical ``sigmoid(2u)``: the tanh form rounds to exactly 0 in float32 once
  ``x`` is below about -7.9, where the sigmoid keeps tail probabilities down to 1e-38.

  Example:
    >>> import jax.numpy as jnp
    >>> float(approx_standard_normal_cdf(jnp.float32(-8.0))) > 0
    True
  """
  return jax.nn.sigmoid(2.0 * _cdf_argument(x))


def _approx_standard_normal_sf(x):
  """``1 - approx_standard_normal_cdf(x)`` without cancellation (the CDF is odd around 1/2)."""
  return jax.nn.sigmoid(-2.0 * _cdf_argument(x))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
  """Log-likelihood of 8-bit images in [-1, 1] under a Gaussian discretised to bins of width 2/255.

  The edge bins (x < -0.999, x > 0.999) take the whole tail; logs are of ``max(., 1e-12)``.

  Example:
    >>> import jax.numpy as jnp
    >>> ll = discretized_gaussian_log_likelihood(jnp.array([-1.0, 0.0, 1.0]),
    ...     means=jnp.zeros(3), log_scales=jnp.full(3, -2.0))
    >>> ll.shape
    (3,)
  """
  centered = x - means
  inv_stdv = jnp.exp(-log_scales)
  z_plus = inv_stdv * (centered + 1.0 / 255.0)
  z_min = inv_stdv * (centered - 1.0 / 255.0)
  cdf_plus = approx_standard_normal_cdf(z_plus)
  sf_min = _approx_standard_normal_sf(z_min)
  # a bin above the mean as a difference of upper tails, so that neither side cancels near 1
  delta = jnp.where(z_min > 0, sf_min - _approx_standard_normal_sf(z_plus),
                    cdf_plus - approx_standard_normal_cdf(z_min))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(sf_min, 1e-12))
  log_cdf_delta = jnp.log(jnp.maximum(delta, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def _mean_flat(a):
  return jnp.mean(a, axis=(-3, -2, -1))


def p2_weight(sched: Schedule, t, *, gamma: float, k: float = 1.0):
  """Perception-prioritised weight of the epsilon MSE at step ``t``: ``1 / (k + SNR(t)) ** gamma``.

  Choi et al. (2022), "Perception Prioritized Training of Diffusion Models". SNR(t) is
  ``abar / (1 - abar)``; with ``k = 1`` the weight is ``(1 - abar) ** gamma``, which takes weight off
  the low-noise steps (where the MSE mostly fits the data's pixel noise) and leaves the high-noise
  steps, where coarse content (and a diffusion autoencoder's semantic code) is learned. ``gamma = 0``
  is the plain loss.

  Example:
    >>> import jax.numpy as jnp
    >>> from cfjax.diffusion import make_schedule
    >>> w = p2_weight(make_schedule(1000), jnp.array([0, 999]), gamma=1.0)
    >>> bool(w[0] < 0.01 < 0.99 < w[1])
    True
  """
  abar = jnp.asarray(sched.alphas_cumprod, jnp.float32)[t]
  return (k + abar / (1.0 - abar)) ** -gamma


def vb_terms_bpd(sched: Schedule, model_output, x_start, x_t, t, *, clip_denoised: bool = False):
  """Per-example variational-bound term in bits/dim: KL(q || p) for t > 0, decoder NLL at t = 0."""
  true_mean, _, true_log_var = q_posterior_mean_variance(sched, x_start, x_t, t)
  out = p_mean_variance_from_output(sched, model_output, x_t, t, clip_denoised=clip_denoised)
  kl = _mean_flat(normal_kl(true_mean, true_log_var, out.mean, out.log_variance)) / math.log(2.0)
  nll = -discretized_gaussian_log_likelihood(x_start, means=out.mean,
                                             log_scales=0.5 * out.log_variance)
  nll = _mean_flat(nll) / math.log(2.0)
  return jnp.where(jnp.asarray(t) == 0, nll, kl)


def training_losses(sched: Schedule, model_fn: ModelFn, x_start, t, noise) -> dict:
  """guided-diffusion ``training_losses`` for an epsilon model with learned-range variance.

  Args:
    sched: schedule (re-spaced or not; the model gets ``timestep_map[t]``).
    model_fn: ``model_fn(x, t_model)`` returning 2C channels (epsilon, v), or C (then no vb).
    x_start: clean images in [-1, 1], ``(..., H, W, C)``.
    t: step indices, shape ``x.shape[:-3]``.
    noise: the q_sample noise, like x_start.

  Returns:
    ``{"mse", "vb", "loss"}`` per example: mse of epsilon, vb (bits/dim, with the epsilon half
    detached so it trains only the variance, and ``clip_denoised=False``), loss = mse + vb.
  """
  x_t = q_sample(sched, x_start, t, noise)
  out = model_fn(x_t, model_timesteps(sched, t, x_t))
  c = x_start.shape[-1]
  eps = out[..., :c]
  terms = {"mse": _mean_flat((noise - eps) ** 2)}
  if out.shape[-1] == 2 * c:
    frozen = jnp.concatenate([jax.lax.stop_gradient(eps), out[..., c:]], axis=-1)
    terms["vb"] = vb_terms_bpd(sched, frozen, x_start, x_t, t, clip_denoised=False)
    terms["loss"] = terms["mse"] + terms["vb"]
  else:
    terms["loss"] = terms["mse"]
  return terms
