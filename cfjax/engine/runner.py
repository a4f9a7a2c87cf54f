"""The continuous-batching engine: any method over a dataset, compiled once, sharded across devices.

A fixed number of *slots* holds one example each. The engine advances all slots by ``K`` method
steps per call (the method's per-slot ``done`` flag turns finished slots into no-ops), then moves
finished slots' states into a *result buffer* and refills the slots with the next examples.
Throughput therefore follows the mean number of iterations, not the maximum of a batch. The
method's ``result`` (for ACE the RePaint refinement, about a third of an iteration) runs once the
buffer is full (and at the end), so it is paid once per example in full batches, not once per
finishing event over every slot. Slots are sharded over the devices of a 1-D mesh
(``jax.sharding``), which is also how both cores of one CPU machine get used (one XLA:CPU program
keeps about one core busy). In a multi-process run (``jax.distributed``), every process takes the
examples whose index modulo the process count is its own and runs its own engine.

Per-example keys are ``fold_in(key, id)``: the random numbers an example sees do not depend on the
batch size, its neighbours or the device count.

Example:
  >>> from cfjax import engine
  >>> res = engine.explain(method, images, targets, key=jax.random.key(0), num_slots=8)  # doctest: +SKIP
  >>> res["counterfactual"].shape  # doctest: +SKIP
  (100, 32, 32, 3)
"""

from __future__ import annotations

import time
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cfjax._validate import CfjaxInputError, check_images
from cfjax.methods.base import Method


