"""Shared helpers of the benchmark scripts: devices, timing, XLA cost and memory, load, output.

Import this module BEFORE jax (it forces two host devices so one run can compare one device with
two). Nothing here asserts a time: the scripts write what they measure to JSON and a plot.

Example:
  >>> import common  # doctest: +SKIP  (from benchmarks/, before importing jax)
  >>> t = common.time_calls(lambda: jnp.ones(3) + 1)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

HOST_DEVICES = 2
if "jax" in sys.modules:
  raise RuntimeError("import benchmarks/common.py before jax: it sets XLA_FLAGS")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count={HOST_DEVICES}".strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
FIXTURE_UNET = REPO.parent / "shared" / "fixtures" / "guided_diffusion" / "model_small.npz"


# ---------------------------------------------------------------------------------------------
# Machine and load: every JSON says what else was running while it was measured.
# ---------------------------------------------------------------------------------------------

def _without_machine_paths(cmd: str) -> str:
  """A command line with the checkout's and the home directory's absolute paths made relative."""
  root = str(Path(__file__).resolve().parent.parent)
  return cmd.replace(root + "/", "").replace(root, ".").replace(str(Path.home()), "~")


def _cpu_ticks() -> dict[int, tuple[int, str]]:
  ticks = {}
  for d in Path("/proc").iterdir():
    if not d.name.isdigit():
      continue
    try:
      stat = (d / "stat").read_text()
      fields = stat[stat.rindex(")") + 2:].split()
      cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
      cmd = _without_machine_paths(cmd)
      ticks[int(d.name)] = (int(fields[11]) + int(fields[12]), cmd)
    except (OSError, ValueError, IndexError):
      continue
  return ticks


def machine_load(window_s: float = 2.0) -> dict:
  """Load average and the other processes that used more than 10% of a core over ``window_s``."""
  out: dict[str, Any] = {"time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
  try:
    out["loadavg_1_5_15"] = [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
  except OSError:
    out["loadavg_1_5_15"] = None
  hz = os.sysconf("SC_CLK_TCK")
  before = _cpu_ticks()
  time.sleep(window_s)
  after = _cpu_ticks()
  me = os.getpid()
  busy = []
  for pid, (t1, cmd) in after.items():
    share = (t1 - before.get(pid, (t1, ""))[0]) / hz / window_s
    if pid != me and share >= 0.1:
      busy.append({"pid": pid, "cores_used": round(share, 2), "command": cmd[:160]})
  busy.sort(key=lambda b: -b["cores_used"])
  out["other_busy_processes"] = busy
  out["other_processes_cores_used"] = round(sum(b["cores_used"] for b in busy), 2)
  out["ddpm_trainings_running"] = sum("train-diffusion" in b["command"] for b in busy)
  return out


class LoadMonitor:
  """Samples :func:`machine_load` every ``every_s`` seconds in a thread while a benchmark runs.

  Example:
    >>> with LoadMonitor() as mon:  # doctest: +SKIP
    ...   run_benchmark()
    >>> mon.summary()["mean_other_cores_used"]  # doctest: +SKIP
  """

  def __init__(self, every_s: float = 30.0):
    import threading
    self.every_s = every_s
    self.samples: list[dict] = []
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, daemon=True)

  def _loop(self):
    while not self._stop.is_set():
      s = machine_load(window_s=2.0)
      self.samples.append({"time": s["time"], "other_cores_used": s["other_processes_cores_used"],
                           "ddpm_trainings": s["ddpm_trainings_running"],
                           "loadavg_1": (s["loadavg_1_5_15"] or [None])[0]})
      self._stop.wait(self.every_s)

  def start(self) -> "LoadMonitor":
    self._thread.start()
    return self

  def stop(self) -> dict:
    self._stop.set()
    self._thread.join(timeout=10)
    return self.summary()

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()

  def summary(self) -> dict:
    used = [s["other_cores_used"] for s in self.samples]
    return {"every_s": self.every_s, "num_samples": len(used),
            "mean_other_cores_used": float(np.mean(used)) if used else None,
            "max_other_cores_used": max(used) if used else None,
            "max_ddpm_trainings": max((s["ddpm_trainings"] for s in self.samples), default=None),
            "samples": self.samples}


def machine_info() -> dict:
  return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
          "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


# ---------------------------------------------------------------------------------------------
# Timing and XLA's own numbers.
# ---------------------------------------------------------------------------------------------

def block(x):
  return jax.block_until_ready(x)


def time_calls(fn: Callable[[], Any], *, repeats: int = 3, min_seconds: float = 0.0,
               warmup: int = 1) -> dict:
  """Median/min seconds of ``fn()`` (blocked), after ``warmup`` calls; repeats until min_seconds."""
  for _ in range(warmup):
    block(fn())
  times: list[float] = []
  start = time.perf_counter()
  while len(times) < repeats or time.perf_counter() - start < min_seconds:
    t0 = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - t0)
  return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}


def compile_stats(jitted, *args) -> tuple[Any, dict]:
  """AOT-compiles ``jitted(*args)``: the executable plus lower/compile seconds, FLOPs, memory.

  An engine program compiles into its own cache (its later calls do not compile again); its
  ``compile_s`` includes the lowering (``lower_s`` 0).
  """
  if hasattr(jitted, "executable"):
    t0 = time.perf_counter()
    compiled = jitted.executable(*args)
    return compiled, {"lower_s": 0.0, "compile_s": time.perf_counter() - t0, **xla_numbers(compiled)}
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  return compiled, {"lower_s": t1 - t0, "compile_s": t2 - t1, **xla_numbers(compiled)}


def xla_numbers(compiled) -> dict:
  """FLOPs (XLA cost analysis) and temp/argument bytes (memory analysis) of a compiled program."""
  out: dict[str, Any] = {}
  try:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    out["flops"] = float(ca.get("flops", float("nan")))
  except Exception as e:  # noqa: BLE001  (backends may not implement it)
    out["flops"] = None
    out["flops_error"] = repr(e)
  try:
    ma = compiled.memory_analysis()
    out["temp_bytes"] = int(ma.temp_size_in_bytes)
    out["argument_bytes"] = int(ma.argument_size_in_bytes)
    out["output_bytes"] = int(ma.output_size_in_bytes)
  except Exception as e:  # noqa: BLE001
    out["temp_bytes"] = None
    out["memory_error"] = repr(e)
  return out


def mesh_of(n_devices: int) -> Mesh:
  return Mesh(np.array(jax.devices()[:n_devices]), ("batch",))


def batch_sharding(n_devices: int) -> NamedSharding:
  return NamedSharding(mesh_of(n_devices), P("batch"))


def replicated(n_devices: int) -> NamedSharding:
  return NamedSharding(mesh_of(n_devices), P())


def matmul_flops(n: int = 2048, repeats: int = 5) -> dict:
  """Measured dense float32 matmul FLOP/s (n x n x n) on one device and split by rows over all."""
  out = {"n": n}
  key = jax.random.key(0)
  a = jax.random.normal(key, (n, n), jnp.float32)
  b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.float32)
  mm = jax.jit(lambda a, b: a @ b)
  flops = 2.0 * n ** 3
  for nd in sorted({1, len(jax.devices())}):
    ad = jax.device_put(a, batch_sharding(nd))
    bd = jax.device_put(b, replicated(nd))
    t = time_calls(lambda: mm(ad, bd), repeats=repeats, warmup=2)
    out[f"devices_{nd}"] = {"seconds": t["min_s"], "flops_per_s": flops / t["min_s"],
                            "median_flops_per_s": flops / t["median_s"]}
  out["machine_flops_per_s"] = max(v["flops_per_s"] for k, v in out.items() if k.startswith("devices_"))
  return out


# ---------------------------------------------------------------------------------------------
# Models.
# ---------------------------------------------------------------------------------------------

def random_params(config: dict, seed: int = 0):
  """Random parameters filled from numpy (a jitted init of a 100 M parameter UNet takes a minute).

  Kernels get N(0, 1 / fan_in) (so activations keep their scale, and the zero-initialised output
  convs of the ADM UNet are not zero), norm scales 1, biases 0.
  """
  from cfjax import nets
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    shape, name = tuple(leaf.shape), jax.tree_util.keystr(path)
    if len(shape) >= 2:
      fan_in = int(np.prod(shape[:-1]))
      return (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)
    return np.full(shape, 1.0 if "scale" in name else 0.0, np.float32)

  return jax.tree_util.tree_map_with_path(fill, nets.abstract_params(config))


def unet(name: str, *, fixture: Path | None = None, seed: int = 0):
  """The UNet of a named config: the fixtures' weights for small32, else random weights (non-zero out)."""
  from cfjax import nets
  cfg = nets.unet_config(name)
  if name == "small32" and fixture is not None and Path(fixture).exists():
    return nets.torch_import.load_guided_diffusion(fixture, cfg), "fixture model_small.npz"
  return nets.build(cfg, params=random_params(cfg, seed)), "random (numpy fill, kernels N(0, 1/fan_in))"


