"""Gaussian arithmetic and p_mean_variance against guided-diffusion (fixtures/p_mean_variance.npz).

The fixture stores the UNet's raw output; a stub model returns it and checks that it receives the
ORIGINAL timesteps (README convention 2), so these tests need no network.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax import diffusion as dd
from cfjax._validate import CfjaxInputError

ATOL = 1e-4


def nhwc(a):
  return jnp.asarray(np.moveaxis(np.asarray(a), -3, -1))


def nchw(a):
  return np.moveaxis(np.asarray(a), -1, -3)


@pytest.fixture(scope="module")
def pmv(fixtures_dir):
  return dict(np.load(fixtures_dir / "p_mean_variance.npz"))


@pytest.fixture(scope="module")
def sched():
  return dd.make_schedule(500, "linear", "25")


def stub_model(output, t_model_expected):
  calls = []

  def model_fn(x, t_model):
    np.testing.assert_array_equal(np.asarray(t_model), t_model_expected)
    assert t_model.dtype == jnp.int32 and t_model.shape == x.shape[:-3]
    calls.append(x)
    return nhwc(output)
  model_fn.calls = calls
  return model_fn


def xstart_atol(sched, t):
  # README: pred_xstart tolerance scales with sqrt(1 / abar_t) (error amplification of eps).
  tol = ATOL * np.asarray(sched.sqrt_recip_alphas_cumprod)[np.asarray(t)][:, None, None, None] + 1e-7
  return np.broadcast_to(tol, (len(t), 3, 32, 32))


@pytest.mark.parametrize("case", ["t4", "mixed"])
def test_p_mean_variance_matches(pmv, sched, case):
  model_fn = stub_model(pmv[f"{case}__model_output"], pmv[f"{case}__t_model"])
  t = jnp.asarray(pmv[f"{case}__t"], jnp.int32)
  out = dd.p_mean_variance(sched, model_fn, nhwc(pmv[f"{case}__x_t"]), t, clip_denoised=True)
  assert len(model_fn.calls) == 1
  for name in ("mean", "variance", "log_variance"):
    np.testing.assert_allclose(nchw(getattr(out, name)), pmv[f"{case}__{name}"], atol=ATOL, rtol=0, err_msg=name)
  px = nchw(out.pred_xstart)
  assert px.min() >= -1 and px.max() <= 1
  np.testing.assert_array_less(np.abs(px - pmv[f"{case}__pred_xstart"]), xstart_atol(sched, pmv[f"{case}__t"]))
  np.testing.assert_array_equal(nchw(out.model_output), pmv[f"{case}__model_output"])


def test_p_mean_variance_noclip(pmv, sched):
  model_fn = stub_model(pmv["mixed__model_output"], pmv["mixed__t_model"])
  out = dd.p_mean_variance(sched, model_fn, nhwc(pmv["mixed__x_t"]), jnp.asarray(pmv["mixed__t"]),
                           clip_denoised=False)
  ref_x0 = pmv["mixed_noclip__pred_xstart"]
  assert np.abs(ref_x0).max() > 100  # the unclipped branch really is exercised
  np.testing.assert_array_less(np.abs(nchw(out.pred_xstart) - ref_x0), xstart_atol(sched, pmv["mixed__t"]))
  np.testing.assert_allclose(nchw(out.mean), pmv["mixed_noclip__mean"], atol=ATOL, rtol=0)
  np.testing.assert_allclose(nchw(out.log_variance), pmv["mixed__log_variance"], atol=ATOL, rtol=0)


def test_p_sample(pmv, sched):
  model_fn = stub_model(pmv["mixed__model_output"], pmv["mixed__t_model"])
  out = dd.ddpm_step(sched, model_fn, nhwc(pmv["mixed__x_t"]), jnp.asarray(pmv["mixed__t"]),
                     nhwc(pmv["p_sample__noise"]))
  np.testing.assert_allclose(nchw(out.sample), pmv["p_sample__sample"], atol=ATOL, rtol=0)
  # Example 0 is at t = 0: no noise, the sample is the mean.
  np.testing.assert_allclose(nchw(out.sample)[0], pmv["mixed__mean"][0], atol=ATOL, rtol=0)


def test_per_example_vmap_equals_batch(pmv, sched):
  out_b = pmv["mixed__model_output"]
  x = nhwc(pmv["mixed__x_t"])
  t = jnp.asarray(pmv["mixed__t"], jnp.int32)
  mo = nhwc(out_b)

  def one(x1, t1, mo1):
    return dd.p_mean_variance(sched, lambda xx, tm: mo1, x1, t1)

  per = jax.vmap(one)(x, t, mo)
  batch = dd.p_mean_variance(sched, lambda xx, tm: mo, x, t)
  for a, b in zip(per[:3], batch[:3]):
    np.testing.assert_allclose(np.broadcast_to(a, x.shape), np.broadcast_to(b, x.shape), rtol=1e-6, atol=1e-6)


def test_fixed_variances():
  s = dd.make_schedule(100, "linear", "10")
  x = jnp.ones((3, 2, 2, 3))
  t = jnp.array([0, 4, 9])
  model = lambda x, tm: jnp.zeros_like(x)
  small = dd.p_mean_variance(s, model, x, t, variance="fixed_small")
  large = dd.p_mean_variance(s, model, x, t, variance="fixed_large")
  np64 = dd.make_schedule_np(100, "linear", "10")
  np.testing.assert_allclose(small.variance[:, 0, 0, 0], np64.posterior_variance[[0, 4, 9]], rtol=1e-6)
  np.testing.assert_allclose(large.variance[1:, 0, 0, 0], np64.betas[[4, 9]], rtol=1e-6)
  np.testing.assert_allclose(large.variance[0, 0, 0, 0], np64.posterior_variance[1], rtol=1e-6)
  np.testing.assert_allclose(jnp.exp(large.log_variance), large.variance, rtol=1e-5)
  with pytest.raises(CfjaxInputError, match="needs at least 6 channels"):
    dd.p_mean_variance(s, model, x, t)  # learned_range with a 3-channel model


def test_eps_xstart_roundtrip_and_posterior():
  s = dd.make_schedule(1000, "linear", "100")
  k1, k2 = jax.random.split(jax.random.key(0))
  x0 = jax.random.uniform(k1, (4, 8, 8, 3), minval=-1, maxval=1)
  eps = jax.random.normal(k2, x0.shape)
  t = jnp.array([1, 10, 50, 99])
  xt = dd.q_sample(s, x0, t, eps)
  np.testing.assert_allclose(dd.predict_xstart_from_eps(s, xt, t, eps), x0, atol=2e-4)
  np.testing.assert_allclose(dd.predict_eps_from_xstart(s, xt, t, x0), eps, atol=2e-3)
  # Posterior of the true x0: q(x_{t-1} | x_t, x_0) mean between sqrt(abar_prev) x0 and x_t.
  mean, var, logvar = dd.q_posterior_mean_variance(s, x0, xt, t)
  assert mean.shape == x0.shape and var.shape == (4, 1, 1, 1)
  np.testing.assert_allclose(jnp.exp(logvar[1:]), var[1:], rtol=1e-5)
  # p_mean_variance with an oracle epsilon model reproduces the true posterior (clip off).
  out = dd.p_mean_variance(s, lambda x, tm: eps, xt, t, clip_denoised=False, variance="fixed_small")
  np.testing.assert_allclose(out.mean, mean, atol=2e-4)


def _bin_probability_f64(x, mean, log_scale):
  """The tanh-approximated bin probability of an interior pixel, in float64."""
  def cdf(v):
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (v + 0.044715 * v ** 3)))
  inv = np.exp(-log_scale)
  return cdf(inv * (x - mean + 1 / 255)) - cdf(inv * (x - mean - 1 / 255))


@pytest.mark.parametrize("mean", [0.052, 0.053, -0.053])
def test_discretized_log_likelihood_keeps_tail_bins(mean):
  """A bin of probability about 1e-7 (z near -5 / +5), where 0.5 * (1 + tanh) in float32 is off by a
  whole rounding step of tanh near -1 and is exactly 0 past |z| = 7.9, against float64."""
  from cfjax.diffusion.losses import discretized_gaussian_log_likelihood
  x, log_scale = 0.0, -np.log(100.0)
  ref = np.log(_bin_probability_f64(x, mean, log_scale))
  assert -20 < ref < -13  # a bin probability between 2e-9 and 2e-6
  got = discretized_gaussian_log_likelihood(jnp.float32(x), means=jnp.float32(mean),
                                            log_scales=jnp.float32(log_scale))
  np.testing.assert_allclose(float(got), ref, atol=2e-3)


def test_discretized_log_likelihood_edge_bins_in_the_tail():
  """The edge bins take the whole tail: log P(x <= -1 + 1/255) and log P(x >= 1 - 1/255) far out."""
  from cfjax.diffusion.losses import discretized_gaussian_log_likelihood
  def cdf(v):
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (v + 0.044715 * v ** 3)))
  log_scale = np.log(0.1)
  lo = discretized_gaussian_log_likelihood(jnp.float32(-1.0), means=jnp.float32(-0.45),
                                           log_scales=jnp.float32(log_scale))
  hi = discretized_gaussian_log_likelihood(jnp.float32(1.0), means=jnp.float32(0.45),
                                           log_scales=jnp.float32(log_scale))
  ref = np.log(cdf((-1.0 + 0.45 + 1 / 255) / 0.1))
  np.testing.assert_allclose([float(lo), float(hi)], [ref, ref], rtol=1e-4)
