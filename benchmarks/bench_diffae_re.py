"""Diff-AE-RE throughput, iteration cost and memory, next to AC-RE on the same squares images, in one run.

The workload: lower-grid squares images (ids spread over the grid), mirror targets (+128/255, whose
ideal counterfactual is the upper twin), the rho = 0 regressor, the bundled ``squares_diffae``
(or ``--generator``) and ``squares_ddpm`` with each method's defaults, one step per call.

Sections of the JSON (``benchmarks/results/bench_diffae_re[_quick].json``, plot alongside):

* ``iteration``: one row per (method, decode_steps, slots): the engine's programs compiled
  (``compile_s``: init + advance + result; XLA temp bytes of the advance) and timed alone: seconds
  of one search iteration of all slots, per slot, the init seconds per example (Diff-AE-RE encodes
  and inverts each image there, once) and one result call. ``predicted_ce_per_s`` is
  ``slots / (seconds_per_iteration * mean_iterations)``, with the mean iterations of the
  throughput run of the same method and decode steps: CE/s against batch size.
* ``throughput``: one row per (method, decode_steps): a real ``Engine.run`` over all the images
  on the engine of ``run_slots`` slots (``workload.run_slots``; its programs already compiled): CE/s,
  success rate, mean iterations, beside the CE/s its iteration timing predicts (the run ends with its
  slowest image, so it falls below).
* ``memory``: per decode_steps and mode ("unrolled", "rolled"), XLA's temp bytes and compile
  seconds of one Diff-AE-RE search step for a batch of 4 (``jit(vmap(step))``, the engine's step):
  the rolled decoder's memory stays flat in the number of steps, the unrolled one's grows.
* ``machine``: CPU, devices, load while measuring.

Usage:
  python benchmarks/bench_diffae_re.py --quick   # smoke check: 4 images, 2 and 4 slots, 5 and 10 steps
  python benchmarks/bench_diffae_re.py           # 8 images; slots 2-16 at 10 decode steps, 5 and 20 at 4
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: I001  (before JAX: it sets XLA_FLAGS)

import jax
import jax.numpy as jnp
import numpy as np

import cfjax
from cfjax import data

KEY = jax.random.key(0)


def workload(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  f = cfjax.load_predictor("squares_regressor_rho0")
  grid = data.squares_grid("lower", image_size=32)
  ids = np.linspace(0, len(grid["image"]) - 1, n).round().astype(int)
  x = grid["image"][ids]
  t = cfjax.make_targets("mirror", task="regression", predictions=f(x), labels=grid["label"][ids])[:, 0]
  return x, t, ids


def engine_run(eng, x, t, ids) -> dict:
  """One continuous ``Engine.run`` over all images: CE/s, success rate, mean iterations."""
  from cfjax.engine import iterate_examples
  got: list[dict] = []
  t0 = time.perf_counter()
  eng.run(iterate_examples(x, t, ids), key=KEY, on_result=got.append, progress=False)
  sec = time.perf_counter() - t0
  return {"images": len(x), "seconds": sec, "ce_per_s": len(x) / sec,
          "success_rate": float(np.concatenate([g["success"] for g in got]).mean()),
          "mean_iterations": float(np.concatenate([g["iterations"] for g in got]).mean())}


def measure(models, x, t, ids, grid: list[tuple], run_slots: int) -> tuple[list[dict], list[dict]]:
  """``(iteration rows, throughput rows)`` for each ``(method, decode_steps, slots)`` of ``grid``;
  the throughput run uses the engine of ``run_slots`` slots."""
  from cfjax.engine import Engine
  it_rows, run_rows = [], []
  for name, k, slots in grid:
    m = (cfjax.methods.diffae_re(predictor=models["f"], generator=models["g"], decode_steps=k)
         if name == "diffae-re" else cfjax.methods.acre(predictor=models["f"], diffusion=models["ddpm"]))
    eng = Engine(m, num_slots=slots, steps_per_call=1)
    ph = common.engine_phases(eng, x, t, KEY, calls=2)
    row = {"method": name, "decode_steps": k, "slots": eng.num_slots, "compile_s": ph["compile_s"],
           "advance_temp_bytes": ph["compile_advance"].get("temp_bytes"),
           "seconds_per_iteration": ph["seconds_per_iteration"],
           "seconds_per_slot_iteration": ph["seconds_per_iteration"] / eng.num_slots,
           "init_s_per_example": ph["init_s"] / eng.num_slots, "result_s": ph["result_s"]}
    common.log(f"{name} decode_steps={k} slots={eng.num_slots}: {row['seconds_per_iteration']:.3f} s/iter, "
               f"compile {row['compile_s']:.0f} s")
    it_rows.append(row)
    if slots == run_slots:
      r = {"method": name, "decode_steps": k, "slots": eng.num_slots, **engine_run(eng, x, t, ids)}
      r["predicted_ce_per_s"] = _predicted(row, r)
      common.log(f"  run: {r['ce_per_s']:.4f} CE/s (predicted {r['predicted_ce_per_s']:.4f}), "
                 f"success {r['success_rate']:.2f}, mean iterations {r['mean_iterations']:.1f}")
      run_rows.append(r)
  for row in it_rows:
    same = [r for r in run_rows if (r["method"], r["decode_steps"]) == (row["method"], row["decode_steps"])]
    if same:
      row["predicted_ce_per_s"] = _predicted(row, same[0])
  return it_rows, run_rows


def _predicted(it_row: dict, run_row: dict) -> float:
  """CE/s of a steady stream: slots / (seconds per iteration x the run's mean iterations)."""
  return it_row["slots"] / (it_row["seconds_per_iteration"] * run_row["mean_iterations"])


def step_memory(models, x, t, decode_steps) -> list[dict]:
  rows = []
  for k in decode_steps:
    for mode in ("unrolled", "rolled"):
      m = cfjax.methods.diffae_re(predictor=models["f"], generator=models["g"], decode_steps=k, mode=mode)
      keys = jax.random.split(jax.random.key(0), 4)
      states = jax.vmap(m.init, in_axes=(None, 0, 0, 0))(m.params, jnp.asarray(x[:4]), jnp.asarray(t[:4]), keys)
      step = jax.jit(jax.vmap(m.step, in_axes=(None, 0)))
      _, stats = common.compile_stats(step, m.params, states)
      common.log(f"memory decode_steps={k} {mode}: {stats['temp_bytes'] / 2**20:.1f} MiB")
      rows.append({"decode_steps": k, "mode": mode, **stats})
  return rows


def plot(res: dict, path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axs = plt.subplots(1, 3, figsize=(16, 4.5))
  ax = axs[0]
  for key in sorted({(r["method"], r["decode_steps"]) for r in res["iteration"]}, key=str):
    rows = [r for r in res["iteration"] if (r["method"], r["decode_steps"]) == key]
    if len(rows) < 2 or "predicted_ce_per_s" not in rows[0]:
      continue
    label = key[0] if key[1] is None else f"{key[0]}, {key[1]} decode steps"
    ax.plot([r["slots"] for r in rows], [r["predicted_ce_per_s"] for r in rows], marker="o", label=label)
  for r in res["throughput"]:
    ax.plot(r["slots"], r["ce_per_s"], marker="x", color="k", ls="none")
  slots = sorted({r["slots"] for r in res["iteration"]})
  ax.set(xlabel="slots (examples in flight)", ylabel="CE/s", xscale="log", xticks=slots, xticklabels=slots,
         title="CE/s vs batch size (lines: predicted, x: measured runs)")
  ax.minorticks_off()
  ax.legend(fontsize=8)
  ax = axs[1]
  runs = sorted((r for r in res["throughput"] if r["method"] == "diffae-re"), key=lambda r: r["decode_steps"])
  ax.plot([r["decode_steps"] for r in runs], [r["ce_per_s"] for r in runs], marker="o", label="diffae-re")
  for r in res["throughput"]:
    if r["method"] == "acre":
      ax.axhline(r["ce_per_s"], color="gray", ls="--", label=f"acre ({r['slots']} slots)")
  ax.set(xlabel="decode steps", ylabel="CE/s", title=f"measured runs, {runs[0]['slots']} slots" if runs else "")
  ax.legend(fontsize=8)
  ax = axs[2]
  for mode in ("unrolled", "rolled"):
    pts = [(r["decode_steps"], r["temp_bytes"] / 2**20) for r in res["memory"] if r["mode"] == mode]
    ax.plot(*zip(*pts), marker="o", label=mode)
  ax.set(xlabel="decode steps", ylabel="XLA temp MiB (one step, batch 4)", title="memory of a search step")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def settings(quick: bool) -> dict:
  if quick:
    return {"images": 4, "run_slots": 2, "memory_steps": [2, 5, 10],
            "grid": [("diffae-re", 5, 2), ("diffae-re", 10, 2), ("diffae-re", 10, 4), ("acre", None, 2)]}
  return {"images": 8, "run_slots": 4, "memory_steps": [2, 5, 10, 20, 40],
          "grid": ([("diffae-re", 10, s) for s in (2, 4, 8, 16)] + [("diffae-re", k, 4) for k in (5, 20)]
                   + [("acre", None, s) for s in (2, 4, 8, 16)])}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="a smoke check: fewer images, slots and step counts")
  p.add_argument("--generator", default="squares_diffae", help="bundled name, checkpoint or run directory")
  p.add_argument("--out-dir", default=None)
  p.add_argument("--tag", default="", help="names the variant measured (appended to the file name)")
  a = p.parse_args(argv)
  st = settings(a.quick)
  models = {"f": cfjax.load_predictor("squares_regressor_rho0"), "g": cfjax.load_generator(a.generator),
            "ddpm": cfjax.load_diffusion("squares_ddpm")}
  x, t, ids = workload(st["images"])
  with common.LoadMonitor() as mon:
    res = {"workload": {"images": int(st["images"]), "ids": ids.tolist(), "generator": str(a.generator),
                        "generator_train_steps": models["g"].meta.get("train_steps"),
                        "predictor": "squares_regressor_rho0", "target": "mirror", "run_slots": st["run_slots"]},
           "memory": step_memory(models, x, t, st["memory_steps"])}
    res["iteration"], res["throughput"] = measure(models, x, t, ids, st["grid"], st["run_slots"])
  res["machine"] = {**common.machine_info(), "load": mon.summary()}
  json_path, png_path = common.output_paths("bench_diffae_re", a.quick, a.out_dir, a.tag)
  common.write_json(json_path, res)
  plot(res, png_path)
  return res


if __name__ == "__main__":
  main()
