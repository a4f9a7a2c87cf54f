"""``cfjax.explain``: a method over arrays of examples, validated, streamed, optionally resumable.

Example:
  >>> import jax, cfjax
  >>> from cfjax import data
  >>> reg = cfjax.load_predictor("squares_regressor_rho0")
  >>> acre = cfjax.methods.acre(predictor=reg, diffusion=cfjax.load_diffusion("squares_ddpm"))
  >>> grid = data.squares_grid("lower", image_size=32)
  >>> x, targets = grid["image"][:4], grid["label"][:4] + 128 / 255
  >>> res = cfjax.explain(acre, x, targets, key=jax.random.key(0))  # doctest: +SKIP
  >>> res["counterfactual"].shape, res["success"].mean()  # doctest: +SKIP
  ((4, 32, 32, 3), 1.0)
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from cfjax._validate import CfjaxInputError
from cfjax.methods.base import REQUIRED_RESULTS, Method


_CONTRACT_CHECKED: set = set()


def check_result_contract(method: Method, inputs: np.ndarray, targets: np.ndarray) -> None:
  """Checks (by shape evaluation, no compilation) that ``method.result`` returns the required keys."""
  signature = (method.init, method.result, inputs.shape[1:], targets.shape[1:])
  if signature in _CONTRACT_CHECKED:
    return
  state = jax.eval_shape(method.init, method.params, jax.ShapeDtypeStruct(inputs.shape[1:], inputs.dtype),
                         jax.ShapeDtypeStruct(targets.shape[1:], targets.dtype), jax.random.key(0))
  out = jax.eval_shape(method.result, method.params, state)
  missing = [k for k in REQUIRED_RESULTS if k not in out]
  if missing:
    raise CfjaxInputError(f"method {method.name!r} breaks the result contract: its result lacks "
                          f"{', '.join(missing)} (required: {', '.join(REQUIRED_RESULTS)})")
  _CONTRACT_CHECKED.add(signature)


def _concat(parts: list[dict]) -> dict:
  parts = [p for p in parts if p]
  if not parts:
    return {}
  keys = set.intersection(*(set(p) for p in parts))
  out = {k: np.concatenate([p[k] for p in parts]) for k in keys}
  order = np.argsort(out["id"], kind="stable")
  return {k: v[order] for k, v in out.items()}


def explain(method: Method, inputs, targets, *, key, ids=None, num_slots: int = 16,
            steps_per_call: int | None = None, out_dir=None, run_settings: dict | None = None, devices=None,
            progress: bool = True, return_stats: bool = False, result_slots: int | None = None,
            init_slots: int | None = None, on_result: Callable[[dict], None] | None = None):
  """Explains every example towards its target with the continuous-batching engine.

  Everything is checked before anything compiles: the inputs and targets by the method's own
  ``validate`` (image size, channels, range, NaN; target shape, dtype and classes), the ids, and
  the run directory.

  Args:
    method: a method, e.g. ``cfjax.methods.acre(...)``.
    inputs: (N, H, W, C) images in [0, 1] (or, for latent methods, (N, *latent_shape) start codes).
    targets: (N,) class indices, or (N, *output_shape) target values.
    key: a PRNG key; example ``id`` uses ``fold_in(key, id)``.
    ids: (N,) unique non-negative example ids (default ``arange(N)``).
    out_dir: optional run directory for a resumable run (see :class:`ResultWriter`); finished
      examples found there are skipped and their stored results returned.
    run_settings: extra settings recorded in (and checked against) the run directory.
    num_slots, steps_per_call, result_slots, init_slots: see :class:`cfjax.engine.Engine`
      (``steps_per_call`` defaults to the method's own).
    on_result: called with each batch of finished results (a dict of numpy arrays with ``id``),
      after it is written to ``out_dir``: metrics can stream.

  Returns:
    dict of per-example arrays sorted by id (and run statistics if ``return_stats``). In a
    multi-process run, a process returns the results stored before it started and its own share.
  """
  from cfjax.engine import Engine, iterate_examples
  from cfjax.pipeline.writer import ResultWriter, read_results

  inputs, targets = method.validate(inputs, targets)
  if len(inputs) == 0:
    raise CfjaxInputError("nothing to explain: no inputs")
  ids = np.arange(len(inputs)) if ids is None else np.asarray(ids, np.int64)
  if ids.shape != (len(inputs),) or len(np.unique(ids)) != len(ids) or (ids < 0).any():
    raise CfjaxInputError(f"ids must be {len(inputs)} unique non-negative integers")
  check_result_contract(method, inputs, targets)
  pc, pi = jax.process_count(), jax.process_index()
  writer, skip, stored = None, set(), {}
  if out_dir is not None:
    settings = {"method": method.name, **method.settings,
                "key": np.asarray(jax.random.key_data(key)).tolist(), **(run_settings or {})}
    writer = ResultWriter(out_dir, settings, process_index=pi)
    skip = writer.done_ids()
    if skip:
      stored = read_results(out_dir)
  collected: list[dict] = []

  def write(out):
    if writer is not None:
      writer.write(out)
    collected.append(out)
    if on_result is not None:
      on_result(out)

  todo = [i for i in ids.tolist() if i % pc == pi and i not in skip]
  stats = {"num_done": 0, "seconds": 0.0}
  if todo:
    eng = Engine(method, num_slots=min(num_slots, len(todo)), steps_per_call=steps_per_call,
                 devices=devices, result_slots=result_slots, init_slots=init_slots)
    stats = eng.run(iterate_examples(inputs, targets, ids, skip=skip, process_index=pi, process_count=pc),
                    key=key, total=len(todo), on_result=write, progress=progress)
  results = _concat([stored] + collected)
  return (results, stats) if return_stats else results