def _round_up(n: int, multiple: int) -> int:
  return max(multiple, -(-n // multiple) * multiple)


def _where(mask, new, old):
  def sel(a, b):
    m = mask.reshape(mask.shape + (1,) * (a.ndim - 1))
    return jnp.where(m, a, b)
  return jax.tree.map(sel, new, old)


class Engine:
  """Compiled slot programs of one method on one mesh.

  Args:
    method: a :class:`cfjax.methods.Method`.
    num_slots: examples in flight; rounded up to a multiple of the device count.
    steps_per_call: method steps per compiled call (K); the host checks for finished slots
      between calls.
    devices: devices of the data-parallel mesh (default: this process's local devices).
    result_slots: finished examples whose ``result`` is computed together (default
      ``num_slots``); rounded up to a multiple of the device count. Finished examples wait in
      the buffer until it is full, so a killed run recomputes at most this many.
  """

  def __init__(self, method: Method, *, num_slots: int = 16, steps_per_call: int = 5, devices=None,
               result_slots: int | None = None):
    if steps_per_call < 1:
      raise CfjaxInputError(f"steps_per_call must be >= 1, got {steps_per_call}")
    if result_slots is not None and result_slots < 1:
      raise CfjaxInputError(f"result_slots must be >= 1, got {result_slots}")
    devices = list(devices or jax.local_devices())
    n = len(devices)
    self.num_slots = _round_up(num_slots, n)
    self.result_slots = _round_up(result_slots or self.num_slots, n)
    self.method = method
    self.steps_per_call = steps_per_call
    self.mesh = Mesh(np.array(devices), ("slots",))
    self.slot_sharding = NamedSharding(self.mesh, P("slots"))
    self.replicated = NamedSharding(self.mesh, P())
    self.params = jax.device_put(method.params, self.replicated)
    m = method
    vinit = jax.vmap(m.init, in_axes=(None, 0, 0, 0))
    vstep = jax.vmap(m.step, in_axes=(None, 0))
    vdone = jax.vmap(m.done)
    vresult = jax.vmap(m.result, in_axes=(None, 0))

    def init(params, x, target, ids, key, refill, old):
      keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
      return _where(refill, vinit(params, x, target, keys), old)

    def advance(params, states, active):
      # Empty slots (no example left to give them) are held still by the engine's own mask.
      for _ in range(steps_per_call):  # unrolled: a rolled loop of conv gradients is slow on CPU
        states = _where(active, vstep(params, states), states)
      return states, vdone(states) & active

    s = self.slot_sharding
    # How often each program was traced: the recompilation guard of the tests reads it.
    self.trace_counts = {"init": 0, "advance": 0, "stash": 0, "result": 0}

    def counted(name, fn):
      def wrapped(*args):
        self.trace_counts[name] += 1
        return fn(*args)
      return wrapped

    def empty(params, x, t, ids, key):
      keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
      return jax.tree.map(jnp.zeros_like, vinit(params, x, t, keys))

    def stash(buffer, states, src, dst):
      # buffer[j] = states[src[j]] where dst[j]: finished slots move into free buffer rows.
      return _where(dst, jax.tree.map(lambda a: a[src], states), buffer)

    R = self.result_slots
    self._empty = jax.jit(empty, out_shardings=s)
    self._empty_buffer = jax.jit(
        lambda states: jax.tree.map(lambda a: jnp.zeros((R,) + a.shape[1:], a.dtype), states),
        out_shardings=s)
    self._stash = jax.jit(counted("stash", stash), out_shardings=s, donate_argnums=(0,))
    self._init = jax.jit(counted("init", init), out_shardings=s, donate_argnums=(6,))
    self._advance = jax.jit(counted("advance", advance), out_shardings=(s, s), donate_argnums=(1,))
    self._result = jax.jit(counted("result", vresult), out_shardings=s)

  def _put(self, a):
    return jax.device_put(a, self.slot_sharding)

  def run(self, examples: Iterator[tuple[int, np.ndarray, np.ndarray]], *, key, total: int | None = None,
          on_result=None, progress: bool = True) -> dict:
    """Runs until ``examples`` (an iterator of ``(id, image HWC, target)``) is exhausted.

    ``on_result(dict of numpy arrays for finished examples)`` is called after every ``result``
    call on the buffer (the writer commits there). Returns timing statistics.
    """
    S, R = self.num_slots, self.result_slots
    m = self.method
    it = iter(examples)
    first = next(it, None)
    if first is None:
      raise CfjaxInputError("nothing to explain: the dataset is empty (or every example is already done)")
    shape = np.asarray(first[1]).shape
    tdtype = np.int32 if m.target_kind == "class" else np.float32
    slot_id = np.full(S, -1, np.int64)
    pending = [first]

    def take(n):
      out = []
      while len(out) < n:
        if pending:
          out.append(pending.pop())
          continue
        nxt = next(it, None)
        if nxt is None:
          break
        out.append(nxt)
      return out

    def arrays(batch, positions):
      x = np.zeros((S,) + shape, np.float32)
      t = np.zeros((S,), tdtype)
      ids = np.zeros((S,), np.int64)
      mask = np.zeros((S,), bool)
      for pos, (i, img, tgt) in zip(positions, batch):
        x[pos], t[pos], ids[pos], mask[pos] = img, tgt, i, True
      return x, t, ids.astype(np.uint32), mask

    bar = None
    if progress:
      from tqdm.auto import tqdm
      bar = tqdm(total=total, desc=f"{m.name}", unit="CE", dynamic_ncols=True)
    t_start = time.perf_counter()
    batch = take(S)
    x, t, ids, mask = arrays(batch, range(len(batch)))
    slot_id[: len(batch)] = [b[0] for b in batch]
    p = self.params
    xs, ts, idss = self._put(x), self._put(t), self._put(ids)
    states = self._init(p, xs, ts, idss, key, self._put(mask), self._empty(p, xs, ts, idss, key))
    buffer = self._empty_buffer(states)
    buf_id = np.full(R, -1, np.int64)
    counts = {"calls": 0, "done": 0, "steps": 0, "result_calls": 0}

    def flush():
      res = jax.device_get(self._result(p, buffer))
      rows = np.nonzero(buf_id >= 0)[0]
      out = {k: np.asarray(v)[rows] for k, v in res.items()}
      out["id"] = buf_id[rows].copy()
      counts["steps"] += int(np.sum(out.get("iterations", 0)))
      counts["result_calls"] += 1
      if on_result is not None:
        on_result(out)
      counts["done"] += len(rows)
      if bar is not None:
        bar.update(len(rows))
      buf_id[:] = -1

    def move_to_buffer(finished):
      nonlocal buffer
      queue = list(finished)
      while queue:
        free = np.nonzero(buf_id < 0)[0][: len(queue)]
        src, dst = np.zeros(R, np.int32), np.zeros(R, bool)
        src[free], dst[free] = queue[: len(free)], True
        buffer = self._stash(buffer, states, self._put(src), self._put(dst))
        buf_id[free] = slot_id[queue[: len(free)]]
        queue = queue[len(free):]
        if (buf_id >= 0).all():
          flush()

    while (slot_id >= 0).any():
      states, done = self._advance(p, states, self._put(slot_id >= 0))
      counts["calls"] += 1
      done = np.asarray(done) & (slot_id >= 0)
      if not done.any():
        continue
      finished = np.nonzero(done)[0]
      move_to_buffer(finished)
      slot_id[finished] = -1
      batch = take(len(finished))
      positions = finished[: len(batch)]
      if batch:
        x, t, ids, mask = arrays(batch, positions)
        slot_id[positions] = [b[0] for b in batch]
        states = self._init(p, self._put(x), self._put(t), self._put(ids), key, self._put(mask), states)
    if (buf_id >= 0).any():
      flush()
    if bar is not None:
      bar.close()
    elapsed = time.perf_counter() - t_start
    n_done = counts["done"]
    return {"num_done": n_done, "calls": counts["calls"], "result_calls": counts["result_calls"],
            "seconds": elapsed, "ce_per_s": n_done / elapsed if elapsed > 0 else float("nan"),
            "mean_iterations": counts["steps"] / max(n_done, 1), "num_slots": S,
            "result_slots": R, "num_devices": len(self.mesh.devices.reshape(-1))}


def iterate_examples(images, targets, ids=None, *, skip: set[int] | frozenset = frozenset(),
                     process_index: int = 0, process_count: int = 1) -> Iterable:
  """(id, image, target) triples from arrays, skipping finished ids and other processes' share."""
  ids = np.arange(len(images)) if ids is None else np.asarray(ids)
  for i, img, tgt in zip(ids, images, targets):
    i = int(i)
    if i % process_count != process_index or i in skip:
      continue
    yield i, img, tgt


def explain(method: Method, images, targets, *, key, ids=None, num_slots: int = 16,
            steps_per_call: int = 5, out_dir=None, run_settings: dict | None = None, devices=None,
            progress: bool = True, return_stats: bool = False, result_slots: int | None = None):
  """Explains every image (NHWC in [0, 1]) towards its target with the continuous-batching engine.

  Args:
    method: a method from :func:`cfjax.methods.make`.
    images: (N, H, W, C) float32 in [0, 1]; checked before anything compiles.
    targets: (N,) class indices (classification) or target values (regression).
    key: a PRNG key; example ``id`` uses ``fold_in(key, id)``.
    ids: (N,) unique non-negative example ids (default ``arange(N)``).
    out_dir: optional run directory for a resumable run (see :class:`ResultWriter`); finished
      examples found there are skipped and their stored results returned.
    run_settings: extra settings recorded in (and checked against) the run directory.
    result_slots: finished examples refined together (default ``num_slots``, see :class:`Engine`).

  Returns:
    dict of per-example arrays sorted by id (and run statistics if ``return_stats``).
  """
  from cfjax.engine.writer import ResultWriter, read_results

  images = check_images(images, name="images")
  targets = np.asarray(targets)
  if targets.shape != (len(images),):
    raise CfjaxInputError(f"targets must have shape ({len(images)},), got {targets.shape}")
  ids = np.arange(len(images)) if ids is None else np.asarray(ids, np.int64)
  if len(np.unique(ids)) != len(ids) or (ids < 0).any():
    raise CfjaxInputError("ids must be unique and non-negative")
  if method.target_kind == "class" and not np.issubdtype(targets.dtype, np.integer):
    raise CfjaxInputError(f"method {method.name!r} needs integer class targets, got {targets.dtype}")
  if not np.all(np.isfinite(targets.astype(np.float64))):
    raise CfjaxInputError("targets contain NaN or inf")
  pc, pi = jax.process_count(), jax.process_index()
  writer = None
  skip: set[int] = set()
  if out_dir is not None:
    settings = {"method": method.name, **method.settings,
                "key": np.asarray(jax.random.key_data(key)).tolist(), **(run_settings or {})}
    writer = ResultWriter(out_dir, settings, process_index=pi)
    skip = writer.done_ids()
  collected: list[dict] = []

  def on_result(out):
    if writer is not None:
      writer.write(out)
    else:
      collected.append(out)

  todo = [i for i in ids.tolist() if i % pc == pi and i not in skip]
  stats = {"num_done": 0, "seconds": 0.0}
  if todo:
    eng = Engine(method, num_slots=min(num_slots, max(len(todo), 1)), steps_per_call=steps_per_call,
                 devices=devices, result_slots=result_slots)
    stats = eng.run(iterate_examples(images, targets.astype(np.int32 if method.target_kind == "class"
                                                           else np.float32), ids, skip=skip,
                                     process_index=pi, process_count=pc),
                    key=key, total=len(todo), on_result=on_result, progress=progress)
  if writer is not None:
    results = read_results(out_dir)
  elif collected:
    keys = collected[0].keys()
    results = {k: np.concatenate([c[k] for c in collected]) for k in keys}
    order = np.argsort(results["id"], kind="stable")
    results = {k: v[order] for k, v in results.items()}
  else:
    results = {}
  return (results, stats) if return_stats else results