# ---------------------------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------------------------

def rounded(obj, digits: int = 5):
  """Floats rounded to ``digits`` significant digits, recursively (readable JSON diffs)."""
  if isinstance(obj, float):
    return float(f"{obj:.{digits}g}") if np.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: rounded(v, digits) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [rounded(v, digits) for v in obj]
  if isinstance(obj, np.generic):
    return rounded(obj.item(), digits)
  return obj


def write_json(path: Path, data: dict) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(rounded(data), indent=1, sort_keys=False, default=str) + "\n")
  print(f"wrote {path}")
  return path


def output_paths(name: str, quick: bool, out_dir: str | None, tag: str = "") -> tuple[Path, Path]:
  d = Path(out_dir) if out_dir else RESULTS
  stem = name + ("_quick" if quick else "") + (f"_{tag}" if tag else "")
  return d / f"{stem}.json", d / f"{stem}.png"


def log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# The engine's compiled programs, timed one by one (reads Engine's private jitted programs: the
# benchmark measures exactly what Engine.run calls, phase by phase).
# ---------------------------------------------------------------------------------------------

def timed_explain(method, x: np.ndarray, t: np.ndarray, ids: np.ndarray, slots: int) -> tuple[dict, dict]:
  """``(row, results)`` of a steady ``cfjax.explain`` over ``x`` with ``slots`` slots.

  Two warm-up runs of the same program (the first image in every slot) come first: the second
  times the work alone, so ``compile_s`` is the first one's excess.
  """
  import cfjax
  kw = dict(key=jax.random.key(0), num_slots=slots, progress=False)
  warm = (np.repeat(x[:1], slots, 0), np.repeat(t[:1], slots, 0))
  times = []
  for _ in range(2):
    t0 = time.perf_counter()
    cfjax.explain(method, *warm, ids=np.arange(slots), **kw)
    times.append(time.perf_counter() - t0)
  t0 = time.perf_counter()
  res, stats = cfjax.explain(method, x, t, ids=ids, return_stats=True, **kw)
  seconds = time.perf_counter() - t0
  row = {"slots": stats["num_slots"], "steps_per_call": stats["steps_per_call"], "images": len(x),
         "ce_per_s": len(x) / seconds, "seconds": seconds, "compile_s": times[0] - times[1],
         "success_rate": float(res["success"].mean()), "mean_iterations": float(res["iterations"].mean())}
  return row, res


