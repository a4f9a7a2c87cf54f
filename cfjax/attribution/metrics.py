"""Held-out metrics of attribute heads: accuracy / AUC / log-loss, R^2 / RMSE, deviance explained.

Example:
  >>> import numpy as np
  >>> auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
  0.75
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cfjax._validate import CfjaxInputError

def auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN with one class."""
  labels = labels.astype(bool)
  npos, nneg = int(labels.sum()), int((~labels).sum())
  if npos == 0 or nneg == 0:
    return float("nan")
  order = np.argsort(scores, kind="stable")
  ranks = np.empty(scores.size, np.float64)
  sorted_s = scores[order]
  # Average ranks over ties.
  starts = np.r_[0, np.nonzero(np.diff(sorted_s))[0] + 1]
  ends = np.r_[starts[1:], scores.size]
  for s, e in zip(starts, ends):
    ranks[order[s:e]] = 0.5 * (s + e - 1) + 1
  return float((ranks[labels].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def _metrics(family: str, pred: np.ndarray, y: np.ndarray) -> dict:
  m = np.isfinite(y)
  pred, y = pred[m].astype(np.float64), y[m].astype(np.float64)
  out = {"n": int(y.size)}
  if y.size == 0:
    return out
  if family == "logistic":
    p = np.clip(pred, 1e-12, 1 - 1e-12)
    out.update(accuracy=float(((pred >= 0.5) == (y > 0.5)).mean()), auc=auc(pred, y),
               log_loss=float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean()))
    return out
  ss_res, ss_tot = float(np.square(y - pred).sum()), float(np.square(y - y.mean()).sum())
  out.update(r2=1 - ss_res / ss_tot if ss_tot > 0 else float("nan"), rmse=float(np.sqrt(ss_res / y.size)))
  if family == "poisson":
    def dev(mu):
      mu = np.maximum(mu, 1e-12)
      return 2 * float((np.where(y > 0, y * np.log(np.maximum(y, 1e-12) / mu), 0.0) - (y - mu)).sum())
    d0 = dev(np.full_like(y, y.mean()))
    out["deviance_explained"] = 1 - dev(pred) / d0 if d0 > 0 else float("nan")
  return out


def evaluate(heads, latents, attributes: Mapping[str, Any]) -> dict:
  """Per-attribute metrics of ``heads`` on labelled latents: accuracy / AUC / log-loss (logistic),
  R^2 / RMSE (linear), and also deviance explained (Poisson). NaN labels are skipped."""
  z = heads.check_latents(latents)
  pred = np.asarray(heads.predict(z))
  out = {}
  for n, y in attributes.items():
    i = heads.index(n)[0]
    y = np.asarray(y, np.float64)
    if y.shape != (z.shape[0],):
      raise CfjaxInputError(f"attribute {n!r} must have {z.shape[0]} labels, got shape {y.shape}")
    out[n] = _metrics(heads.families[i], pred[:, i], y)
  return out
