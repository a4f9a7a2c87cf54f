"""The continuous-batching engine: any method over examples, compiled once, sharded across devices.

A fixed number of *slots* holds one example each. The engine advances all slots by ``K`` method
steps per call (the method's per-slot ``done`` flag turns finished slots into no-ops), then moves
finished slots' states into a *result buffer* and refills the slots with the next examples.
Throughput therefore follows the mean number of iterations, not the maximum of a batch. The
method's ``result`` (for ACE the RePaint refinement, about a third of an iteration) runs once the
buffer is full (and at the end), so it is paid once per example in full batches, not once per
finishing event over every slot. Refilled slots are initialised in compact batches of
``init_slots`` examples (a latent method's init can cost an inversion), never all slots at once.
Slots are sharded over the devices of a 1-D mesh
(``jax.sharding``), which is also how both cores of one CPU machine get used (one XLA:CPU program
keeps about one core busy). In a multi-process run (``jax.distributed``), every process takes the
examples whose index modulo the process count is its own and runs its own engine.

Model parameters are arguments of the compiled programs, never constants, and the executables
are shared by every engine of the process whose program is the same: explaining with a second
predictor of the same architecture (or rerunning a notebook cell) compiles nothing new.

Per-example keys are ``fold_in(key, id)``: the random numbers an example sees do not depend on the
batch size, its neighbours or the device count.

The engine only runs a method over examples; validation, the resumable writer, callbacks and
the collection of results are :func:`cfjax.explain`'s.

Example:
  >>> from cfjax import engine
  >>> eng = engine.Engine(method, num_slots=8)  # doctest: +SKIP
  >>> stats = eng.run(engine.iterate_examples(images, targets), key=jax.random.key(0),
  ...                 on_result=print)  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import hashlib
import time
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cfjax._validate import CfjaxInputError
from cfjax.methods.base import Method


def _round_up(n: int, multiple: int) -> int:
  return max(multiple, -(-n // multiple) * multiple)


def _where(mask, new, old):
  def sel(a, b):
    m = mask.reshape(mask.shape + (1,) * (a.ndim - 1))
    return jnp.where(m, a, b)
  return jax.tree.map(sel, new, old)


# Compiled slot programs shared by every Engine of this process, keyed by the text of the lowered
# program, its argument and result structures and the devices: a second engine for the same
# method and shapes (another predictor of the same architecture, a rerun in a notebook) runs the
# executable the first one compiled instead of compiling it again or reading it back from the
# persistent cache, which on XLA:CPU costs about as much as compiling.
_PROGRAMS: collections.OrderedDict[str, Any] = collections.OrderedDict()
_MAX_PROGRAMS = 32


class _Program:
  """A jitted function compiled once per argument signature, its executable shared by program text."""

  def __init__(self, jitted, devices):
    self.jitted, self.devices, self.executables = jitted, tuple(d.id for d in devices), {}

  def __call__(self, *args):
    return self.executable(*args)(*args)

  def executable(self, *args):
    """The compiled program for these arguments, compiled on first use."""
    # The engine places every argument itself (parameters replicated, slots sharded), so within
    # one engine the structure, shapes and dtypes decide the program; this runs on every call.
    leaves, tree = jax.tree.flatten(args)
    sig = (tree, tuple((a.shape, a.dtype) for a in leaves))
    exe = self.executables.get(sig)
    if exe is None:
      lowered = self.jitted.lower(*args)
      # The same program text can take differently nested arguments (two networks whose layers
      # flatten alike): the argument and result structures are part of the key.
      key = hashlib.sha256(f"{self.devices}\n{lowered.in_tree}\n{lowered.out_tree}\n"
                           f"{lowered.as_text()}".encode()).hexdigest()
      exe = _PROGRAMS.pop(key, None) or lowered.compile()
      _PROGRAMS[key] = exe  # most recently used last
      while len(_PROGRAMS) > _MAX_PROGRAMS:
        _PROGRAMS.popitem(last=False)
      self.executables[sig] = exe
    return exe


class Engine:
  """Compiled slot programs of one method on one mesh.

  Args:
    method: a :class:`cfjax.methods.Method`.
    num_slots: examples in flight; rounded up to a multiple of the device count.
    steps_per_call: method steps per compiled call (K; default the method's own
      ``steps_per_call``, at most its ``max_steps``); the host checks for finished slots between
      calls. The steps are unrolled: compile time grows with K.
    devices: devices of the data-parallel mesh (default: this process's local devices).
    result_slots: finished examples whose ``result`` is computed together (default
      ``num_slots``); rounded up to a multiple of the device count. Finished examples wait in
      the buffer until it is full, so a killed run recomputes at most this many.
    init_slots: examples initialised per init call (default a quarter of the slots, at least
      one per device); only refilled slots are initialised.
  """

  def __init__(self, method: Method, *, num_slots: int = 16, steps_per_call: int | None = None, devices=None,
               result_slots: int | None = None, init_slots: int | None = None):
    for name, v in (("steps_per_call", steps_per_call), ("result_slots", result_slots),
                    ("init_slots", init_slots), ("num_slots", num_slots)):
      if v is not None and v < 1:
        raise CfjaxInputError(f"{name} must be >= 1, got {v}")
    devices = list(devices or jax.local_devices())
    n = len(devices)
    self.num_slots = _round_up(num_slots, n)
    self.result_slots = _round_up(result_slots or self.num_slots, n)
    self.init_slots = min(_round_up(init_slots or self.num_slots // 4, n), self.num_slots)
    self.method = method
    self.steps_per_call = steps_per_call = min(steps_per_call or method.steps_per_call, method.max_steps)
    self.mesh = Mesh(np.array(devices), ("slots",))
    self.slot_sharding = NamedSharding(self.mesh, P("slots"))
    self.replicated = NamedSharding(self.mesh, P())
    self.params = jax.device_put(method.params, self.replicated)
    m = method
    self._vinit = jax.vmap(m.init, in_axes=(None, 0, 0, 0))
    vstep = jax.vmap(m.step, in_axes=(None, 0))
    vdone = jax.vmap(m.done)
    vresult = jax.vmap(m.result, in_axes=(None, 0))

    def init(params, states, x, target, ids, pos, key):
      # Initialise the compact batch, then scatter it into the slots it refills (pos == S: a
      # padding row, dropped).
      keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
      new = self._vinit(params, x, target, keys)
      return jax.tree.map(lambda a, b: a.at[pos].set(b, mode="drop"), states, new)

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

    def stash(buffer, states, src, dst):
      # buffer[j] = states[src[j]] where dst[j]: finished slots move into free buffer rows.
      return _where(dst, jax.tree.map(lambda a: a[src], states), buffer)

    def program(name, fn, **jit_options):
      return _Program(jax.jit(counted(name, fn), **jit_options), devices)

    self._stash = program("stash", stash, out_shardings=s, donate_argnums=(0,))
    self._init = program("init", init, out_shardings=s, donate_argnums=(1,))
    self._advance = program("advance", advance, out_shardings=(s, s), donate_argnums=(1,))
    self._result = program("result", vresult, out_shardings=s)

  def _put(self, a):
    return jax.device_put(a, self.slot_sharding)

  def _zeros(self, rows: int, x, t):
    """Zero states of ``rows`` slots, shaped like the method's state (nothing is computed)."""
    shapes = jax.eval_shape(self._vinit, self.params,
                            jax.ShapeDtypeStruct((rows,) + x.shape, x.dtype),
                            jax.ShapeDtypeStruct((rows,) + t.shape, t.dtype),
                            jax.eval_shape(lambda: jax.random.split(jax.random.key(0), rows)))
    return jax.jit(lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes),
                   out_shardings=self.slot_sharding)()

  def run(self, examples: Iterator[tuple[int, np.ndarray, np.ndarray]], *, key, total: int | None = None,
          on_result=None, progress: bool = True) -> dict:
    """Runs until ``examples`` (an iterator of ``(id, input, target)``) is exhausted.

    Inputs (images or latents) and targets may have any per-example shape, the same for all.
    ``on_result(dict of numpy arrays for finished examples)`` is called after every ``result``
    call on the buffer. Returns timing statistics.
    """
    S, R, I = self.num_slots, self.result_slots, self.init_slots
    m = self.method
    it = iter(examples)
    first = next(it, None)
    if first is None:
      raise CfjaxInputError("nothing to explain: the dataset is empty (or every example is already done)")
    x_first, t_first = np.asarray(first[1]), np.asarray(first[2])
    slot_id = np.full(S, -1, np.int64)
    pending = [first]

    def take(n):
      out = []
      while len(out) < n:
        nxt = pending.pop() if pending else next(it, None)
        if nxt is None:
          break
        out.append(nxt)
      return out

    bar = None
    if progress:
      from tqdm.auto import tqdm
      bar = tqdm(total=total, desc=f"{m.name}", unit="CE", dynamic_ncols=True)
    t_start = time.perf_counter()
    p = self.params
    states = self._zeros(S, x_first, t_first)
    buffer = self._zeros(R, x_first, t_first)
    buf_id = np.full(R, -1, np.int64)
    counts = {"calls": 0, "done": 0, "steps": 0, "result_calls": 0, "init_calls": 0}

    def refill(free_slots):
      # Initialise examples for ``free_slots`` in compact batches of I; returns the slots filled.
      nonlocal states
      batch = take(len(free_slots))
      for c in range(0, len(batch), I):
        chunk = batch[c:c + I]
        x = np.zeros((I,) + x_first.shape, x_first.dtype)
        t = np.zeros((I,) + t_first.shape, t_first.dtype)
        ids = np.zeros(I, np.uint32)
        pos = np.full(I, S, np.int32)
        for r, (i, xi, ti) in enumerate(chunk):
          x[r], t[r], ids[r], pos[r] = xi, ti, i, free_slots[c + r]
          slot_id[free_slots[c + r]] = i
        states = self._init(p, states, self._put(x), self._put(t), self._put(ids), self._put(pos), key)
        counts["init_calls"] += 1

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

    refill(np.arange(S))
    while (slot_id >= 0).any():
      states, done = self._advance(p, states, self._put(slot_id >= 0))
      counts["calls"] += 1
      done = np.asarray(done) & (slot_id >= 0)
      if not done.any():
        continue
      finished = np.nonzero(done)[0]
      move_to_buffer(finished)
      slot_id[finished] = -1
      refill(finished)
    if (buf_id >= 0).any():
      flush()
    if bar is not None:
      bar.close()
    elapsed = time.perf_counter() - t_start
    n_done = counts["done"]
    return {"num_done": n_done, "calls": counts["calls"], "result_calls": counts["result_calls"],
            "init_calls": counts["init_calls"], "seconds": elapsed,
            "ce_per_s": n_done / elapsed if elapsed > 0 else float("nan"),
            "mean_iterations": counts["steps"] / max(n_done, 1), "num_slots": S,
            "steps_per_call": self.steps_per_call, "result_slots": R, "init_slots": I,
            "num_devices": len(self.mesh.devices.reshape(-1))}


def iterate_examples(images, targets, ids=None, *, skip: set[int] | frozenset = frozenset(),
                     process_index: int = 0, process_count: int = 1) -> Iterable:
  """(id, image, target) triples from arrays, skipping finished ids and other processes' share."""
  ids = np.arange(len(images)) if ids is None else np.asarray(ids)
  for i, img, tgt in zip(ids, images, targets):
    i = int(i)
    if i % process_count != process_index or i in skip:
      continue
    yield i, img, tgt
