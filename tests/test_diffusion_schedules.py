"""Schedules and re-spacing against guided-diffusion's own tables (fixtures/schedules.npz)."""

import numpy as np
import pytest

from cfjax import diffusion as dd
from cfjax._validate import CfjaxInputError

CASES = {
    "T500_full": (500, ""),
    "T500_r25": (500, "25"),
    "T500_r50": (500, "50"),
    "T500_rddim25": (500, "ddim25"),
    "T1000_rddim10": (1000, "ddim10"),
    "T1000_r100": (1000, "100"),
    "T1000_r10-15-20": (1000, "10,15,20"),
}
UPSTREAM_TABLES = [
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "alphas_cumprod_next", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2",
]


@pytest.fixture(scope="module")
def sched_npz(fixtures_dir):
  return np.load(fixtures_dir / "schedules.npz")


@pytest.mark.parametrize("name", sorted(CASES))
def test_tables_match_guided_diffusion(sched_npz, name):
  steps, respacing = CASES[name]
  s = dd.make_schedule_np(steps, "linear", respacing)
  ref_map = sched_npz[f"{name}__timestep_map"]
  np.testing.assert_array_equal(s.timestep_map, ref_map)
  assert sorted(dd.space_timesteps(steps, respacing or [steps])) == ref_map.tolist()
  for table in UPSTREAM_TABLES:
    ref = sched_npz[f"{name}__{table}"]
    got = getattr(s, table)
    assert got.dtype == np.float64 and got.shape == ref.shape, table
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0, err_msg=table)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_tables_are_cast_float64(sched_npz, name):
  steps, respacing = CASES[name]
  s = dd.make_schedule(steps, "linear", respacing)
  assert s.timestep_map.dtype == np.int32
  np.testing.assert_array_equal(np.asarray(s.timestep_map), sched_npz[f"{name}__timestep_map"])
  for table in UPSTREAM_TABLES:
    got = np.asarray(getattr(s, table))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, sched_npz[f"{name}__{table}"].astype(np.float32), err_msg=table)


@pytest.mark.parametrize("steps", [500, 1000])
def test_base_betas(sched_npz, steps):
  np.testing.assert_array_equal(dd.get_named_beta_schedule("linear", steps), sched_npz[f"T{steps}_base_betas"])


def test_rounding_convention():
  # Upstream sums the stride in floating point: index 12 of 500 -> "25" is round(249.4999...) = 249.
  kept = sorted(dd.space_timesteps(500, "25"))
  assert kept[12] == 249 and round(12 * 499 / 24) == 250
  assert kept[0] == 0 and kept[-1] == 499 and len(kept) == 25


def test_sections_first_get_extra_step():
  kept = sorted(dd.space_timesteps(1000, "10,15,20"))
  assert len(kept) == 45
  # 1000 = 334 + 333 + 333: the first section ends at 333, the second starts at 334.
  assert kept[9] == 333 and kept[10] == 334 and kept[25] == 667 and kept[-1] == 999


@pytest.mark.parametrize("steps,k", [(500, 25), (1000, 10), (1000, 50), (100, 7)])
def test_ddim_picks_first_stride(steps, k):
  kept = sorted(dd.space_timesteps(steps, f"ddim{k}"))
  stride = kept[1] - kept[0]
  assert len(kept) == k and kept[0] == 0 and kept == list(range(0, steps, stride))
  assert all(len(range(0, steps, i)) != k for i in range(1, stride))


@pytest.mark.parametrize("steps,respacing", [(500, "25"), (1000, "ddim10"), (1000, "10,15,20"), (300, "")])
def test_respacing_invariants(steps, respacing):
  base = dd.make_schedule_np(steps, "linear")
  s = dd.make_schedule_np(steps, "linear", respacing)
  tmap = s.timestep_map
  # The re-spaced process has the same marginals q(x_t | x_0) at the kept timesteps.
  np.testing.assert_allclose(s.alphas_cumprod, base.alphas_cumprod[tmap], rtol=1e-13)
  assert np.all(np.diff(tmap) > 0) and np.all(np.diff(s.alphas_cumprod) < 0)
  np.testing.assert_allclose(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1], rtol=0)
  assert s.alphas_cumprod_prev[0] == 1.0 and s.alphas_cumprod_next[-1] == 0.0
  assert s.posterior_variance[0] == 0.0
  np.testing.assert_allclose(s.posterior_log_variance_clipped[0], np.log(s.posterior_variance[1]), rtol=1e-15)
  np.testing.assert_allclose(s.sqrt_recipm1_alphas_cumprod ** 2, 1 / s.alphas_cumprod - 1, rtol=1e-12)
  # The posterior mean of x_0 = x_t / sqrt(abar) (no noise) must give back the noiseless x_{t-1}.
  np.testing.assert_allclose(
      s.posterior_mean_coef1 / np.sqrt(s.alphas_cumprod) + s.posterior_mean_coef2,
      np.sqrt(s.alphas_cumprod_prev / s.alphas_cumprod), rtol=1e-12)
  np.testing.assert_allclose(
      s.posterior_variance, s.betas * (1 - s.alphas_cumprod_prev) / (1 - s.alphas_cumprod), rtol=1e-15)


def test_cosine_schedule():
  betas = dd.get_named_beta_schedule("cosine", 1000)
  assert betas.dtype == np.float64 and betas.shape == (1000,)
  assert betas.max() <= 0.999 and np.all(np.diff(betas) >= 0)
  abar = np.cumprod(1 - betas)
  f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
  np.testing.assert_allclose(abar[:-1], f(np.arange(1, 1000) / 1000) / f(0), rtol=1e-9)
  s = dd.make_schedule(1000, "cosine", "ddim50")
  assert s.num_timesteps == 50 and np.isfinite(np.asarray(s.posterior_log_variance_clipped)).all()


def test_errors_name_the_problem():
  with pytest.raises(CfjaxInputError, match="Did you mean 'linear'"):
    dd.make_schedule(100, "lineer")
  with pytest.raises(CfjaxInputError, match="cannot divide"):
    dd.space_timesteps(10, "20")
  with pytest.raises(CfjaxInputError, match="integer stride"):
    dd.space_timesteps(10, "ddim7")
  with pytest.raises(CfjaxInputError, match="steps >= 21"):
    dd.make_schedule(10)  # linear betas reach 2.0
  with pytest.raises(CfjaxInputError, match="respacing"):
    dd.make_schedule(100, "linear", "abc")
