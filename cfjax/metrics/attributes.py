"""Sparsity in attribute space: MNAC and CD from an oracle's attribute predictions (as ACE computes them).

An oracle predicts A binary attributes as probabilities (N, A) in [0, 1]; an attribute counts as
present where its probability exceeds ``threshold`` (0.5). Either pass the oracle (images in
[0, 1] -> (N, A) probabilities), or store its predictions in the batch as
``attributes_original`` and ``attributes_counterfactual``.

* MNAC: the mean number of attributes whose predicted presence differs between x and x'
  (ACE counts every attribute, the explained one included; ``exclude`` leaves some out).
* CD (correlation difference): with delta_i = present_i(x') - present_i(x) over the CEs and q the
  explained (query) attribute, CD = sum_i |corr(delta_i, delta_q) - c_i|, where c_i is the
  correlation of attribute i with the query attribute over the data set's labels
  (:func:`attribute_correlations`); a correlation is 0 where a variance is 0 (as ACE sets NaN
  to 0). Low CD: the CEs change attributes as often together as the data does.

Example:
  >>> import numpy as np
  >>> from cfjax import metrics
  >>> p = np.array([[0.9, 0.1, 0.2]], np.float32)
  >>> q = np.array([[0.2, 0.8, 0.3]], np.float32)
  >>> metrics.compute(metrics.mnac(), {"attributes_original": p, "attributes_counterfactual": q})
  {'mnac': 2.0, 'mnac_std': 0.0}
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from cfjax._validate import CfjaxInputError
from cfjax.metrics.base import Batch, Metric, check_output, check_pair, mean_metric

KEYS = ("attributes_original", "attributes_counterfactual")


def _presence(oracle, threshold):
  def get(b):
    if oracle is not None:
      p, q = oracle(b["original"]), oracle(b["counterfactual"])
    else:
      p, q = b[KEYS[0]], b[KEYS[1]]
    thr = jnp.float32(threshold)
    return (p.astype(jnp.float32) > thr), (q.astype(jnp.float32) > thr)
  return get


def _checker(oracle, name, num_attributes=None, exclude=()):
  def check(batch: Batch):
    if oracle is not None:
      check_pair(batch)
      shape = check_output(oracle, batch["original"], what="attribute oracle", name=name,
                           trailing_rank=1)
    else:
      shapes = [np.shape(batch[k]) for k in KEYS]
      if len(shapes[0]) != 2 or shapes[0] != shapes[1]:
        raise CfjaxInputError(f"{name}: {KEYS[0]} and {KEYS[1]} must both be (N, A) probabilities, "
                              f"got {shapes[0]} and {shapes[1]}.")
      shape = shapes[0]
    if num_attributes is not None and shape[1] != num_attributes:
      raise CfjaxInputError(f"{name}: the oracle predicts {shape[1]} attributes, but the data set "
                            f"correlations have {num_attributes}.")
    bad = [i for i in exclude if not 0 <= i < shape[1]]
    if bad:
      raise CfjaxInputError(f"{name}: exclude holds {bad}, outside the {shape[1]} attributes.")
  return check


def mnac(oracle: Callable | None = None, *, threshold: float = 0.5,
         exclude: Sequence[int] = ()) -> Metric:
  """Mean number of attributes changed (MNAC), and its standard deviation over CEs.

  Args:
    oracle: images -> (N, A) attribute probabilities; None reads the stored predictions.
    threshold: probability above which an attribute is present.
    exclude: attribute indices not to count (e.g. the explained attribute).

  Example:
    >>> from cfjax.metrics import compute
    >>> p = np.array([[0.9, 0.1], [0.9, 0.1]], np.float32)
    >>> q = np.array([[0.1, 0.9], [0.9, 0.1]], np.float32)
    >>> compute(mnac(exclude=[0]), {"attributes_original": p, "attributes_counterfactual": q})
    {'mnac': 0.5, 'mnac_std': 0.5}
  """
  presence = _presence(oracle, threshold)
  excluded = tuple(int(i) for i in exclude)

  def per_example(b):
    a, c = presence(b)
    changed = (a != c).astype(jnp.float32)
    if excluded:
      keep = jnp.ones(changed.shape[1], jnp.float32).at[jnp.array(excluded)].set(0.0)
      changed = changed * keep
    count = jnp.sum(changed, axis=1)
    return {"mnac": count}

  keys = ("original", "counterfactual") if oracle is not None else KEYS
  return mean_metric("mnac", per_example, requires=keys, outputs=("mnac",), spread=("mnac",),
                     check=_checker(oracle, "mnac", exclude=excluded))


def attribute_correlations(attributes, query: int) -> np.ndarray:
  """Pearson correlation of every attribute with attribute ``query`` over a data set's labels.

  Args:
    attributes: (N, A) labels (0/1, -1/1 or booleans; the correlation does not depend on which).
    query: the explained attribute's index.

  Returns:
    (A,) float64 correlations, 0 where an attribute is constant.

  Example:
    >>> labels = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 1], [0, 0, 1]])
    >>> attribute_correlations(labels, 0).tolist()
    [1.0, 1.0, 0.0]
  """
  a = np.asarray(attributes, np.float64)
  if a.ndim != 2 or len(a) < 2:
    raise CfjaxInputError(f"attributes must be (N, A) with N >= 2, got shape {a.shape}.")
  if not 0 <= query < a.shape[1]:
    raise CfjaxInputError(f"query {query} out of range for {a.shape[1]} attributes.")
  return _pearson(a, a[:, query])


def _pearson(a: np.ndarray, q: np.ndarray) -> np.ndarray:
  a = a - a.mean(0)
  q = q - q.mean()
  den = np.sqrt((a * a).sum(0) * (q * q).sum())
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, (a * q[:, None]).sum(0) / np.where(den > 0, den, 1.0), 0.0)


def cd(correlations, query: int, oracle: Callable | None = None, *, threshold: float = 0.5) -> Metric:
  """Correlation difference (CD) between the CEs' attribute changes and the data set's correlations.

  Args:
    correlations: (A,) correlations of each attribute with the query over the data set, e.g.
      from :func:`attribute_correlations` on the training labels.
    query: index of the explained attribute.
    oracle: images -> (N, A) attribute probabilities; None reads the stored predictions.
    threshold: probability above which an attribute is present.

  Example:
    >>> from cfjax.metrics import compute
    >>> p = np.array([[0.9, 0.9], [0.1, 0.1]], np.float32)  # the CEs flip both attributes
    >>> q = np.array([[0.1, 0.1], [0.9, 0.9]], np.float32)
    >>> b = {"attributes_original": p, "attributes_counterfactual": q}
    >>> compute(cd(np.array([1.0, 0.0]), query=0), b)   # the data set says: independent
    {'cd': 1.0}
  """
  corr = np.asarray(correlations, np.float64)
  if corr.ndim != 1 or not 0 <= int(query) < len(corr):
    raise CfjaxInputError(f"cd: correlations must be (A,) and query in [0, A), got shape "
                          f"{corr.shape} and query {query}.")
  a_dim, query = len(corr), int(query)
  presence = _presence(oracle, threshold)

  def per_example(b):
    a, c = presence(b)
    d = c.astype(jnp.float32) - a.astype(jnp.float32)
    dq = d[:, query]
    return {"d": d, "dd": d * d, "dq": dq, "dqdq": dq * dq, "ddq": d * dq[:, None]}

  def finalize(m, n):
    cov = m["ddq"] - m["d"] * m["dq"]
    var = (m["dd"] - m["d"] ** 2) * (m["dqdq"] - m["dq"] ** 2)
    ours = np.where(var > 1e-12, cov / np.sqrt(np.where(var > 1e-12, var, 1.0)), 0.0)
    return {"cd": float(np.abs(ours - corr).sum())}

  keys = ("original", "counterfactual") if oracle is not None else KEYS
  outputs = {"d": (a_dim,), "dd": (a_dim,), "dq": (), "dqdq": (), "ddq": (a_dim,)}
  return mean_metric("cd", per_example, requires=keys, outputs=outputs, finalize=finalize,
                     check=_checker(oracle, "cd", a_dim))
