"""cfjax.metrics COUT: a constructed classifier with a hand-computed answer, and ACE's loop in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax import CfjaxInputError, metrics

H, W = 10, 10
BLOCK = np.zeros((H, W), bool)
BLOCK[2:6, 3:8] = True  # 20 pixels


def _pair(n=2):
  """x = 0; x' = 1 on the block (moved first) and 0.5 elsewhere (moved later)."""
  x = np.zeros((n, H, W, 3), np.float32)
  ce = np.where(BLOCK[None, :, :, None], np.float32(1.0), np.float32(0.5)) + x
  return x, ce.astype(np.float32)


def _fraction_moved(x):
  """Fraction of the block's pixels that already show x' (red channel 1), clipped away from 0 and 1."""
  t = jnp.sum(jnp.where(BLOCK, x[..., 0], 0.0), axis=(1, 2)) / np.float32(BLOCK.sum())
  return jnp.clip(t, 1e-6, 1 - 1e-6)


def _softmax_clf(x):
  t = _fraction_moved(x)
  return jnp.stack([jnp.log(1 - t), jnp.log(t), jnp.full_like(t, -30.0)], axis=1)


def _binary_clf(x):
  t = _fraction_moved(x)
  return (jnp.log(t) - jnp.log(1 - t))[:, None]


def test_cout_constructed_classifier_known_answer():
  # 100 pixels, 2 per step, 50 steps; the block's 20 pixels move in steps 1..10, so
  # c'_k = k / 10 for k <= 10 and 1 after: area (5 + 40) * 2/100 = 0.9; c: 0.1; COUT = 0.8.
  x, ce = _pair()
  b = {"original": x, "counterfactual": ce, "target": np.array([1, 1])}
  r = metrics.compute(metrics.cout(_softmax_clf), b)
  assert r["cout"] == pytest.approx(0.8, abs=1e-5) and r["cout_std"] == pytest.approx(0.0, abs=1e-5)
  rb = metrics.compute(metrics.cout(_binary_clf, binary=True), {"original": x, "counterfactual": ce})
  assert rb["cout"] == pytest.approx(0.8, abs=1e-5)
  score, c, cp = metrics.cout_curves(_softmax_clf, x, ce, jnp.array([1, 1]))
  np.testing.assert_allclose(np.asarray(cp[0, :12]), [0, .1, .2, .3, .4, .5, .6, .7, .8, .9, 1, 1], atol=1e-5)
  np.testing.assert_allclose(np.asarray(c + cp), 1.0, atol=1e-5)
  # The same classifier, with the 80 irrelevant pixels changed more (0.5 in each channel, 1.5 in
  # sum, against red 1 only on the block): they move first (steps 1..40), the block in steps
  # 41..50, so the areas swap: COUT = 0.1 - 0.9 = -0.8.
  late = np.where(BLOCK[None, :, :, None], np.float32(0.0), np.float32(0.5)) + x
  late[..., 0] = np.where(BLOCK, np.float32(1.0), np.float32(0.5))
  score = metrics.cout_curves(_softmax_clf, x, late, jnp.array([1, 1]))[0]
  np.testing.assert_allclose(np.asarray(score), -0.8, atol=1e-5)


def _ace_cout(probs, img, cf, step):
  """ACE's calculate_cout (eval_utils/cout_metrics.py) for one image, with numpy and a probs function."""
  h, w = img.shape[:2]
  num = h * w
  masks = np.abs(cf - img).sum(-1).reshape(-1)
  elements = np.argsort(-masks, kind="stable")
  cur = np.zeros(num)
  c, cp = probs(img)
  curves = [(c, cp)]
  for pixels in range(0, num, step):
    cur[elements[pixels:pixels + step]] = 1
    m = cur.reshape(h, w, 1)
    curves.append(probs(cf * m + img * (1 - m)))
  cs, cps = np.array([v[0] for v in curves]), np.array([v[1] for v in curves])

  def auc(v):
    return v[0] / 2 + v[1:-1].sum() + v[-1] / 2
  return (auc(cps) - auc(cs)) * step / num


def test_cout_matches_ace_loop_with_uneven_steps():
  rng = np.random.default_rng(0)
  h, w = 11, 13  # 143 pixels, step 2: 72 steps, the last one moves a single pixel
  weights = rng.normal(size=(h, w, 3, 4)).astype(np.float32)
  clf = lambda x: jnp.einsum("nhwc,hwck->nk", x, weights)  # noqa: E731
  x = rng.random((3, h, w, 3), dtype=np.float32)
  ce = rng.random((3, h, w, 3), dtype=np.float32)
  target = np.array([0, 2, 3])
  got = np.asarray(metrics.cout_curves(clf, x, ce, target)[0])
  source = np.argmax(np.asarray(clf(x)), 1)
  for i in range(3):
    def probs(im, i=i):
      p = np.asarray(jax.nn.softmax(clf(im[None].astype(np.float32)), axis=-1))[0]
      return p[source[i]], p[target[i]]
    assert got[i] == pytest.approx(_ace_cout(probs, x[i], ce[i], 2), abs=1e-5)


def test_cout_bad_input():
  x, ce = _pair()
  with pytest.raises(CfjaxInputError, match="binary=True"):
    metrics.compute(metrics.cout(_binary_clf), {"original": x, "counterfactual": ce, "target": np.array([1, 1])})
  with pytest.raises(CfjaxInputError, match="target must be"):
    metrics.compute(metrics.cout(_softmax_clf), {"original": x, "counterfactual": ce, "target": np.array([1, 3])})
  with pytest.raises(CfjaxInputError, match="needs batch keys target"):
    metrics.compute(metrics.cout(_softmax_clf), {"original": x, "counterfactual": ce})
