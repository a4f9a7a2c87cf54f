"""Single denoising steps (DDPM ancestral, DDIM with eta, DDIM inversion) and chains of them.

Shapes as in ``gaussian``: images ``(..., H, W, C)``, step indices re-spaced, one per example.

Chains run a static number of steps (Python ints) and are differentiable w.r.t. their input in
two modes:

* ``"unrolled"``: a Python loop. Fastest on CPU for short chains (XLA:CPU runs the transposed
  convolutions of a rolled loop's backward pass off its fast path), memory grows with length.
* ``"rolled"``: ``lax.scan`` with ``jax.checkpoint`` around each step, so the backward pass keeps
  only the chain's states and recomputes each step's activations: memory flat in chain length.

Noise arrays of chains are indexed by RE-SPACED STEP, not by loop position: ``noises[k]`` is
added after denoising at step k (ACE's fixtures use this layout), so ``noises[0]`` is never used.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from cfjax.diffusion import make_schedule
  >>> s = make_schedule(100, respacing="10")
  >>> eps_model = lambda x, t: jnp.zeros_like(x)
  >>> x = ddim_sample_loop(s, eps_model, jnp.ones((2, 4, 4, 3)))
  >>> x.shape
  (2, 4, 4, 3)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfjax._validate import CfjaxInputError, check_choice
from cfjax.diffusion.gaussian import (ModelFn, extract, p_mean_variance, predict_eps_from_xstart)
from cfjax.diffusion.schedules import Schedule

MODES = ("unrolled", "rolled")


class StepOutput(NamedTuple):
  sample: jax.Array
  pred_xstart: jax.Array


def _as_t(t, x: jax.Array) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(t, jnp.int32), x.shape[:-3])


def _nonzero(t: jax.Array, x: jax.Array) -> jax.Array:
  m = (t != 0).astype(x.dtype)
  return m.reshape(m.shape + (1,) * (x.ndim - m.ndim))


def ddpm_step(sched: Schedule, model_fn: ModelFn, x: jax.Array, t, noise: jax.Array, *,
              clip_denoised: bool = True, variance: str = "learned_range") -> StepOutput:
  """One ancestral step x_t -> x_{t-1} (guided-diffusion ``p_sample``); no noise where t = 0.

  Example:
    >>> import jax.numpy as jnp
    >>> from cfjax.diffusion import make_schedule
    >>> s = make_schedule(100, respacing="10")
    >>> out = ddpm_step(s, lambda x, t: jnp.zeros(x.shape[:-1] + (6,)), jnp.ones((1, 4, 4, 3)),
    ...                 jnp.array([5]), jnp.zeros((1, 4, 4, 3)))
    >>> out.sample.shape
    (1, 4, 4, 3)
  """
  t = _as_t(t, x)
  out = p_mean_variance(sched, model_fn, x, t, clip_denoised=clip_denoised, variance=variance)
  sample = out.mean + _nonzero(t, x) * jnp.exp(0.5 * out.log_variance) * noise
  return StepOutput(sample, out.pred_xstart)


def ddim_step(sched: Schedule, model_fn: ModelFn, x: jax.Array, t, noise: jax.Array | None = None,
              *, eta: float = 0.0, clip_denoised: bool = True) -> StepOutput:
  """One DDIM step x_t -> x_{t-1} (guided-diffusion ``ddim_sample``).

  Epsilon is re-derived from the (clipped) predicted x_0. With ``eta > 0`` the step adds
  ``sigma * noise`` (not where t = 0); with ``eta = 0`` ``noise`` may be None.

  Example:
    >>> import jax.numpy as jnp
    >>> from cfjax.diffusion import make_schedule
    >>> s = make_schedule(100, respacing="ddim10")
    >>> ddim_step(s, lambda x, t: jnp.zeros_like(x), jnp.ones((1, 4, 4, 3)), 3).sample.shape
    (1, 4, 4, 3)
  """
  t = _as_t(t, x)
  # The variance is not used by DDIM; "fixed_small" lets 3-channel models in too.
  out = p_mean_variance(sched, model_fn, x, t, clip_denoised=clip_denoised, variance="fixed_small")
  eps = predict_eps_from_xstart(sched, x, t, out.pred_xstart)
  abar = extract(sched.alphas_cumprod, t, x)
  abar_prev = extract(sched.alphas_cumprod_prev, t, x)
  sample = out.pred_xstart * jnp.sqrt(abar_prev)
  if eta == 0.0:
    sample = sample + jnp.sqrt(1 - abar_prev) * eps
  else:
    if noise is None:
      raise CfjaxInputError("ddim_step with eta > 0 needs noise")
    sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar)) * jnp.sqrt(1 - abar / abar_prev)
    sample = sample + jnp.sqrt(1 - abar_prev - sigma ** 2) * eps + _nonzero(t, x) * sigma * noise
  return StepOutput(sample, out.pred_xstart)


def ddim_reverse_step(sched: Schedule, model_fn: ModelFn, x: jax.Array, t, *,
                      clip_denoised: bool = True) -> StepOutput:
  """One DDIM inversion step x_t -> x_{t+1} (``ddim_reverse_sample``, eta = 0 only).

  At the last step ``alphas_cumprod_next`` is 0, so the step returns the epsilon estimate.

  Example:
    >>> import jax.numpy as jnp
    >>> from cfjax.diffusion import make_schedule
    >>> s = make_schedule(100, respacing="ddim10")
    >>> ddim_reverse_step(s, lambda x, t: jnp.zeros_like(x), jnp.ones((1, 4, 4, 3)), 0).sample.shape
    (1, 4, 4, 3)
  """
  t = _as_t(t, x)
  out = p_mean_variance(sched, model_fn, x, t, clip_denoised=clip_denoised, variance="fixed_small")
  eps = predict_eps_from_xstart(sched, x, t, out.pred_xstart)
  abar_next = extract(sched.alphas_cumprod_next, t, x)
  return StepOutput(out.pred_xstart * jnp.sqrt(abar_next) + jnp.sqrt(1 - abar_next) * eps,
                    out.pred_xstart)


def run_chain(step, x: jax.Array, ks, extras=None, *, mode: str = "unrolled",
              return_traj: bool = False):
  """Runs ``x = step(x, t, extra)`` for the static step indices ``ks`` in order.

  ``t`` is an int32 array of shape ``x.shape[:-3]``; ``extras`` is None or an array (pytree)
  with one leading entry per element of ``ks``. Returns x, or ``(x, traj)`` with
  ``traj[0] = x_in`` and ``traj[j]`` the state after j steps.
  """
  check_choice("chain mode", mode, MODES)
  ks = np.asarray(ks, dtype=np.int32)
  if mode == "unrolled":
    traj = [x]
    for i, k in enumerate(ks.tolist()):
      extra = None if extras is None else jax.tree.map(lambda a: a[i], extras)
      x = step(x, _as_t(k, x), extra)
      traj.append(x)
    return (x, jnp.stack(traj)) if return_traj else x

  # Checkpointing the whole step keeps only the carried x per step for the backward pass.
  body_step = jax.checkpoint(step)

  def body(x, inp):
    k, extra = inp
    x = body_step(x, _as_t(k, x), extra)
    return x, (x if return_traj else None)

  x_out, ys = jax.lax.scan(body, x, (jnp.asarray(ks), extras))
  if return_traj:
    return x_out, jnp.concatenate([x[None], ys], axis=0)
  return x_out


def _check_steps(sched: Schedule, t_start: int) -> int:
  if not isinstance(t_start, (int, np.integer)) or not 0 <= t_start < sched.num_timesteps:
    raise CfjaxInputError(
        f"t_start must be a Python int in [0, {sched.num_timesteps}), got {t_start!r}")
  return int(t_start)


def _noise_rows(noises: jax.Array, ks: np.ndarray, x: jax.Array, name: str) -> jax.Array:
  if noises.shape[0] <= int(ks.max()) or noises.shape[1:] != x.shape:
    raise CfjaxInputError(
        f"{name} must have shape (>{int(ks.max())},) + {x.shape} (indexed by re-spaced step), "
        f"got {noises.shape}")
  return noises[ks]


def ddpm_chain(sched: Schedule, model_fn: ModelFn, x_start: jax.Array, t_start: int,
               noises: jax.Array, *, clip_denoised: bool = True, variance: str = "learned_range",
               mode: str = "unrolled", return_traj: bool = False):
  """Ancestral steps from re-spaced step ``t_start`` down to 0 (ACE's filter after its q_sample).

  Args:
    sched: the (re-spaced) schedule.
    model_fn: see ``p_mean_variance``.
    x_start: x at step t_start, ``(..., H, W, C)``.
    t_start: first step (Python int); the chain runs t_start + 1 model calls.
    noises: ``(n, ..., H, W, C)`` with n > t_start, INDEXED BY STEP: ``noises[k]`` is added after
      denoising at step k; ``noises[0]`` is never used.
    clip_denoised, variance: see ``p_mean_variance``.
    mode: "unrolled" or "rolled" (see the module docstring).
    return_traj: also return the ``(t_start + 2, ...)`` trajectory, x_start first.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from cfjax.diffusion import make_schedule
    >>> s = make_schedule(500, respacing="25")
    >>> m = lambda x, t: jnp.zeros(x.shape[:-1] + (6,))
    >>> x = jnp.zeros((2, 4, 4, 3))
    >>> ddpm_chain(s, m, x, 4, jnp.zeros((5,) + x.shape), mode="rolled").shape
    (2, 4, 4, 3)
  """
  t_start = _check_steps(sched, t_start)
  ks = np.arange(t_start, -1, -1)
  rows = _noise_rows(noises, ks, x_start, "noises")

  def step(x, t, noise):
    return ddpm_step(sched, model_fn, x, t, noise, clip_denoised=clip_denoised,
                     variance=variance).sample
  return run_chain(step, x_start, ks, rows, mode=mode, return_traj=return_traj)


def ddpm_sample_loop(sched: Schedule, model_fn: ModelFn, key: jax.Array, shape, *,
                     clip_denoised: bool = True, variance: str = "learned_range"):
  """Samples from pure noise through all K steps (for sample grids; not differentiated).

  Noise for step k is drawn from ``fold_in(key, k)`` inside a ``lax.scan``, so memory does not
  grow with K.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from cfjax.diffusion import make_schedule
    >>> s = make_schedule(100, respacing="10")
    >>> m = lambda x, t: jnp.zeros(x.shape[:-1] + (6,))
    >>> ddpm_sample_loop(s, m, jax.random.key(0), (2, 4, 4, 3)).shape
    (2, 4, 4, 3)
  """
  shape = tuple(shape)
  x_T = jax.random.normal(jax.random.fold_in(key, sched.num_timesteps), shape, jnp.float32)

  def body(x, k):
    noise = jax.random.normal(jax.random.fold_in(key, k), shape, jnp.float32)
    out = ddpm_step(sched, model_fn, x, _as_t(k, x), noise, clip_denoised=clip_denoised,
                    variance=variance)
    return out.sample, None

  x, _ = jax.lax.scan(body, x_T, jnp.arange(sched.num_timesteps - 1, -1, -1, dtype=jnp.int32))
  return x


def ddim_chain(sched: Schedule, model_fn: ModelFn, x_start: jax.Array, t_start: int,
               noises: jax.Array | None = None, *, eta: float = 0.0, clip_denoised: bool = True,
               mode: str = "unrolled", return_traj: bool = False):
  """DDIM steps from re-spaced step ``t_start`` down to 0 (noise, only for eta > 0, by step)."""
  t_start = _check_steps(sched, t_start)
  ks = np.arange(t_start, -1, -1)
  rows = None
  if eta != 0.0:
    if noises is None:
      raise CfjaxInputError("ddim_chain with eta > 0 needs noises")
    rows = _noise_rows(noises, ks, x_start, "noises")

  def step(x, t, noise):
    return ddim_step(sched, model_fn, x, t, noise, eta=eta, clip_denoised=clip_denoised).sample
  return run_chain(step, x_start, ks, rows, mode=mode, return_traj=return_traj)


def ddim_sample_loop(sched: Schedule, model_fn: ModelFn, x_T: jax.Array,
                     noises: jax.Array | None = None, *, eta: float = 0.0,
                     clip_denoised: bool = True, mode: str = "unrolled",
                     return_traj: bool = False):
  """DDIM sampling from x_T through all K re-spaced steps (``ddim_sample_loop`` upstream).

  Example:
    >>> import jax.numpy as jnp
    >>> from cfjax.diffusion import make_schedule
    >>> s = make_schedule(500, respacing="ddim25")
    >>> x, traj = ddim_sample_loop(s, lambda x, t: jnp.zeros_like(x), jnp.ones((1, 4, 4, 3)),
    ...                            return_traj=True)
    >>> traj.shape
    (26, 1, 4, 4, 3)
  """
  return ddim_chain(sched, model_fn, x_T, sched.num_timesteps - 1, noises, eta=eta,
                    clip_denoised=clip_denoised, mode=mode, return_traj=return_traj)


def ddim_invert(sched: Schedule, model_fn: ModelFn, x0: jax.Array, num_steps: int | None = None,
                *, clip_denoised: bool = True, mode: str = "unrolled", return_traj: bool = False):
  """DDIM inversion x_0 -> x_T: reverse steps at re-spaced t = 0, 1, ..., num_steps - 1.

  With the default ``num_steps = K`` the result is the code that ``ddim_sample_loop`` decodes
  back to (approximately) x0.

  Example:
    >>> import jax.numpy as jnp
    >>> from cfjax.diffusion import make_schedule
    >>> s = make_schedule(500, respacing="ddim25")
    >>> ddim_invert(s, lambda x, t: jnp.zeros_like(x), jnp.zeros((1, 4, 4, 3))).shape
    (1, 4, 4, 3)
  """
  n = sched.num_timesteps if num_steps is None else num_steps
  if not isinstance(n, (int, np.integer)) or not 1 <= n <= sched.num_timesteps:
    raise CfjaxInputError(f"num_steps must be a Python int in [1, {sched.num_timesteps}], got {n!r}")

  def step(x, t, _):
    return ddim_reverse_step(sched, model_fn, x, t, clip_denoised=clip_denoised).sample
  return run_chain(step, x0, np.arange(int(n)), None, mode=mode, return_traj=return_traj)
