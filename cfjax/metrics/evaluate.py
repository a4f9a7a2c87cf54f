"""Drivers: stream batches through several metrics, from arrays, run directories or ``on_result``.

:class:`Evaluator` validates every batch on the host (required keys, one leading size, each
metric's own checks) before anything is traced, pads it to a power-of-two size with a ``valid``
mask (so each metric's jitted ``update`` compiles for a handful of sizes only) and updates every
metric. It is an ``on_result`` callback of :func:`cfjax.explain`: the engine's result batches
carry ``id`` but not the inputs, so pass the inputs (and any ground truth) as ``data``, indexed
by example id, and they are joined in.

Example:
  >>> import numpy as np
  >>> from cfjax import metrics
  >>> x = np.zeros((4, 8, 8, 3), np.float32)
  >>> res = {"id": np.arange(4), "counterfactual": x + 0.5, "success": np.array([1, 1, 0, 1], bool)}
  >>> ev = metrics.Evaluator([metrics.success_rate(), metrics.proximity()], data={"original": x})
  >>> ev(res)
  >>> {k: round(v, 3) for k, v in sorted(ev.result().items())}
  {'l1': 96.0, 'l2': 6.928, 'mae': 0.5, 'success_rate': 0.75}
"""

from __future__ import annotations

from typing import Iterable, Sequence

import jax
import numpy as np

from cfjax._validate import CfjaxInputError
from cfjax.metrics.base import Batch, Metric
from cfjax.pipeline.writer import load_results  # noqa: F401  (re-exported)


