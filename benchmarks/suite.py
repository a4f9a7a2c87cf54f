"""The benchmark suite: every method on the same testbed images at several batch sizes, one command.

Workloads (the bundled models, each method's defaults):

* ``squares`` (regression, the rho = 0 regressor, mirror targets on lower-grid images): AC-RE with
  ``squares_ddpm``, Counterfactual Attacks with ``squares_vae``, Diff-AE-RE with ``squares_diffae``
  (skipped where that model is missing);
* ``shapes`` (classification, flip the bundled classifier's decision on test images): ACE with
  ``shapes_ddpm``, Counterfactual Attacks with ``shapes_vae`` (``loss="log_probability"``).

For each (workload, method, slots): CE/s of a steady ``cfjax.explain`` run over all images (after a
warm-up run of one image, whose extra time is reported as ``compile_s``), success rate, mean
iterations and, on squares, the change inside the square against the background
(:func:`cfjax.metrics.squares_report`). All visible devices are used (``devices``), so the same
command runs unchanged on a GPU or TPU host; ``--bf16`` runs the UNets (DDPM and Diff-AE) in
bfloat16 (parameters stay float32). The device, the machine and its load are recorded.

Writes ``benchmarks/results/suite[_quick][_TAG].json``, a plot of CE/s and quality against slots
beside it, and prints the markdown table the README carries.

Usage:
  python benchmarks/suite.py --quick            # 4 images per workload, slots 2 (minutes on a CPU)
  python benchmarks/suite.py                    # 32 images, slots 1, 4, 16
  python benchmarks/suite.py --bf16 --tag gpu_bf16
  python benchmarks/suite.py --quick --methods acre ace cf-attack --tag pixel_and_vae
"""

from __future__ import annotations

import argparse

import common  # noqa: I001  (before JAX: it sets XLA_FLAGS)

import jax
import numpy as np

import cfjax
from cfjax import data
from cfjax.nets.registry import make_apply


def _bf16(net):
  config = {**net.config, "dtype": "bfloat16"}
  return net._replace(apply=make_apply(config), config=config)


def models(bf16: bool) -> dict:
  out = {"squares_regressor": cfjax.load_predictor("squares_regressor_rho0"),
         "shapes_classifier": cfjax.load_predictor("shapes_classifier"),
         "squares_vae": cfjax.load_generator("squares_vae"), "shapes_vae": cfjax.load_generator("shapes_vae")}
  for name in ("squares_ddpm", "shapes_ddpm"):
    d = cfjax.load_diffusion(name)
    out[name] = d._replace(net=_bf16(d.net)) if bf16 else d
  try:
    out["squares_diffae"] = cfjax.load_generator("squares_diffae")
  except cfjax.CfjaxInputError:
    common.log("squares_diffae is not available: Diff-AE-RE is skipped")
  if bf16 and "squares_diffae" in out:
    from cfjax.generators import diffae_generator
    g = out["squares_diffae"]
    config = {**g.meta["diffae"].config, "dtype": "bfloat16"}
    out["squares_diffae"] = diffae_generator(cfjax.nets.Network(None, g.params, config), g.meta)
  return out


def workloads(m: dict, n: int) -> dict:
  grid = data.squares_grid("lower", image_size=32)
  ids = np.linspace(0, len(grid["image"]) - 1, n).round().astype(int)
  x = grid["image"][ids]
  f = m["squares_regressor"]
  t = cfjax.make_targets("mirror", task="regression", predictions=f(x), labels=grid["label"][ids])[:, 0]
  squares = {"images": x, "targets": t, "ids": ids, "methods": {
      "acre": lambda: cfjax.methods.acre(predictor=f, diffusion=m["squares_ddpm"]),
      "cf-attack": lambda: cfjax.methods.cf_attack(predictor=f, generator=m["squares_vae"], steps=300)}}
  if "squares_diffae" in m:
    squares["methods"]["diffae-re"] = lambda: cfjax.methods.diffae_re(predictor=f, generator=m["squares_diffae"])
  batch = next(iter(data.load("shapes", split="test", batch_size=n, shuffle=False, image_size=32)))
  c = m["shapes_classifier"]
  shapes = {"images": batch["image"], "ids": np.arange(n),
            "targets": cfjax.make_targets("flip", task="classification", predictions=c(batch["image"]))[:, 0],
            "methods": {
                "ace": lambda: cfjax.methods.ace(predictor=c, diffusion=m["shapes_ddpm"], early_stop=True),
                "cf-attack": lambda: cfjax.methods.cf_attack(predictor=c, generator=m["shapes_vae"], steps=300,
                                                             loss="log_probability")}}
  return {"squares": squares, "shapes": shapes}


