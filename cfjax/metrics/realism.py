"""FID from streaming float64 feature statistics, and sFID with ACE's split protocol.

Features come from any jittable function of NHWC images in [0, 1] to (N, D) (InceptionV3's pool
features give the usual FID; a small network gives a testbed FID), or a
:class:`cfjax.metrics.features.FeatureExtractor`, called as it is (compiled with its parameters as
arguments). The mean and covariance of each set are accumulated on the host in float64 (Chan's
parallel update of the mean and the centred co-moment matrix), so neither the order nor the size of
the batches changes them beyond float64 round-off. The Frechet distance of two Gaussians,

    d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)),

uses tr (S1 S2)^(1/2) = tr (S1^(1/2) S2 S1^(1/2))^(1/2): two symmetric eigendecompositions on the
host, real by construction and well defined for singular covariances (fewer samples than
dimensions), where a general matrix square root can return complex round-off.

sFID (ACE): shuffle the examples, split them into two halves of floor(N/2) (with N odd the middle
one is left out), compute FID(real of half 1, CEs of half 2) and FID(real of half 2, CEs of half 1),
repeat over seeds and average, so no CE is compared with its own input.

Example:
  >>> import numpy as np
  >>> mu, s = np.zeros(2), np.eye(2)
  >>> frechet_distance(mu, s, mu + 1, 4 * s)   # 2 + tr(I + 4I - 2 * 2I)
  4.0
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from cfjax._validate import CfjaxInputError, check_images
from cfjax.metrics.base import Batch, Metric, check_output, check_pair


# -- streaming statistics (host, float64) ----------------------------------------------------
def stats_init() -> dict:
  """Empty feature statistics: count, float64 mean and centred co-moment matrix."""
  return {"n": 0, "mean": None, "m2": None}


def stats_update(stats: dict, features) -> dict:
  """Merges a (B, D) batch of features into the statistics (Chan et al.'s parallel update).

  Example:
    >>> s = stats_update(stats_update(stats_init(), np.array([[0.0], [2.0]])), np.array([[4.0]]))
    >>> mu, sigma = stats_finalize(s)
    >>> float(mu[0]), float(sigma[0, 0])
    (2.0, 4.0)
  """
  f = np.asarray(features, np.float64)
  if f.ndim != 2:
    raise CfjaxInputError(f"features must be (B, D), got shape {f.shape}.")
  if stats["mean"] is not None and f.shape[1] != stats["mean"].shape[0]:
    raise CfjaxInputError(f"features have dimension {f.shape[1]}, earlier ones {stats['mean'].shape[0]}.")
  if len(f) == 0:
    return stats
  nb, mb = len(f), f.mean(0)
  cb = f - mb
  m2b = cb.T @ cb
  if stats["n"] == 0:
    return {"n": nb, "mean": mb, "m2": m2b}
  na, ma = stats["n"], stats["mean"]
  n = na + nb
  delta = mb - ma
  return {"n": n, "mean": ma + delta * (nb / n),
          "m2": stats["m2"] + m2b + np.outer(delta, delta) * (na * nb / n)}


def stats_finalize(stats: dict, *, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
  """(mean (D,), covariance (D, D)) in float64; the covariance is unbiased (divides by n - 1)."""
  if stats["n"] < 2:
    raise CfjaxInputError(f"{name}: a covariance needs at least 2 samples, got {stats['n']}.")
  return stats["mean"], stats["m2"] / (stats["n"] - 1)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((s + s.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64 on the host.

  Example:
    >>> frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3))
    0.0
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
    raise CfjaxInputError(f"frechet_distance: means (D,) and covariances (D, D) of one D, got "
                          f"{mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}.")
  if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
    raise CfjaxInputError("frechet_distance: means and covariances must be finite.")
  r = _psd_sqrt(s1)
  inner = r @ s2 @ r
  tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def fid_from_features(real, fake) -> float:
  """FID between two (N, D) feature sets (float64 statistics).

  Example:
    >>> a = np.array([[0.0], [2.0]]); b = a + 3
    >>> fid_from_features(a, b)
    9.0
  """
  real, fake = np.asarray(real), np.asarray(fake)
  for nm, f in (("real", real), ("fake", fake)):
    if f.ndim != 2 or len(f) < 2:
      raise CfjaxInputError(f"{nm} features must be (N, D) with N >= 2, got shape {f.shape}.")
  if real.shape[1] != fake.shape[1]:
    raise CfjaxInputError(f"feature dimensions differ: {real.shape[1]} and {fake.shape[1]}.")
  return frechet_distance(*stats_finalize(stats_update(stats_init(), real), name="real"),
                          *stats_finalize(stats_update(stats_init(), fake), name="fake"))


def _host_features(features: Callable):
  from cfjax.metrics.features import host_callable
  jitted = host_callable(features)

  def get(x, valid):
    f = np.asarray(jitted(x))
    return f[np.asarray(valid, bool)] if valid is not None else f
  return get


def _feature_check(features, keys, name):
  def check(batch: Batch):
    for k in keys:
      if k in batch:
        check_images(batch[k], name=k, channels=None, tol=1e-4)
        check_output(features, batch[k], what="feature function", name=name, trailing_rank=1)
  return check


def fid(features: Callable, *, real_key: str = "original", fake_key: str = "counterfactual",
        name: str = "fid") -> Metric:
  """Streaming FID between the images under ``real_key`` and those under ``fake_key``.

  A batch may carry either set or both, so the two sets can differ in size (ACE: all inputs
  against all CEs). ``finalize`` raises :class:`~cfjax.CfjaxInputError` when a set has fewer
  than 2 samples.

  Example:
    >>> from cfjax.metrics import compute
    >>> embed = lambda x: x.reshape(x.shape[0], -1)[:, :1]
    >>> real = np.array([0.0, 0.5], np.float32).reshape(2, 1, 1, 1)
    >>> compute(fid(embed), [{"original": real}, {"counterfactual": real + 0.5}])
    {'fid': 0.25}
  """
  get = _host_features(features)

  def update(state, batch):
    valid = batch.get("valid")
    real, fake = state
    if real_key in batch:
      real = stats_update(real, get(batch[real_key], valid))
    if fake_key in batch:
      fake = stats_update(fake, get(batch[fake_key], valid))
    return real, fake

  def finalize(state):
    real, fake = state
    return {name: frechet_distance(*stats_finalize(real, name=f"{name} ({real_key})"),
                                   *stats_finalize(fake, name=f"{name} ({fake_key})"))}

  return Metric(name, lambda: (stats_init(), stats_init()), update, finalize,
                accepts=(real_key, fake_key), check=_feature_check(features, (real_key, fake_key), name),
                jittable=False, min_counts={real_key: 2, fake_key: 2})


def sfid_from_features(real, fake, *, num_seeds: int = 10, seed: int = 0) -> dict[str, float]:
  """sFID (ACE's protocol, module docstring) from paired (N, D) features: real[i] is CE fake[i]'s input.

  Returns:
    ``sfid`` (the mean of the 2 * num_seeds FIDs) and ``sfid_std``.

  Example:
    >>> rng = np.random.default_rng(0)
    >>> real = rng.normal(size=(40, 2))
    >>> r = sfid_from_features(real, real + 10.0, num_seeds=2)
    >>> round(r["sfid"] / 200, 1)
    1.0
  """
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  if real.ndim != 2 or real.shape != fake.shape:
    raise CfjaxInputError(f"sfid: real and CE features must be paired (N, D) arrays of one shape, "
                          f"got {real.shape} and {fake.shape}.")
  n = len(real)
  if n < 4:
    raise CfjaxInputError(f"sfid: each half needs at least 2 samples, so N >= 4; got N = {n}.")
  if num_seeds < 1:
    raise CfjaxInputError(f"sfid: num_seeds must be >= 1, got {num_seeds}.")
  values = []
  for s in range(num_seeds):
    perm = np.random.default_rng(seed + s).permutation(n)
    first, second = perm[:n // 2], perm[n - n // 2:]
    values.append(fid_from_features(real[first], fake[second]))
    values.append(fid_from_features(real[second], fake[first]))
  return {"sfid": float(np.mean(values)), "sfid_std": float(np.std(values))}


def sfid(features: Callable, *, num_seeds: int = 10, seed: int = 0, real_key: str = "original",
         fake_key: str = "counterfactual", id_key: str = "id") -> Metric:
  """Streaming sFID: keeps every example's two feature vectors on the host (float32), ordered by id.

  Each batch carries paired ``real_key`` and ``fake_key`` images; where it carries ``id_key``
  the examples are sorted by it at the end, so the result does not depend on the batch order.

  Example:
    >>> from cfjax.metrics import compute
    >>> x = np.random.default_rng(0).random((12, 2, 2, 1), dtype=np.float32)
    >>> r = compute(sfid(lambda im: im.reshape(im.shape[0], -1), num_seeds=2), {"original": x, "counterfactual": x})
    >>> sorted(r), r["sfid"] > 0
    (['sfid', 'sfid_std'], True)
  """
  get = _host_features(features)

  def update(state, batch):
    valid = batch.get("valid")
    ids = batch.get(id_key)
    ids = np.zeros(len(batch[real_key]), np.int64) if ids is None else np.asarray(ids)
    if valid is not None:
      ids = ids[np.asarray(valid, bool)]
    return {"real": state["real"] + [get(batch[real_key], valid)],
            "fake": state["fake"] + [get(batch[fake_key], valid)],
            "ids": state["ids"] + [ids], "ordered": state["ordered"] and id_key in batch}

  def finalize(state):
    if not state["real"]:
      raise CfjaxInputError("sfid saw no examples.")
    real, fake = np.concatenate(state["real"]), np.concatenate(state["fake"])
    if state["ordered"]:
      order = np.argsort(np.concatenate(state["ids"]), kind="stable")
      real, fake = real[order], fake[order]
    return sfid_from_features(real, fake, num_seeds=num_seeds, seed=seed)

  def check(batch: Batch):
    check_pair(batch, real_key, fake_key)
    check_output(features, batch[real_key], what="feature function", name="sfid", trailing_rank=1)

  return Metric("sfid", lambda: {"real": [], "fake": [], "ids": [], "ordered": True}, update,
                finalize, requires=(real_key, fake_key), accepts=(id_key,), check=check,
                jittable=False, min_counts={real_key: 4})
