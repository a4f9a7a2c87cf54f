"""ACE's filter F_tau, its input gradient, the mask and the RePaint refinement vs the official code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax.diffusion import make_schedule
from cfjax.methods import ace_filter, generate_mask, repaint


def nhwc(a):
  a = np.asarray(a)
  return np.moveaxis(a, -3, -1)


@pytest.fixture(scope="module")
def sched():
  return make_schedule(500, "linear", "25")


def _model_fn(unet, seen=None):
  def fn(x, t):
    if seen is not None:
      seen.append(t)
    return unet.apply(unet.params, x, t)
  return fn


# Both chain modes are checked against this fixture at the diffusion level
# (tests/test_diffusion_fixtures_unet.py); here the method's own filter, in its default mode.
@pytest.mark.parametrize("mode", ["unrolled"])
def test_filter_forward_and_gradient(fixtures_dir, unet_small, sched, mode):
  d = np.load(fixtures_dir / "ace_filter.npz")
  x0, nq, ns, w = (jnp.asarray(nhwc(d[k])) for k in ("x0", "noise_q", "noise_steps", "w"))
  tau = int(d["tau"])

  def loss(x):
    out = ace_filter(sched, _model_fn(unet_small), x, tau, nq, ns, mode=mode)
    return jnp.sum(w * out), out

  (l, out), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(x0)
  np.testing.assert_allclose(np.asarray(out), nhwc(d["out"]), atol=1e-4)
  np.testing.assert_allclose(float(l), float(d["loss"]), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g), nhwc(d["grad_x0"]), atol=2e-4)


def test_filter_feeds_original_timesteps(fixtures_dir, unet_small, sched):
  d = np.load(fixtures_dir / "ace_filter.npz")
  seen = []
  x0 = jnp.asarray(nhwc(d["x0"]))
  ace_filter(sched, _model_fn(unet_small, seen), x0, 5, x0, jnp.stack([x0] * 5))
  assert [int(t[0]) for t in seen] == d["t_model_loop"].tolist()


@pytest.mark.parametrize("mode", ["unrolled", "rolled"])
def test_mask_and_repaint(fixtures_dir, unet_small, sched, mode):
  d = np.load(fixtures_dir / "ace_repaint.npz")
  x, pe = jnp.asarray(nhwc(d["x"])), jnp.asarray(nhwc(d["pe"]))
  mask, dil, boolmask = generate_mask(x, pe, int(d["dilation"]), float(d["threshold"]))
  np.testing.assert_allclose(np.asarray(mask), d["mask"][:, 0], atol=1e-6)
  np.testing.assert_allclose(np.asarray(dil), d["dil_mask"][:, 0], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(boolmask), d["boolmask"][:, 0])
  ce = jax.jit(lambda *a: repaint(sched, _model_fn(unet_small), *a, mode=mode), static_argnums=3)(
      x, pe, boolmask, int(d["tau"]), jnp.asarray(nhwc(d["noise_q"])),
      jnp.asarray(nhwc(d["noise_orig"])), jnp.asarray(nhwc(d["noise_steps"])))
  np.testing.assert_allclose(np.asarray(ce), nhwc(d["ce"]), atol=1e-4)
  keep = np.asarray(boolmask, bool)
  # Outside the mask the CE is exactly the original.
  np.testing.assert_array_equal(np.asarray(ce)[keep], np.asarray(x)[keep])
