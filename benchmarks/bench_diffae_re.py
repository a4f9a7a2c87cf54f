"""Diff-AE-RE throughput and memory, next to AC-RE on the same squares images, in one run.

The workload: lower-grid squares images (ids spread over the grid), mirror targets (+128/255, whose
ideal counterfactual is the upper twin), the rho = 0 regressor, the bundled ``squares_diffae``
(or ``--generator``) and ``squares_ddpm`` with each method's defaults.

Sections of the JSON (``benchmarks/results/bench_diffae_re[_quick].json``, plot alongside):

* ``throughput``: one row per (method, decode_steps, num_slots): CE/s of a steady
  ``cfjax.explain`` over the images (after a warm-up run of the same program), success rate, mean
  iterations, and the compile seconds (first run minus its repetition on one image).
* ``memory``: per decode_steps and mode ("unrolled", "rolled"), XLA's temp bytes and compile
  seconds of one Diff-AE-RE search step for a batch of 4 (``jit(vmap(step))``, the engine's step):
  the rolled decoder's memory stays flat in the number of steps, the unrolled one's grows.
* ``machine``: CPU, devices, load while measuring.

Usage:
  python benchmarks/bench_diffae_re.py --quick   # smoke check, a few minutes
  python benchmarks/bench_diffae_re.py           # slots 1, 4, 8, 16; decode steps 5, 10, 20
"""

from __future__ import annotations

import argparse

import common  # noqa: I001  (before JAX: it sets XLA_FLAGS)

import jax
import jax.numpy as jnp
import numpy as np

import cfjax
from cfjax import data


def workload(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  f = cfjax.load_predictor("squares_regressor_rho0")
  grid = data.squares_grid("lower", image_size=32)
  ids = np.linspace(0, len(grid["image"]) - 1, n).round().astype(int)
  x = grid["image"][ids]
  t = cfjax.make_targets("mirror", task="regression", predictions=f(x), labels=grid["label"][ids])[:, 0]
  return x, t, ids


def throughput(models, x, t, ids, slots, decode_steps) -> list[dict]:
  rows = []
  for k in decode_steps:
    m = cfjax.methods.diffae_re(predictor=models["f"], generator=models["g"], decode_steps=k)
    for s in slots:
      common.log(f"diffae-re decode_steps={k} slots={s}")
      rows.append({"method": "diffae-re", "decode_steps": k, **common.timed_explain(m, x, t, ids, s)[0]})
  acre = cfjax.methods.acre(predictor=models["f"], diffusion=models["ddpm"])
  for s in slots[-2:]:
    common.log(f"acre slots={s}")
    rows.append({"method": "acre", "decode_steps": None, **common.timed_explain(acre, x, t, ids, s)[0]})
  return rows


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
  fig, axs = plt.subplots(1, 2, figsize=(12, 4.5))
  ax = axs[0]
  for key in sorted({(r["method"], r["decode_steps"]) for r in res["throughput"]}, key=str):
    pts = [(r["slots"], r["ce_per_s"]) for r in res["throughput"] if (r["method"], r["decode_steps"]) == key]
    label = key[0] if key[1] is None else f"{key[0]}, {key[1]} decode steps"
    ax.plot(*zip(*pts), marker="o", label=label)
  ax.set(xlabel="slots (examples in flight)", ylabel="CE/s", xscale="log", title="throughput, squares")
  ax.legend(fontsize=8)
  ax = axs[1]
  for mode in ("unrolled", "rolled"):
    pts = [(r["decode_steps"], r["temp_bytes"] / 2**20) for r in res["memory"] if r["mode"] == mode]
    ax.plot(*zip(*pts), marker="o", label=mode)
  ax.set(xlabel="decode steps", ylabel="XLA temp MiB (one step, batch 4)", title="memory of a search step")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="a few minutes: fewer images, slots and step counts")
  p.add_argument("--generator", default="squares_diffae", help="bundled name, checkpoint or run directory")
  p.add_argument("--out-dir", default=None)
  p.add_argument("--tag", default="", help="names the variant measured (appended to the file name)")
  a = p.parse_args(argv)
  n, slots, steps = (4, [1, 4], [5, 10]) if a.quick else (32, [1, 4, 8, 16], [5, 10, 20])
  mem_steps = [2, 5, 10] if a.quick else [2, 5, 10, 20, 40]
  models = {"f": cfjax.load_predictor("squares_regressor_rho0"), "g": cfjax.load_generator(a.generator),
            "ddpm": cfjax.load_diffusion("squares_ddpm")}
  x, t, ids = workload(n)
  with common.LoadMonitor() as mon:
    res = {"workload": {"images": int(n), "ids": ids.tolist(), "generator": str(a.generator),
                        "generator_train_steps": models["g"].meta.get("train_steps"),
                        "predictor": "squares_regressor_rho0", "target": "mirror"},
           "memory": step_memory(models, x, t, mem_steps),
           "throughput": throughput(models, x, t, ids, slots, steps)}
  res["machine"] = {**common.machine_info(), "load": mon.summary()}
  json_path, png_path = common.output_paths("bench_diffae_re", a.quick, a.out_dir, a.tag)
  common.write_json(json_path, res)
  plot(res, png_path)
  return res


if __name__ == "__main__":
  main()
