"""Beta schedules, timestep re-spacing and the precomputed tables of a (re-spaced) DDPM.

Everything here follows OpenAI guided-diffusion (``gaussian_diffusion.py``, ``respace.py``) number
for number: tables are built in float64 numpy exactly as upstream builds them, and only then cast
to float32 (upstream casts per lookup, which gives the same float32 values). Building them in
float32 would lose precision where it matters, e.g. ``sqrt(1 / abar - 1)`` at small t.

Example:
  >>> sched = make_schedule(500, "linear", "25")
  >>> int(sched.timestep_map[12])  # 249, not 250: upstream sums the stride in floating point
  249
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from cfjax._validate import CfjaxInputError, check_choice

BETA_SCHEDULES = ("linear", "cosine")


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
  """The float64 betas of guided-diffusion's named schedules.

  Args:
    schedule_name: "linear" (scaled so any step count matches the 1000-step range) or "cosine"
      (Nichol & Dhariwal 2021, betas capped at 0.999).
    num_diffusion_timesteps: number of steps T.

  Returns:
    float64 array of shape (T,).

  Example:
    >>> get_named_beta_schedule("linear", 1000)[[0, -1]].tolist()
    [0.0001, 0.02]
  """
  check_choice("beta schedule", schedule_name, BETA_SCHEDULES)
  if schedule_name == "linear":
    scale = 1000 / num_diffusion_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
  return _betas_for_alpha_bar(
      num_diffusion_timesteps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)


def _betas_for_alpha_bar(n: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
  # Python floats and math.cos, as upstream, so the values agree to the last bit.
  betas = []
  for i in range(n):
    t1, t2 = i / n, (i + 1) / n
    betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
  return np.array(betas)


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> set[int]:
  """The original timesteps kept by a re-spacing, as guided-diffusion's ``space_timesteps``.

  Args:
    num_timesteps: steps of the base process.
    section_counts: "K" (K evenly spaced steps), "K1,K2,..." or a list of ints (the base process
      is cut into equal sections, the first ``num_timesteps % len`` sections one step longer, and
      section i keeps Ki evenly spaced steps), or "ddimK" (the first integer stride giving exactly
      K steps, starting at 0).

  Returns:
    The set of kept original timesteps.

  Raises:
    CfjaxInputError: if a section cannot hold the requested count, or no stride gives "ddimK".

  Example:
    >>> sorted(space_timesteps(500, "ddim25"))[-1]
    480
  """
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      desired = int(section_counts[len("ddim"):])
      for i in range(1, num_timesteps):
        if len(range(0, num_timesteps, i)) == desired:
          return set(range(0, num_timesteps, i))
      raise CfjaxInputError(f"cannot create exactly {desired} steps of {num_timesteps} with an integer stride")
    try:
      section_counts = [int(x) for x in section_counts.split(",")]
    except ValueError:
      raise CfjaxInputError(f"bad timestep respacing {section_counts!r}: expected 'K', 'K1,K2,...' or 'ddimK'")
  size_per = num_timesteps // len(section_counts)
  extra = num_timesteps % len(section_counts)
  start_idx = 0
  all_steps: list[int] = []
  for i, section_count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if size < section_count:
      raise CfjaxInputError(f"cannot divide section of {size} steps into {section_count}")
    frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
    # Summing the stride in floating point (not i * stride) is what upstream does; it decides
    # ties such as round(249.49999999999997) = 249.
    cur_idx = 0.0
    for _ in range(section_count):
      all_steps.append(start_idx + round(cur_idx))
      cur_idx += frac_stride
    start_idx += size
  return set(all_steps)


class Schedule(NamedTuple):
  """Tables of a (re-spaced) Gaussian diffusion, indexed by the re-spaced step k in [0, K).

  A pytree: pass it straight through ``jit`` / ``vmap``. From ``make_schedule`` every field is a
  float32 ``jax.Array`` (``timestep_map`` int32); from ``make_schedule_np`` float64 / int64 numpy.
  Besides guided-diffusion's attribute tables it holds ``log_betas`` and the "fixed_large"
  variance tables, which upstream derives in float64 on the fly.
  """
  betas: jnp.ndarray
  alphas_cumprod: jnp.ndarray
  alphas_cumprod_prev: jnp.ndarray
  alphas_cumprod_next: jnp.ndarray
  sqrt_alphas_cumprod: jnp.ndarray
  sqrt_one_minus_alphas_cumprod: jnp.ndarray
  log_one_minus_alphas_cumprod: jnp.ndarray
  sqrt_recip_alphas_cumprod: jnp.ndarray
  sqrt_recipm1_alphas_cumprod: jnp.ndarray
  posterior_variance: jnp.ndarray
  posterior_log_variance_clipped: jnp.ndarray
  posterior_mean_coef1: jnp.ndarray
  posterior_mean_coef2: jnp.ndarray
  log_betas: jnp.ndarray
  fixed_large_variance: jnp.ndarray
  fixed_large_log_variance: jnp.ndarray
  timestep_map: jnp.ndarray

  @property
  def num_timesteps(self) -> int:
    """K, the number of (re-spaced) steps; static, read from a shape."""
    return int(self.betas.shape[0])


def tables_from_betas(betas: np.ndarray, timestep_map: np.ndarray | None = None) -> Schedule:
  """All float64 tables of ``GaussianDiffusion.__init__`` for the given betas."""
  betas = np.array(betas, dtype=np.float64)
  if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
    hint = f" (got [{betas.min():.4g}, {betas.max():.4g}]; the linear schedule needs steps >= 21)" \
        if betas.ndim == 1 and betas.size else ""
    raise CfjaxInputError(f"betas must be a 1-D array with values in (0, 1]{hint}")
  n = betas.shape[0]
  alphas = 1.0 - betas
  abar = np.cumprod(alphas, axis=0)
  abar_prev = np.append(1.0, abar[:-1])
  abar_next = np.append(abar[1:], 0.0)
  post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
  # posterior_variance[0] is 0; upstream clips its log by repeating entry 1 (convention 5).
  post_var_for_log = np.append(post_var[1], post_var[1:]) if n > 1 else post_var
  fixed_large = np.append(post_var[1], betas[1:]) if n > 1 else betas
  if timestep_map is None:
    timestep_map = np.arange(n, dtype=np.int64)
  return Schedule(
      betas=betas,
      alphas_cumprod=abar,
      alphas_cumprod_prev=abar_prev,
      alphas_cumprod_next=abar_next,
      sqrt_alphas_cumprod=np.sqrt(abar),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
      log_one_minus_alphas_cumprod=np.log(1.0 - abar),
      sqrt_recip_alphas_cumprod=np.sqrt(1.0 / abar),
      sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / abar - 1),
      posterior_variance=post_var,
      posterior_log_variance_clipped=np.log(post_var_for_log),
      posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
      posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
      log_betas=np.log(betas),
      fixed_large_variance=fixed_large,
      fixed_large_log_variance=np.log(fixed_large),
      timestep_map=np.asarray(timestep_map, dtype=np.int64),
  )


def make_schedule_np(steps: int = 1000, schedule: str = "linear",
                     respacing: str | Sequence[int] = "") -> Schedule:
  """The float64 numpy tables of ``create_gaussian_diffusion(steps, ..., timestep_respacing)``.

  Re-spacing follows ``SpacedDiffusion``: ``beta'_k = 1 - abar[t_k] / abar[t_{k-1}]`` from the
  base process (``abar[t_{-1}] = 1``), then every table is rebuilt from these betas. With no
  re-spacing upstream still goes through ``SpacedDiffusion`` with all steps kept, so the betas are
  re-derived from ``abar`` there too (they can differ from the base betas in the last bit).

  Example:
    >>> s = make_schedule_np(1000, "linear", "ddim10")
    >>> s.timestep_map.tolist()
    [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]
  """
  if not isinstance(steps, (int, np.integer)) or steps < 1:
    raise CfjaxInputError(f"steps must be a positive int, got {steps!r}")
  base = tables_from_betas(get_named_beta_schedule(schedule, int(steps)))
  if isinstance(respacing, str) and respacing == "":
    respacing = [int(steps)]
  use = space_timesteps(int(steps), respacing)
  last = 1.0
  new_betas, tmap = [], []
  for i, abar in enumerate(base.alphas_cumprod):
    if i in use:
      new_betas.append(1 - abar / last)
      last = abar
      tmap.append(i)
  return tables_from_betas(np.array(new_betas), np.array(tmap, dtype=np.int64))


def to_device(tables: Schedule) -> Schedule:
  """Casts float64 numpy tables to float32 (``timestep_map`` int32) jax arrays."""
  return Schedule(*[
      jnp.asarray(np.asarray(v, dtype=np.int32 if name == "timestep_map" else np.float32))
      for name, v in zip(Schedule._fields, tables)])


def make_schedule(steps: int = 1000, schedule: str = "linear",
                  respacing: str | Sequence[int] = "") -> Schedule:
  """The float32 tables of a (re-spaced) DDPM, ready for jit.

  Args:
    steps: steps T of the base process the model was trained with.
    schedule: "linear" or "cosine".
    respacing: "" (all T steps), "K", "K1,K2,..." or "ddimK" (see ``space_timesteps``).

  Returns:
    A ``Schedule`` of K-long float32 tables; ``timestep_map[k]`` is the original timestep the
    model must receive at re-spaced step k.

  Example:
    >>> sched = make_schedule(500, respacing="ddim25")
    >>> sched.num_timesteps, int(sched.timestep_map[-1])
    (25, 480)
  """
  return to_device(make_schedule_np(steps, schedule, respacing))
