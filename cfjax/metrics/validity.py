"""Validity and proximity: success / flip rate, oracle MAE for regressors, l1 / l2 distances.

A classifier or regressor here is a function of a batch of NHWC images in [0, 1]: a
classifier returns logits (N, K), or (N,) / (N, 1) for a binary classifier with one logit (class
1 where the logit is positive); a regressor returns (N,) or (N, D) values. Without one, the
metrics read the predictions the method stored (``prediction`` of the CE, ``original_prediction``
of the input), as a job's ``results.npz`` holds them.

Example:
  >>> import numpy as np
  >>> from cfjax import metrics
  >>> x = np.zeros((2, 4, 4, 3), np.float32)
  >>> r = metrics.compute(metrics.proximity(), {"original": x, "counterfactual": x + np.float32(0.25)})
  >>> {k: round(v, 4) for k, v in r.items()}
  {'l1': 12.0, 'l2': 1.7321, 'mae': 0.25}
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from cfjax._validate import CfjaxInputError, check_images
from cfjax.metrics.base import Batch, Metric, check_output, check_pair, mean_metric


def _flat(x):
  return x.reshape(x.shape[0], -1).astype(jnp.float32)


def predicted_class(logits) -> jnp.ndarray:
  """(N,) int32 classes from (N, K) logits, or from (N,) / (N, 1) binary logits (positive: 1).

  Example:
    >>> predicted_class(jnp.array([[0.1, 2.0], [3.0, 0.0]])).tolist(), predicted_class(jnp.array([-1.0, 2.0])).tolist()
    ([1, 0], [0, 1])
  """
  logits = jnp.asarray(logits)
  if logits.ndim == 1 or logits.shape[-1] == 1:
    return (logits.reshape(logits.shape[0]) > 0).astype(jnp.int32)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def success_rate(key: str = "success") -> Metric:
  """Fraction of CEs the method declares successful (its own ``success`` flag).

  Example:
    >>> from cfjax.metrics import compute
    >>> compute(success_rate(), {"success": np.array([True, True, False, True])})
    {'success_rate': 0.75}
  """
  return mean_metric("success_rate", lambda b: {"success_rate": b[key].astype(jnp.float32)},
                     requires=(key,), outputs=("success_rate",))


def _check_classifier(classifier, name):
  def check(batch: Batch):
    check_pair(batch)
    check_output(classifier, batch["original"], what="classifier", name=name, trailing_rank=(0, 1))
  return check


def flip_rate(classifier: Callable | None = None, *, to_target: bool = False) -> Metric:
  """Fraction of CEs whose predicted class differs from the input's (and, optionally, hits the target).

  Args:
    classifier: images -> logits; None reads ``original_prediction`` and ``prediction``.
    to_target: also report ``target_rate``, the fraction whose class equals ``target``.

  Returns:
    Metric reporting ``flip_rate`` (and ``target_rate``).

  Example:
    >>> from cfjax.metrics import compute
    >>> b = {"original_prediction": np.array([[2.0, 0.0], [2.0, 0.0]], np.float32),
    ...      "prediction": np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)}
    >>> compute(flip_rate(), b)
    {'flip_rate': 0.5}
  """
  keys = ("original", "counterfactual") if classifier is not None else ("original_prediction", "prediction")
  outputs = ("flip_rate", "target_rate") if to_target else ("flip_rate",)

  def per_example(b):
    if classifier is not None:
      before, after = classifier(b["original"]), classifier(b["counterfactual"])
    else:
      before, after = b["original_prediction"], b["prediction"]
    c0, c1 = predicted_class(before), predicted_class(after)
    out = {"flip_rate": (c0 != c1).astype(jnp.float32)}
    if to_target:
      out["target_rate"] = (c1 == b["target"].astype(jnp.int32)).astype(jnp.float32)
    return out

  check = _check_classifier(classifier, "flip_rate") if classifier is not None else None
  return mean_metric("flip_rate", per_example, requires=keys + (("target",) if to_target else ()),
                     outputs=outputs, check=check)


def oracle_mae(regressor: Callable | None = None, *, tolerance: float | None = None) -> Metric:
  """Mean |f(x') - target| of a regressor f (an independent oracle, or the explained model).

  Args:
    regressor: images -> (N,) or (N, D) values; None reads the stored ``prediction``.
    tolerance: also report ``oracle_within_tolerance``, the fraction with error <= tolerance.

  Example:
    >>> from cfjax.metrics import compute
    >>> b = {"prediction": np.array([0.5, 0.9], np.float32), "target": np.array([0.6, 0.6], np.float32)}
    >>> {k: round(v, 4) for k, v in compute(oracle_mae(tolerance=0.2), b).items()}
    {'oracle_mae': 0.2, 'oracle_within_tolerance': 0.5}
  """
  key = "counterfactual" if regressor is not None else "prediction"
  outputs = ("oracle_mae", "oracle_within_tolerance") if tolerance is not None else ("oracle_mae",)

  def per_example(b):
    pred = regressor(b[key]) if regressor is not None else b[key]
    pred = pred.reshape(pred.shape[0], -1).astype(jnp.float32)
    target = b["target"].reshape(pred.shape[0], -1).astype(jnp.float32)
    err = jnp.mean(jnp.abs(pred - target), axis=1)
    out = {"oracle_mae": err}
    if tolerance is not None:
      out["oracle_within_tolerance"] = (err <= jnp.float32(tolerance)).astype(jnp.float32)
    return out

  def check(batch: Batch):
    n = len(batch["target"])
    if regressor is not None:
      check_images(batch[key], name=key, channels=None, tol=1e-4)
      check_output(regressor, batch[key], what="regressor", name="oracle_mae", trailing_rank=(0, 1))
      return
    pred = np.asarray(batch[key])
    if pred.reshape(n, -1).shape != np.asarray(batch["target"]).reshape(n, -1).shape:
      raise CfjaxInputError(f"oracle_mae: prediction {pred.shape} and target "
                            f"{np.shape(batch['target'])} do not match.")

  return mean_metric("oracle_mae", per_example, requires=(key, "target"), outputs=outputs, check=check)


def proximity() -> Metric:
  """Distances between each input and its CE, averaged over examples.

  Reports ``l1`` (the l1 norm of x' - x), ``l2`` (its Euclidean norm) and ``mae`` (mean absolute
  change per pixel and channel), in [0, 1] image units.

  Example:
    >>> from cfjax.metrics import compute
    >>> x = np.zeros((1, 2, 2, 1), np.float32)
    >>> compute(proximity(), {"original": x, "counterfactual": x + np.float32(0.5)})
    {'l1': 2.0, 'l2': 1.0, 'mae': 0.5}
  """
  def per_example(b):
    d = _flat(b["counterfactual"]) - _flat(b["original"])
    return {"l1": jnp.sum(jnp.abs(d), axis=1), "l2": jnp.sqrt(jnp.sum(d * d, axis=1)),
            "mae": jnp.mean(jnp.abs(d), axis=1)}

  return mean_metric("proximity", per_example, requires=("original", "counterfactual"),
                     outputs=("l1", "l2", "mae"), check=check_pair)
