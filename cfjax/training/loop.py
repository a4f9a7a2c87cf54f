"""Generic pieces of a resumable training run, shared by every cfjax training command.

A run lives in one output directory::

    out/
      run.json        the run's configuration; re-running with a different one is an error
      log.jsonl       one JSON object per line: {"step", "loss", ..., "time"} and {"step", "eval": {...}}
      checkpoints/    orbax CheckpointManager steps of the whole training state

The pieces are independent so that any training command can reuse them:

* :func:`check_run_config` -- guards the directory against a changed configuration.
* :class:`JsonlLog` -- append-only JSON-lines log (flushed per line, safe to tail).
* :class:`TrainCheckpoints` -- orbax ``CheckpointManager`` over an arbitrary state pytree
  (params with int keys from ``nnx.List``, optax NamedTuples, step, RNG key data).
* :func:`train_loop` -- runs a jitted ``step_fn(state, batch) -> (state, metrics)`` from the
  restored step, with a tqdm bar, periodic logging, evaluation hooks and checkpoints, and a final
  checkpoint when interrupted (Ctrl-C), so re-running the same command continues.

Example:
  >>> import jax, jax.numpy as jnp, tempfile
  >>> from cfjax.training import loop
  >>> out = tempfile.mkdtemp()
  >>> ckpts = loop.TrainCheckpoints(out + "/checkpoints")
  >>> state = {"w": jnp.zeros(()), "step": jnp.zeros((), jnp.int32)}
  >>> step_fn = jax.jit(lambda s, b: ({"w": s["w"] + b, "step": s["step"] + 1}, {"loss": s["w"]}))
  >>> state = loop.train_loop(state, step_fn, lambda start: iter([1.0] * 10), num_steps=3,
  ...                         checkpoints=ckpts, progress=False)
  >>> int(state["step"]), ckpts.latest_step()
  (3, 3)
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import numpy as np

from cfjax._validate import CfjaxInputError


class RunConfigError(CfjaxInputError):
  """The output directory holds a run with a different configuration."""


def check_run_config(out: str | os.PathLike, config: dict, *, ignore: Sequence[str] = ()) -> dict:
  """Writes ``out/run.json`` for a new run, or checks that an existing run has the same config.

  Args:
    out: run directory (created if missing).
    config: JSON-able configuration that defines the run (what it trains, on what, how).
    ignore: keys that may change between invocations (e.g. how often to evaluate).

  Returns:
    the stored configuration.

  Raises:
    RunConfigError: listing every differing key, if ``out`` holds a different run.
  """
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / "run.json"
  config = json.loads(json.dumps(config))  # normalise tuples etc. to what JSON gives back
  if not path.exists():
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return config
  try:
    stored = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise RunConfigError(f"{path} is corrupted ({e}); remove {out} to start afresh") from e
  keys = (set(stored) | set(config)) - set(ignore)
  diff = sorted(k for k in keys if stored.get(k) != config.get(k))
  if diff:
    desc = "; ".join(f"{k}: stored {stored.get(k)!r}, now {config.get(k)!r}" for k in diff)
    raise RunConfigError(
        f"{out} already holds a run with a different configuration ({desc}). "
        "Use another output directory, or delete this one to start afresh.")
  return stored


class JsonlLog:
  """Append-only JSON-lines log; every record is one line, flushed immediately."""

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)

  def write(self, record: dict) -> None:
    rec = {k: _jsonable(v) for k, v in record.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps(rec, sort_keys=True) + "\n")

  def read(self) -> list[dict]:
    """All records so far (a torn last line from a crash is skipped)."""
    if not self.path.exists():
      return []
    out = []
    for line in self.path.read_text().splitlines():
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        continue
    return out


def _jsonable(v):
  if isinstance(v, dict):
    return {str(k): _jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  if isinstance(v, (jax.Array, np.ndarray, np.generic)):
    a = np.asarray(v)
    return a.item() if a.ndim == 0 else a.tolist()
  return v


class TrainCheckpoints:
  """Orbax ``CheckpointManager`` for a whole training state pytree.

  The state is stored as its flat list of leaves (``{"00000": leaf, ...}``) and rebuilt with the
  tree structure of a template, so any pytree works: NNX parameter dicts with int keys, optax
  states made of NamedTuples, scalars. Writes are atomic (orbax writes to a temporary directory
  and renames), so an interrupted save leaves the previous step intact.

  Args:
    directory: where the step directories go.
    max_to_keep: number of most recent steps kept.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
    import orbax.checkpoint as ocp
    self._ocp = ocp
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    # Naming the item's handler lets a fresh manager read an existing step's metadata (otherwise
    # orbax warns that item "default" could not be restored before the first restore call).
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    leaves = jax.tree.leaves(state)
    flat = {f"{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    self.manager.save(int(step), args=self._ocp.args.StandardSave(flat), force=True)
    self.manager.wait_until_finished()
    self._write_hashes(int(step))

  # orbax does not checksum its files; a sidecar of sha256s per step lets restore tell a corrupted
  # or truncated checkpoint from a bug (tensorstore may otherwise return flipped values silently).
  def _hash_path(self, step: int) -> Path:
    return self.directory / f".sha256.{step}.json"

  def _write_hashes(self, step: int) -> None:
    from cfjax.checkpoint import _file_hashes
    tmp = self._hash_path(step).with_suffix(".tmp")
    tmp.write_text(json.dumps(_file_hashes(self.directory / str(step))))
    os.replace(tmp, self._hash_path(step))
    keep = {self._hash_path(s).name for s in self.manager.all_steps()}
    for p in self.directory.glob(".sha256.*.json"):
      if p.name not in keep:
        p.unlink(missing_ok=True)

  def _verify(self, step: int) -> None:
    from cfjax.checkpoint import CheckpointError, _sha256
    where = self.directory / str(step)
    hint = f"Delete {where} to resume from an earlier step, or the whole directory to start afresh."
    try:
      hashes = json.loads(self._hash_path(step).read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise CheckpointError(f"training checkpoint {where} has no readable checksum file ({e}). {hint}") from e
    missing = [f for f in hashes if not (where / f).is_file()]
    bad = [f for f in hashes if f not in missing and _sha256(where / f) != hashes[f]]
    if missing or bad:
      raise CheckpointError(
          f"training checkpoint {where} is corrupted or truncated (missing: {missing[:3]}, "
          f"checksum mismatch: {bad[:3]}). {hint}")

  def restore(self, template: Any, step: int | None = None) -> Any:
    """Restores ``step`` (default: latest) into the structure, shapes and dtypes of ``template``."""
    from cfjax.checkpoint import CheckpointError
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no training checkpoint in {self.directory}")
    leaves, treedef = jax.tree.flatten(template)
    abstract = {f"{i:05d}": jax.ShapeDtypeStruct(np.shape(l), getattr(l, "dtype", None) or np.asarray(l).dtype)
                for i, l in enumerate(leaves)}
    where = self.directory / str(step)
    self._verify(step)
    try:
      stored = self.manager.item_metadata(step)
      stored = getattr(stored, "tree", stored) if stored is not None else None
      if stored is not None and hasattr(stored, "keys"):
        shapes = {k: tuple(getattr(v, "shape", ())) for k, v in stored.items()}
        want = {k: tuple(v.shape) for k, v in abstract.items()}
        if shapes != want:
          raise CheckpointError(
              f"training checkpoint {where} does not match this run's state "
              f"({len(shapes)} arrays stored, {len(want)} expected, or shapes differ); "
              "was the output directory used for another model?")
      restored = self.manager.restore(step, args=self._ocp.args.StandardRestore(abstract))
    except CheckpointError:
      raise
    except Exception as e:  # noqa: BLE001 - tensorstore/orbax raise many types
      raise CheckpointError(
          f"cannot restore training checkpoint {where}: it is corrupted or truncated ({type(e).__name__}: "
          f"{str(e)[:300]}). Delete {where} to resume from an earlier step.") from e
    return jax.tree.unflatten(treedef, [restored[k] for k in sorted(abstract)])

  def close(self) -> None:
    self.manager.close()


def skip(iterable: Iterable, n: int) -> Iterator:
  """The iterator of ``iterable`` advanced by ``n`` items (to resume a deterministic stream)."""
  it = iter(iterable)
  if n:
    next(itertools.islice(it, n, n), None)
  return it


def progress(total: int, *, initial: int = 0, desc: str = "train", disable: bool = False):
  """A tqdm progress bar; ``disable`` or the environment variable CFJAX_NO_TQDM silences it."""
  from tqdm.auto import tqdm
  disable = disable or bool(os.environ.get("CFJAX_NO_TQDM"))
  return tqdm(total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True)


Hook = Callable[[int, Any], Any]


def train_loop(
    state: Any,
    step_fn: Callable[[Any, Any], tuple[Any, dict]],
    batches: Callable[[int], Iterator],
    *,
    num_steps: int,
    checkpoints: TrainCheckpoints | None = None,
    log: JsonlLog | None = None,
    evaluate: Callable[[Any], dict] | None = None,
    eval_every: int = 0,
    eval_at_end: bool = True,
    checkpoint_every: int = 500,
    log_every: int = 50,
    hooks: Sequence[Hook] = (),
    progress: bool = True,
    desc: str = "train",
) -> Any:
  """Runs ``step_fn`` until ``num_steps``, resuming from the latest checkpoint if there is one.

  Args:
    state: initial state pytree with an integer ``"step"`` entry (used when nothing is saved).
    step_fn: jitted ``(state, batch) -> (state, metrics)``; metrics are scalars (e.g. loss).
    batches: ``start_step -> iterator`` positioned at ``start_step``, so a resumed run sees the
      same batches as an uninterrupted one.
    num_steps: total number of steps of the run (not of this invocation).
    checkpoints: where to save/restore the state; None trains without checkpoints.
    log: JSON-lines log for training metrics (averaged over ``log_every`` steps) and evaluations.
    evaluate: ``state -> dict`` of metrics, run every ``eval_every`` steps and at the end.
    eval_every: steps between evaluations (0: none during training).
    eval_at_end: also evaluate after the last step.
    checkpoint_every: steps between checkpoints (one is also written at the end and on Ctrl-C).
    log_every: steps between training-log records.
    hooks: called as ``hook(step, state)`` after every step (after checkpoints and evaluations).
      A hook may raise (e.g. KeyboardInterrupt) to stop the run; the state is checkpointed first.
    progress: show a tqdm bar.
    desc: progress-bar label.

  Returns:
    the final state.
  """
  if checkpoints is not None and checkpoints.latest_step() is not None:
    state = checkpoints.restore(state)
  start = int(state["step"])
  saved = start
  it = batches(start)
  window: list[dict] = []
  bar = _progress_bar(num_steps, start, desc, not progress)
  t0 = time.time()
  step = start
  try:
    for step in range(start + 1, num_steps + 1):
      try:
        batch = next(it)
      except StopIteration as e:
        raise CfjaxInputError(f"the data ran out after {step - 1} of {num_steps} steps") from e
      state, metrics = step_fn(state, batch)
      window.append(metrics)
      bar.update(1)
      if log_every and (step % log_every == 0 or step == num_steps):
        avg = {k: float(np.mean([np.asarray(m[k]) for m in window])) for k in window[0]}
        bar.set_postfix({k: f"{v:.4g}" for k, v in avg.items()})
        if log is not None:
          log.write({"step": step, **avg, "time": round(time.time() - t0, 3)})
        window = []
      if checkpoints is not None and checkpoint_every and step % checkpoint_every == 0:
        checkpoints.save(step, state)
        saved = step
      if evaluate is not None and eval_every and step % eval_every == 0 and step != num_steps:
        _evaluate(evaluate, state, step, log, bar)
      for hook in hooks:
        hook(step, state)
  except BaseException:
    if checkpoints is not None and int(state["step"]) > saved:
      checkpoints.save(int(state["step"]), state)
    bar.close()
    raise
  if checkpoints is not None and int(state["step"]) > saved:
    checkpoints.save(int(state["step"]), state)
  if evaluate is not None and eval_at_end:
    _evaluate(evaluate, state, int(state["step"]), log, bar)
  bar.close()
  return state


def _progress_bar(total, initial, desc, disable):
  return progress(total, initial=initial, desc=desc, disable=disable)


def _evaluate(evaluate, state, step, log, bar):
  result = evaluate(state)
  if log is not None:
    log.write({"step": step, "eval": result})
  bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items()
                                         if isinstance(v, (int, float))))
  return result