def squares_quality(res: dict, w: dict) -> dict:
  from cfjax.metrics import squares_report
  lower, upper = data.squares_grid("lower", image_size=32), data.squares_grid("upper", image_size=32)
  r = squares_report({**res, "original": w["images"], "target": w["targets"], "image_id": w["ids"]}, lower, upper)
  return {"inside_over_background": r["inside_over_background"],
          "mean_abs_distance_to_ideal_255": r["mean_abs_distance_to_ideal_255"]}


def run(ws: dict, slots: list[int], only: list[str] | None = None) -> list[dict]:
  rows = []
  for wname, w in ws.items():
    for mname, make in w["methods"].items():
      if only and mname not in only:
        continue
      method = make()
      for s in slots:
        common.log(f"{wname} {mname} slots={s}")
        row, res = common.timed_explain(method, w["images"], w["targets"], w["ids"], s)
        if wname == "squares":
          row.update(squares_quality(res, w))
        rows.append({"workload": wname, "method": mname, **row})
  return rows


def table(rows: list[dict]) -> str:
  lines = ["| workload | method | slots | CE/s | success | mean iterations | compile s | inside/background |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    ratio = r.get("inside_over_background")
    lines.append(f"| {r['workload']} | {r['method']} | {r['slots']} | {r['ce_per_s']:.3g} | "
                 f"{r['success_rate']:.0%} | {r['mean_iterations']:.1f} | {r['compile_s']:.0f} | "
                 f"{'' if ratio is None else f'{ratio:.1f}x'} |")
  return "\n".join(lines)


def plot(rows: list[dict], path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axs = plt.subplots(1, 2, figsize=(12, 4.5))
  for key in sorted({(r["workload"], r["method"]) for r in rows}):
    pts = [r for r in rows if (r["workload"], r["method"]) == key]
    label = f"{key[0]}: {key[1]}"
    axs[0].plot([r["slots"] for r in pts], [r["ce_per_s"] for r in pts], marker="o", label=label)
    axs[1].plot([r["slots"] for r in pts], [r["success_rate"] for r in pts], marker="o", label=label)
  axs[0].set(xlabel="slots", ylabel="CE/s", xscale="log", yscale="log", title="throughput")
  axs[1].set(xlabel="slots", ylabel="success rate", xscale="log", ylim=(0, 1.05), title="quality")
  axs[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="4 images per workload, slots 2")
  p.add_argument("--images", type=int, default=None, help="images per workload (default 32; quick 4)")
  p.add_argument("--slots", type=int, nargs="+", default=None, help="slot counts (default 1 4 16; quick 2)")
  p.add_argument("--methods", nargs="+", default=None, choices=("acre", "cf-attack", "diffae-re", "ace"),
                 help="only these methods (acre, cf-attack, diffae-re, ace; default all)")
  p.add_argument("--bf16", action="store_true", help="UNets in bfloat16 (parameters float32)")
  p.add_argument("--out-dir", default=None)
  p.add_argument("--tag", default="", help="names the variant or device measured (appended to the file name)")
  a = p.parse_args(argv)
  n = a.images or (4 if a.quick else 32)
  slots = a.slots or ([2] if a.quick else [1, 4, 16])
  m = models(a.bf16)
  with common.LoadMonitor() as mon:
    rows = run(workloads(m, n), slots, a.methods)
  res = {"settings": {"images": n, "slots": slots, "bf16": a.bf16, "methods": a.methods or "all",
                      "devices": [str(d) for d in jax.devices()], "backend": jax.default_backend()},
         "rows": rows, "machine": {**common.machine_info(), "load": mon.summary()}}
  json_path, png_path = common.output_paths("suite", a.quick, a.out_dir, a.tag)
  common.write_json(json_path, res)
  plot(rows, png_path)
  print(table(rows))
  return res


if __name__ == "__main__":
  main()
