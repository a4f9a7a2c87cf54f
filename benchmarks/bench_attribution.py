"""Attribution costs: fitting all attribute heads at once (vmapped) against one fit per attribute,
and the throughput of attributing CE sets.

* ``fit``: one row per (number of attributes A, number of penalty strengths S): seconds of
  :func:`cfjax.attribution.fit_heads` fitting all A logistic heads in one vmapped L-BFGS program
  (with S > 1 strengths: S x folds fits per attribute, cross-validated), next to a Python loop of
  A single-attribute ``fit_heads`` calls with the same settings; both warm (compiled once before
  timing), on N synthetic latents of D dimensions with planted logistic attributes.
* ``attribute``: CE/s of :func:`cfjax.attribution.attribute_ces` (latents given: the heads' means,
  phi and the signs) on sets of M CEs with the widest A.

Writes ``benchmarks/results/attribution_fit[_quick].json`` and a plot beside it. Nothing asserts a
time; the JSON records the machine load.

Usage:
  python benchmarks/bench_attribution.py --quick   # under a minute
  python benchmarks/bench_attribution.py
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (before jax)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cfjax import attribution as at  # noqa: E402


def planted(n: int, d: int, a: int, seed: int = 0):
  """Latents (n, d) and ``a`` binary attributes from random logistic directions."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, d)).astype(np.float32)
  beta = rng.normal(size=(d, a)) * 1.5 / np.sqrt(d)
  p = 1 / (1 + np.exp(-(z @ beta)))
  y = (rng.random((n, a)) < p).astype(np.float32)
  return z, {f"attr_{i:02d}": y[:, i] for i in range(a)}


def time_fit(z, attrs, config, *, repeats: int) -> dict:
  key = jax.random.key(0)
  names = list(attrs)
  vmapped = common.time_calls(lambda: at.fit_heads(z, attrs, config, key=key, generator="bench").params,
                              repeats=repeats)
  loop = common.time_calls(lambda: [at.fit_heads(z, {n: attrs[n]}, config, key=key, generator="bench").params
                                    for n in names], repeats=repeats)
  return {"vmapped_s": vmapped["min_s"], "loop_s": loop["min_s"], "speedup": loop["min_s"] / vmapped["min_s"]}


def time_attribution(heads, sizes, d: int, *, repeats: int) -> list[dict]:
  rows = []
  rng = np.random.default_rng(1)
  for m in sizes:
    res = {"latent_original": rng.normal(size=(m, d)).astype(np.float32),
           "latent": rng.normal(size=(m, d)).astype(np.float32),
           "original_prediction": rng.normal(size=(m,)).astype(np.float32),
           "target": rng.integers(0, 2, m)}
    t = common.time_calls(lambda: at.attribute_ces(res, heads).phi, repeats=repeats)
    rows.append({"num_ces": m, "seconds": t["min_s"], "ce_per_s": m / t["min_s"]})
    common.log(f"attribute {m} CEs: {m / t['min_s']:.0f} CE/s")
  return rows


def plot(data: dict, path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  for s in sorted({r["strengths"] for r in data["fit"]}):
    rows = [r for r in data["fit"] if r["strengths"] == s]
    a = [r["attributes"] for r in rows]
    ax1.plot(a, [r["vmapped_s"] for r in rows], "o-", label=f"vmapped, {s} strength(s)")
    ax1.plot(a, [r["loop_s"] for r in rows], "s--", label=f"loop, {s} strength(s)")
  ax1.set(xlabel="attributes", ylabel="seconds (warm)", xscale="log", yscale="log",
          title=f"fitting heads: N={data['config']['n']}, D={data['config']['d']}")
  ax1.legend(fontsize=7)
  rows = data["attribute"]
  ax2.plot([r["num_ces"] for r in rows], [r["ce_per_s"] for r in rows], "o-")
  ax2.set(xlabel="CEs attributed", ylabel="CE/s", xscale="log", yscale="log",
          title=f"attribute_ces, {data['config']['attributes'][-1]} heads")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  print(f"wrote {path}")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out-dir", default=None)
  args = ap.parse_args()
  n, d = (1000, 32) if args.quick else (4000, 64)
  attributes = (1, 4, 8) if args.quick else (1, 4, 16, 40)
  strengths = ((1e-3,), (1e-4, 1e-3, 1e-2))
  if not args.quick:
    strengths += ((1e-5, 1e-4, 1e-3, 1e-2, 1e-1),)
  sizes = (100, 1000) if args.quick else (100, 1000, 10000, 100000)
  repeats = 1 if args.quick else 3
  load = common.machine_load()
  t0 = time.perf_counter()
  z, attrs = planted(n, d, max(attributes))
  rows = []
  for s in strengths:
    config = at.HeadsConfig(strength=s if len(s) > 1 else s[0], folds=3, holdout=0.0)
    for a in attributes:
      sub = dict(list(attrs.items())[:a])
      row = {"attributes": a, "strengths": len(s), **time_fit(z, sub, config, repeats=repeats)}
      common.log(f"fit A={a} S={len(s)}: vmapped {row['vmapped_s']:.2f} s, loop {row['loop_s']:.2f} s")
      rows.append(row)
  heads = at.fit_heads(z, attrs, at.HeadsConfig(holdout=0.0), key=jax.random.key(0), generator="bench")
  data = {"config": {"n": n, "d": d, "attributes": list(attributes), "strengths": [list(s) for s in strengths],
                     "folds": 3, "solver": "L-BFGS (full batch)"},
          "fit": rows, "attribute": time_attribution(heads, sizes, d, repeats=repeats),
          "machine": common.machine_info(), "load_before": load, "load_after": common.machine_load(),
          "wall_s": time.perf_counter() - t0}
  json_path, png_path = common.output_paths("attribution_fit", args.quick, args.out_dir)
  common.write_json(json_path, data)
  plot(data, png_path)


if __name__ == "__main__":
  main()
