"""Targets of a counterfactual, per image or by rule, validated before anything compiles.

Rules (``make_targets(rule, ...)``):

* classification: ``"flip"`` (binary: the other class of the current decision), ``"class:K"``
  (a fixed class), ``"next"`` ((decision + 1) mod K);
* regression: ``"value:V"`` (a fixed value), ``"shift:D"`` (prediction + D), ``"mirror"`` (the
  squares testbed's ideal counterfactual: label + 128/255 below 0.5, label - 128/255 otherwise),
  ``"values:V1,V2,..."`` (several targets per image: one job per (image, target) pair).

Example:
  >>> import numpy as np
  >>> make_targets("mirror", task="regression", predictions=np.array([0.1, 0.9]),
  ...              labels=np.array([0.1, 0.9])).astype(float).round(3).tolist()
  [[0.602], [0.398]]
"""

from __future__ import annotations

import numpy as np

from cfjax._validate import CfjaxInputError

MIRROR_SHIFT = 128 / 255


def decisions(outputs: np.ndarray) -> np.ndarray:
  """Class decisions from one logit per image (N,) or logits (N, K)."""
  outputs = np.asarray(outputs)
  return (outputs > 0).astype(np.int32) if outputs.ndim == 1 else outputs.argmax(-1).astype(np.int32)


def num_classes_of(outputs: np.ndarray) -> int:
  outputs = np.asarray(outputs)
  return 2 if outputs.ndim == 1 else int(outputs.shape[-1])


def make_targets(rule: str, *, task: str, predictions, labels=None,
                 label_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
  """Targets for N images as an (N, T) array (T targets per image; T = 1 for most rules).

  Args:
    rule: see the module docstring.
    task: "classification" or "regression".
    predictions: model outputs on the originals: logits (N,) / (N, K), or values (N,).
    labels: dataset labels (needed by "mirror").
    label_range: valid range of regression targets.

  Raises:
    CfjaxInputError: unknown rule, a class target equal to the current decision, or a regression
      target outside ``label_range`` (naming the images).
  """
  predictions = np.asarray(predictions)
  name, _, arg = str(rule).partition(":")
  n = len(predictions)
  if task == "classification":
    dec = decisions(predictions)
    k = num_classes_of(predictions)
    if name == "flip":
      if k != 2:
        raise CfjaxInputError(f"target rule 'flip' needs a binary classifier; this one has {k} classes: "
                              "use 'class:K' or 'next'")
      t = 1 - dec
    elif name == "class":
      try:
        c = int(arg)
      except ValueError as e:
        raise CfjaxInputError(f"target rule {rule!r}: expected 'class:K' with an integer K") from e
      if not 0 <= c < k:
        raise CfjaxInputError(f"target class {c} is out of range for a {k}-class model")
      t = np.full(n, c, np.int32)
    elif name == "next":
      t = (dec + 1) % k
    else:
      raise CfjaxInputError(f"unknown classification target rule {rule!r}; use flip, class:K or next")
    check_class_targets(t, predictions)
    return t.astype(np.int32)[:, None]
  if task != "regression":
    raise CfjaxInputError(f"unknown task {task!r}")
  pred = predictions.reshape(n)
  if name == "value":
    t = np.full((n, 1), float(arg), np.float32)
  elif name == "shift":
    t = (pred + float(arg))[:, None]
  elif name == "values":
    vals = [float(v) for v in arg.split(",") if v.strip()]
    if not vals:
      raise CfjaxInputError("target rule 'values:' needs at least one value")
    t = np.tile(np.asarray(vals, np.float32), (n, 1))
  elif name == "mirror":
    if labels is None:
      raise CfjaxInputError("target rule 'mirror' needs the dataset labels")
    lab = np.asarray(labels, np.float32).reshape(n)
    t = np.where(lab < 0.5, lab + MIRROR_SHIFT, lab - MIRROR_SHIFT)[:, None]
  else:
    raise CfjaxInputError(f"unknown regression target rule {rule!r}; use value:V, shift:D, values:V1,V2 or mirror")
  t = t.astype(np.float32)
  check_value_targets(t, label_range)
  return t


def check_class_targets(targets, predictions) -> None:
  """Refuses class targets equal to the current decision (there is nothing to explain)."""
  targets = np.asarray(targets).reshape(len(predictions))
  same = np.nonzero(targets == decisions(predictions))[0]
  if same.size:
    raise CfjaxInputError(
        f"{same.size} target(s) equal the current decision (images {same[:10].tolist()}); "
        "a counterfactual needs a different class")


def check_value_targets(targets, label_range) -> None:
  lo, hi = label_range
  t = np.asarray(targets, np.float64)
  if not np.isfinite(t).all():
    raise CfjaxInputError("regression targets contain NaN or inf")
  bad = np.nonzero(((t < lo) | (t > hi)).reshape(len(t), -1).any(axis=1))[0]
  if bad.size:
    raise CfjaxInputError(
        f"regression target(s) outside the label range [{lo}, {hi}] (images {bad[:10].tolist()}, "
        f"e.g. {float(t.reshape(len(t), -1)[bad[0]].max()):.3g})")
