"""cfjax.metrics FID / sFID: the closed form for Gaussians, float64 streaming statistics, ACE's sFID."""

import numpy as np
import pytest

from cfjax import CfjaxInputError, metrics


def _closed_form_commuting(mu1, a, mu2, b):
  """FID of N(mu1, Q diag(a) Q^T) and N(mu2, Q diag(b) Q^T): sqrt(S1 S2) = Q diag(sqrt(ab)) Q^T."""
  return float(np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b)))


def _samples_with_moments(rng, n, mu, sigma):
  """n samples whose sample mean and (n - 1)-normalised covariance are exactly mu and sigma."""
  z = rng.normal(size=(n, len(mu)))
  z -= z.mean(0)
  w = np.linalg.cholesky(np.cov(z, rowvar=False))
  z = np.linalg.solve(w, z.T).T  # sample covariance now exactly I
  return z @ np.linalg.cholesky(sigma).T + mu


def test_frechet_distance_diagonal_and_commuting_closed_forms():
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
  # diagonal, by hand: |mu1 - mu2|^2 = 5; traces 14 + 14; sqrt terms 2 + 2 + 9 = 13 -> 5 + 28 - 26
  assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(7.0, abs=1e-12)
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
  s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
  assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
      _closed_form_commuting(mu1, a, mu2, b), abs=1e-10)
  assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_matches_scipy_sqrtm():
  linalg = pytest.importorskip("scipy.linalg")
  rng = np.random.default_rng(1)
  for d in (2, 7, 32):
    x, y = rng.normal(size=(d, 3 * d)), rng.normal(size=(d, 3 * d))
    s1, s2 = x @ x.T / d, y @ y.T / d + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    covmean = linalg.sqrtm(s1 @ s2).real
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8, abs=1e-8)


def test_fid_from_samples_with_exact_moments_equals_closed_form():
  rng = np.random.default_rng(2)
  q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
  a, b = np.array([0.5, 1.0, 2.0, 3.0]), np.array([1.5, 0.2, 2.0, 5.0])
  mu1, mu2 = np.array([0.0, 0.0, 1.0, 0.0]), np.array([0.5, 0.0, 0.0, -1.0])
  f1 = _samples_with_moments(rng, 50, mu1, q @ np.diag(a) @ q.T)
  f2 = _samples_with_moments(rng, 80, mu2, q @ np.diag(b) @ q.T)
  assert metrics.fid_from_features(f1, f2) == pytest.approx(_closed_form_commuting(mu1, a, mu2, b), abs=1e-9)


def test_streaming_statistics_are_float64_exact():
  rng = np.random.default_rng(3)
  f = (rng.normal(size=(301, 5)) + 1e4).astype(np.float32)  # a large offset: naive sums would cancel
  s = metrics.stats_init()
  for chunk in np.array_split(f, [1, 7, 8, 100, 250]):
    s = metrics.stats_update(s, chunk)
  mu, sigma = metrics.stats_finalize(s)
  f64 = f.astype(np.float64)
  np.testing.assert_allclose(mu, f64.mean(0), rtol=1e-14)
  np.testing.assert_allclose(sigma, np.cov(f64, rowvar=False), rtol=1e-9, atol=1e-12)
  assert mu.dtype == np.float64 and sigma.dtype == np.float64


def test_fid_metric_streams_unequal_sets():
  rng = np.random.default_rng(4)
  real = rng.random((13, 4, 4, 3), dtype=np.float32)
  fake = np.clip(real[:9] * np.float32(0.7) + np.float32(0.2), 0, 1)
  feat = lambda x: x.reshape(x.shape[0], -1)[:, :6]  # noqa: E731
  f = metrics.fid(feat)
  batches = [{"original": real[:5]}, {"original": real[5:9], "counterfactual": fake[:4]},
             {"counterfactual": fake[4:]}, {"original": real[9:]}]
  got = metrics.compute(f, batches)["fid"]
  ref = metrics.fid_from_features(feat(real), feat(fake))
  assert got == pytest.approx(ref, rel=1e-6)


def _ace_sfid(real, fake, seeds):
  out = []
  for s in seeds:
    perm = np.random.default_rng(s).permutation(len(real))
    n = len(real) // 2
    split2, split1 = perm[:n], perm[len(real) - n:]  # head and tail of the shuffled list
    out += [metrics.fid_from_features(real[split1], fake[split2]),
            metrics.fid_from_features(real[split2], fake[split1])]
  return np.mean(out)


def test_sfid_protocol_and_streaming():
  rng = np.random.default_rng(5)
  real = rng.random((21, 3, 3, 3), dtype=np.float32)  # odd: the middle example is left out
  fake = real.copy()
  feat = lambda x: x.reshape(x.shape[0], -1)[:, :4]  # noqa: E731
  r = metrics.sfid_from_features(feat(real), feat(fake), num_seeds=3, seed=7)
  assert r["sfid"] == pytest.approx(_ace_sfid(np.asarray(feat(real)), np.asarray(feat(fake)), [7, 8, 9]))
  assert r["sfid"] > 0.05  # CEs equal to their inputs, yet never compared with them
  assert metrics.fid_from_features(feat(real), feat(fake)) == pytest.approx(0.0, abs=1e-9)
  order = rng.permutation(21)
  batches = [{"id": order[i:i + 4], "original": real[order[i:i + 4]], "counterfactual": fake[order[i:i + 4]]}
             for i in range(0, 21, 4)]
  streamed = metrics.compute(metrics.sfid(feat, num_seeds=3, seed=7), batches)
  assert streamed["sfid"] == pytest.approx(r["sfid"], rel=1e-6)


def test_fid_bad_input():
  one = np.zeros((1, 3))
  with pytest.raises(CfjaxInputError, match="at least 2 samples"):
    metrics.stats_finalize(metrics.stats_update(metrics.stats_init(), one))
  with pytest.raises(CfjaxInputError, match="N >= 2"):
    metrics.fid_from_features(one, np.zeros((5, 3)))
  with pytest.raises(CfjaxInputError, match="dimensions differ"):
    metrics.fid_from_features(np.zeros((4, 3)), np.zeros((5, 2)))
  with pytest.raises(CfjaxInputError, match="one D"):
    metrics.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
  with pytest.raises(CfjaxInputError, match="paired"):
    metrics.sfid_from_features(np.zeros((6, 2)), np.zeros((5, 2)))
  with pytest.raises(CfjaxInputError, match="N >= 4"):
    metrics.sfid_from_features(np.zeros((3, 2)), np.zeros((3, 2)))
  x = np.zeros((2, 4, 4, 3), np.float32)
  with pytest.raises(CfjaxInputError, match="feature function must map"):
    metrics.compute(metrics.fid(lambda im: im.mean((1, 2, 3))), {"original": x, "counterfactual": x})
  traced = []

  def feat(im):
    traced.append(im.shape)
    return im.reshape(im.shape[0], -1)
  with pytest.raises(CfjaxInputError, match="at least 2 examples with 'counterfactual'"):
    metrics.compute(metrics.fid(feat), [{"original": x}, {"counterfactual": x[:1]}])
  with pytest.raises(CfjaxInputError, match="at least 4 examples"):
    metrics.compute(metrics.sfid(feat), {"original": x, "counterfactual": x})
  assert not traced  # refused before the feature function ever ran or compiled
  with pytest.raises(CfjaxInputError, match="at least 2 samples"):  # streamed: found at the end
    ev = metrics.Evaluator([metrics.fid(feat)])
    ev({"original": x})
    ev.result()
