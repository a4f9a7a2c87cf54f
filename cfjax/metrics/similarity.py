"""Similarity of a CE to its input under an embedding (FVA / FS, S^3) and diversity of several CEs.

An embedding is any function from NHWC images in [0, 1] to (N, D) features (it does its own
resizing and normalisation): a face-recognition network for FVA / FS (ACE: a VGGFace2 ResNet-50),
a self-supervised network for S^3 (ACE: SimSiam's ResNet-50 encoder), or anything else.

* ``fva``: the fraction of CEs whose cosine similarity to their input exceeds 0.5 (face
  verification accuracy), with ``fs``, the mean cosine similarity (ACE prints both).
* ``s3``: the mean cosine similarity.
* ``diversity``: for several CEs of one image, the mean distance between their features over
  all pairs, averaged over images.

Example:
  >>> import numpy as np
  >>> from cfjax import metrics
  >>> embed = lambda x: x.reshape(x.shape[0], -1)
  >>> x = np.full((2, 2, 2, 1), 0.5, np.float32)
  >>> metrics.compute(metrics.s3(embed), {"original": x, "counterfactual": x})
  {'s3': 1.0, 's3_std': 0.0}
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from cfjax._validate import CfjaxInputError, check_images
from cfjax.metrics.base import Batch, Metric, check_output, check_pair, mean_metric

_EPS = 1e-12


def cosine(a, b):
  """Row-wise cosine similarity of two (N, D) arrays (0 where a row is zero)."""
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  num = jnp.sum(a * b, axis=1)
  den = jnp.sqrt(jnp.sum(a * a, axis=1) * jnp.sum(b * b, axis=1))
  return num / jnp.maximum(den, jnp.float32(_EPS))


def _embedding_check(embed, name):
  def check(batch: Batch):
    check_pair(batch)
    check_output(embed, batch["original"], what="embedding", name=name, trailing_rank=1)
  return check


def cosine_similarity(embed: Callable, *, name: str = "cosine", threshold: float | None = None
                      ) -> Metric:
  """Mean cosine similarity between the embeddings of inputs and CEs (``name``, ``name_std``).

  Args:
    embed: images -> (N, D) features.
    name: the reported key.
    threshold: also report ``{name}_above``, the fraction of pairs above it.

  Example:
    >>> from cfjax.metrics import compute
    >>> embed = lambda x: x.reshape(x.shape[0], -1)
    >>> x = np.zeros((1, 1, 2, 1), np.float32) + np.array([1.0, 0.0], np.float32).reshape(1, 1, 2, 1)
    >>> y = np.zeros((1, 1, 2, 1), np.float32) + np.array([0.0, 1.0], np.float32).reshape(1, 1, 2, 1)
    >>> compute(cosine_similarity(embed), {"original": x, "counterfactual": y})
    {'cosine': 0.0, 'cosine_std': 0.0}
  """
  def per_example(b):
    s = cosine(embed(b["original"]), embed(b["counterfactual"]))
    out = {"sim": s}
    if threshold is not None:
      out["above"] = (s > jnp.float32(threshold)).astype(jnp.float32)
    return out

  def finalize(m, n):
    out = {name: float(m["sim"]), f"{name}_std": float(m["sim_std"])}
    if threshold is not None:
      out[f"{name}_above"] = float(m["above"])
    return out

  outputs = ("sim",) + (("above",) if threshold is not None else ())
  return mean_metric(name, per_example, requires=("original", "counterfactual"), outputs=outputs,
                     spread=("sim",), finalize=finalize, check=_embedding_check(embed, name))


def fva(embed: Callable, *, threshold: float = 0.5) -> Metric:
  """Face verification accuracy (``fva``) and face similarity (``fs``, the mean cosine), as ACE.

  Example:
    >>> from cfjax.metrics import compute
    >>> embed = lambda x: x.reshape(x.shape[0], -1)
    >>> x = np.ones((2, 1, 1, 2), np.float32)
    >>> y = np.stack([x[0], np.array([[[1.0, 0.0]]], np.float32)])
    >>> {k: round(v, 4) for k, v in compute(fva(embed, threshold=0.8), {"original": x, "counterfactual": y}).items()}
    {'fva': 0.5, 'fs': 0.8536}
  """
  inner = cosine_similarity(embed, name="fs", threshold=threshold)

  def finalize(state):
    r = inner.finalize(state)
    return {"fva": r["fs_above"], "fs": r["fs"]}

  return inner._replace(name="fva", finalize=finalize)


def s3(embed: Callable) -> Metric:
  """S^3: the mean cosine similarity of self-supervised embeddings (ACE: SimSiam), ``s3`` and ``s3_std``.

  Example:
    >>> from cfjax.metrics import compute
    >>> x = np.ones((2, 1, 1, 2), np.float32)
    >>> y = np.stack([x[0], np.array([[[1.0, 0.0]]], np.float32)])
    >>> round(compute(s3(lambda im: im.reshape(2, -1)), {"original": x, "counterfactual": y})["s3"], 4)
    0.8536
  """
  return cosine_similarity(embed, name="s3")


def _pairwise(f, distance: str):
  """(N, K, D) features -> (N,) mean distance over the K (K - 1) / 2 pairs of each row."""
  k = f.shape[1]
  i, j = np.triu_indices(k, 1)
  a, b = f[:, i], f[:, j]
  if distance == "l2":
    d = jnp.sqrt(jnp.sum((a - b) ** 2, axis=-1))
  elif distance == "l1":
    d = jnp.sum(jnp.abs(a - b), axis=-1)
  else:
    num = jnp.sum(a * b, axis=-1)
    den = jnp.sqrt(jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1))
    d = 1.0 - num / jnp.maximum(den, jnp.float32(_EPS))
  return jnp.mean(d, axis=1)


DISTANCES = ("l2", "l1", "cosine")


def diversity(features: Callable | None = None, *, distance: str = "l2",
              key: str = "counterfactuals") -> Metric:
  """Mean pairwise distance between several CEs of one image, averaged over images.

  Args:
    features: images -> (N, D) features; None compares the flattened pixels.
    distance: "l2", "l1" or "cosine" (1 - cosine similarity) between features.
    key: the batch key holding (N, K, H, W, C) CEs, K >= 2 per image.

  Example:
    >>> from cfjax.metrics import compute
    >>> ces = np.zeros((1, 3, 1, 1, 1), np.float32) + np.array([0.0, 0.5, 1.0], np.float32).reshape(1, 3, 1, 1, 1)
    >>> round(compute(diversity(distance="l1"), {"counterfactuals": ces})["diversity"], 4)
    0.6667
  """
  if distance not in DISTANCES:
    raise CfjaxInputError(f"diversity: distance must be one of {DISTANCES}, got {distance!r}.")

  def per_example(b):
    x = b[key].astype(jnp.float32)
    n, k = x.shape[:2]
    flat = x.reshape((n * k,) + x.shape[2:])
    f = flat.reshape(n * k, -1) if features is None else features(flat)
    return {"diversity": _pairwise(f.reshape(n, k, -1).astype(jnp.float32), distance)}

  def check(batch: Batch):
    x = np.asarray(batch[key])
    if x.ndim != 5 or x.shape[1] < 2:
      raise CfjaxInputError(f"diversity: {key} must be (N, K, H, W, C) with K >= 2 CEs per image, "
                            f"got shape {x.shape}.")
    flat = check_images(x.reshape((-1,) + x.shape[2:]), name=key, channels=None, tol=1e-4)
    if features is not None:
      check_output(features, flat, what="feature function", name="diversity", trailing_rank=1)

  return mean_metric("diversity", per_example, requires=(key,), outputs=("diversity",), check=check)