def _padded_size(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


def _pad(batch: Batch, n: int) -> Batch:
  size = _padded_size(n)
  valid = np.asarray(batch.get("valid", np.ones(n, bool)), bool)
  if size == n:
    return {**batch, "valid": valid}
  out = {k: np.concatenate([v, np.repeat(v[-1:], size - n, axis=0)]) for k, v in batch.items()
         if k != "valid"}
  out["valid"] = np.concatenate([valid, np.zeros(size - n, bool)])
  return out


class Evaluator:
  """Streams batches through metrics; ``evaluator(batch)`` updates, ``result()`` finalizes.

  Args:
    metrics: the metrics (their output names must not collide).
    data: optional arrays indexed by example id (e.g. ``{"original": inputs, "ideal": twins}``),
      joined into each batch that lacks the key, by ``batch[id_key]``.
    id_key: the batch key naming each example's index into ``data``.
    pad: pad batches to power-of-two sizes (fewer compilations); results do not change.
  """

  def __init__(self, metrics: Sequence[Metric], *, data: dict | None = None, id_key: str = "id",
               pad: bool = True):
    self.metrics = list(metrics)
    if not self.metrics:
      raise CfjaxInputError("no metrics to evaluate.")
    names = [m.name for m in self.metrics]
    if len(set(names)) != len(names):
      raise CfjaxInputError(f"metric names must be unique, got {names}.")
    self.data = {k: np.asarray(v) for k, v in (data or {}).items()}
    self.id_key = id_key
    self.pad = pad
    self.states = [m.init() for m in self.metrics]
    self._updates = [jax.jit(m.update) if m.jittable else m.update for m in self.metrics]
    self.num_examples = 0

  def _prepare(self, batch: Batch) -> tuple[Batch, int]:
    batch = {k: np.asarray(v) for k, v in batch.items()}
    missing = [k for k in self.data if k not in batch]
    if missing:
      if self.id_key not in batch:
        raise CfjaxInputError(f"batch has no {self.id_key!r} to join {', '.join(missing)} by.")
      ids = batch[self.id_key].astype(np.int64)
      for k in missing:
        if ids.min() < 0 or ids.max() >= len(self.data[k]):
          raise CfjaxInputError(f"ids {ids.min()}..{ids.max()} out of range for data[{k!r}] "
                                f"({len(self.data[k])} entries).")
        batch[k] = self.data[k][ids]
    sizes = {k: (v.shape[0] if v.ndim else None) for k, v in batch.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
      raise CfjaxInputError("every array of a batch needs the same leading (example) size, got "
                            + ", ".join(f"{k}: {s}" for k, s in sizes.items()))
    n = next(iter(sizes.values()))
    if n == 0:
      raise CfjaxInputError("empty batch.")
    return batch, n

  def check_totals(self, batches: Sequence[Batch]) -> None:
    """Checks, before anything runs, that the batches hold enough examples for every metric."""
    counts: dict[str, int] = {}
    for b in batches:
      n = len(next(iter(b.values())))
      rows = int(np.sum(b["valid"])) if "valid" in b else n
      joined = set(self.data) if self.id_key in b else set()
      for k in set(b) | joined:
        counts[k] = counts.get(k, 0) + rows
    for m in self.metrics:
      for k, need in (m.min_counts or {}).items():
        if counts.get(k, 0) < need:
          raise CfjaxInputError(f"metric {m.name!r} needs at least {need} examples with {k!r}, "
                                f"the batches hold {counts.get(k, 0)}.")

  def update(self, batch: Batch) -> None:
    """Checks one batch and updates every metric with it."""
    batch, n = self._prepare(batch)
    parts = []
    for m in self.metrics:
      absent = [k for k in m.requires if k not in batch]
      if absent:
        raise CfjaxInputError(f"metric {m.name!r} needs batch keys {', '.join(absent)} "
                              f"(the batch has {', '.join(sorted(batch))}).")
      part = {k: batch[k] for k in (*m.requires, *m.accepts, "valid") if k in batch}
      if m.check is not None:
        m.check(part)
      parts.append(part)
    for i, part in enumerate(parts):
      part = _pad(part, n) if self.pad else part
      self.states[i] = self._updates[i](self.states[i], part)
    self.num_examples += n

  __call__ = update

  def result_by_metric(self) -> dict[str, dict[str, float]]:
    """Each metric's final values, by metric name."""
    return {m.name: m.finalize(s) for m, s in zip(self.metrics, self.states)}

  def result(self) -> dict[str, float]:
    """Every metric's final values in one dict."""
    out: dict[str, float] = {}
    for name, values in self.result_by_metric().items():
      clash = set(values) & set(out)
      if clash:
        raise CfjaxInputError(f"metric {name!r} reports {sorted(clash)} that another metric reports "
                              "too: give one of them another name.")
      out.update(values)
    return out


def compute(metrics: Metric | Sequence[Metric], batches: Batch | Iterable[Batch], **kwargs
            ) -> dict[str, float]:
  """One-shot helper: feeds ``batches`` (one dict or an iterable of dicts) through ``metrics``.

  Keyword arguments go to :class:`Evaluator`. Given a dict or a list of batches, the totals are
  checked first (e.g. FID needs 2 examples per set), so too little data fails before anything runs.

  Example:
    >>> import numpy as np
    >>> from cfjax import metrics
    >>> compute(metrics.success_rate(), {"success": np.array([True, False])})
    {'success_rate': 0.5}
  """
  ev = Evaluator([metrics] if isinstance(metrics, Metric) else metrics, **kwargs)
  if isinstance(batches, dict):
    batches = [batches]
  if isinstance(batches, (list, tuple)):
    ev.check_totals(batches)
  for b in batches:
    ev.update(b)
  return ev.result()


def evaluate_results(results, metrics: Sequence[Metric], *, data: dict | None = None,
                     id_key: str | None = None, batch_size: int = 64,
                     keys: Sequence[str] | None = None) -> dict[str, float]:
  """Evaluates stored CEs: a results dict, ``results.npz``, a job or a run directory.

  Args:
    results: see :func:`load_results`. Per-example arrays; a job's ``results.npz`` carries
      ``original``, ``target``, ``image_id``, ``label`` besides the method's outputs.
    metrics: the metrics.
    data: arrays indexed by example id joined into each batch (see :class:`Evaluator`).
    id_key: the key indexing ``data`` (default ``image_id`` where present, else ``id``).
    batch_size: examples per batch.
    keys: which result keys to stream (default: every key a metric requires or accepts, plus
      ``id_key``), so unused arrays such as trajectories are not loaded onto the device.

  Example:
    >>> import numpy as np
    >>> from cfjax import metrics
    >>> res = {"id": np.arange(3), "success": np.array([True, True, False])}
    >>> evaluate_results(res, [metrics.success_rate()])
    {'success_rate': 0.6666666666666666}
  """
  return stream_results(results, metrics, data=data, id_key=id_key, batch_size=batch_size,
                        keys=keys).result()


def stream_results(results, metrics: Sequence[Metric], *, data: dict | None = None,
                   id_key: str | None = None, batch_size: int = 64,
                   keys: Sequence[str] | None = None) -> Evaluator:
  """:func:`evaluate_results` without the final step: the :class:`Evaluator` that saw every batch.

  Example:
    >>> import numpy as np
    >>> from cfjax import metrics
    >>> ev = stream_results({"success": np.array([True, False])}, [metrics.success_rate()])
    >>> ev.result_by_metric()
    {'success_rate': {'success_rate': 0.5}}
  """
  res = load_results(results)
  if not res:
    raise CfjaxInputError(f"{results} holds no results.")
  id_key = id_key or ("image_id" if "image_id" in res else "id")
  wanted = set(keys) if keys is not None else {k for m in metrics for k in (*m.requires, *m.accepts)}
  wanted = (wanted | {id_key}) & set(res)
  n = len(next(iter(res.values())))
  ev = Evaluator(metrics, data=data, id_key=id_key)
  ev.check_totals([{k: res[k] for k in wanted}])
  for i in range(0, n, batch_size):
    ev.update({k: res[k][i:i + batch_size] for k in wanted})
  return ev