def init_chunks(eng, images: np.ndarray, targets: np.ndarray) -> list[tuple]:
  """The init program's per-call arguments ``(x, t, ids, pos)`` that fill every slot (images
  repeated if fewer), in the engine's compact batches of ``init_slots`` (pos == num_slots: padding)."""
  s, n = eng.num_slots, eng.init_slots
  x, t = np.asarray(images, np.float32), np.asarray(targets)
  return [tuple(eng._put(a) for a in (x[r % len(x)], t[r % len(t)], r.astype(np.uint32),
                                      np.where(r < s, r, s).astype(np.int32)))
          for r in np.arange(-(-s // n) * n).reshape(-1, n)]


def filled_slots(eng, images: np.ndarray, targets: np.ndarray, key, chunks=None) -> tuple:
  """``(states, mask)``: every slot initialised by the engine's init program, one call per chunk
  of :func:`init_chunks`, and the all-active mask of its advance program."""
  states = eng._zeros(eng.num_slots, np.asarray(images[0], np.float32), np.asarray(targets[0]))
  for chunk in chunks or init_chunks(eng, images, targets):
    states = eng._init(eng.params, states, *chunk, key)
  return states, eng._put(np.ones(eng.num_slots, bool))


def engine_phases(eng, images: np.ndarray, targets: np.ndarray, key, *, calls: int,
                  result: bool = True) -> dict:
  """Compiles the engine's programs (AOT, for seconds/FLOPs/memory), then times them warm.

  All slots are filled (images repeated if fewer). Returns compile stats per program (init: one
  compact batch of ``init_slots``), seconds of the init calls that fill every slot, of each of
  ``calls`` advance calls after one warm-up call, and of one result call (``result=False`` skips
  compiling and timing the result program).
  """
  p = eng.params
  chunks = init_chunks(eng, images, targets)
  out: dict[str, Any] = {"num_slots": eng.num_slots, "steps_per_call": eng.steps_per_call,
                         "init_slots": eng.init_slots, "init_calls": len(chunks)}
  states = eng._zeros(eng.num_slots, np.asarray(images[0], np.float32), np.asarray(targets[0]))
  mask = eng._put(np.ones(eng.num_slots, bool))
  _, out["compile_init"] = compile_stats(eng._init, p, states, *chunks[0], key)
  _, out["compile_advance"] = compile_stats(eng._advance, p, states, mask)
  programs = ["compile_init", "compile_advance"]
  if result:
    _, out["compile_result"] = compile_stats(eng._result, p, states)
    programs.append("compile_result")
  out["compile_s"] = sum(out[k]["lower_s"] + out[k]["compile_s"] for k in programs)
  # The programs are compiled now; the first calls below are warm-ups.
  states = block(eng._zeros(eng.num_slots, np.asarray(images[0], np.float32), np.asarray(targets[0])))
  t0 = time.perf_counter()
  for chunk in chunks:
    states = eng._init(p, states, *chunk, key)
  block(states)
  out["init_s"] = time.perf_counter() - t0
  states, _ = block(eng._advance(p, states, mask))
  times = []
  for _ in range(calls):
    t0 = time.perf_counter()
    states, _ = block(eng._advance(p, states, mask))
    times.append(time.perf_counter() - t0)
  out["advance_s"] = times
  out["seconds_per_iteration"] = min(times) / eng.steps_per_call
  out["median_seconds_per_iteration"] = statistics.median(times) / eng.steps_per_call
  if result:
    block(eng._result(p, states))
    t0 = time.perf_counter()
    block(eng._result(p, states))
    out["result_s"] = time.perf_counter() - t0
  return out
