"""Attribute rankings of Counterfactual Attacks, AC-RE and Diff-AE-RE side by side, on squares.

The ground truth: the squares regressor trained without the background shortcut (rho = 0) reads
the square's red level ``color_a``; the shortcut regressor (rho = 1) reads the background grey
``color_b`` as well. Attribution should rank ``color_a`` first for rho = 0 and give ``color_b``
more weight for rho = 1, whichever method made the CEs.

* Heads: linear, on the bundled ``squares_vae``'s mean codes of 1200 training images, for
  color_a, color_b, x and y (as ``tests/test_attribution_testbeds.py``).
* CEs: lower-grid images (ids ``offset, offset + every, ...``), the mirror target (+128/255), both
  regressors, each method with its defaults (Counterfactual Attacks: 300 steps) and key seed 2.
* Every CE set is attributed through the VAE's mean encoder: AC-RE from the original image to the
  CE; the latent methods from their generator's reconstruction to the CE (the edit itself, without
  the autoencoder's error). Counterfactual Attacks are also attributed in their own latent space
  (the VAE's), where the heads live.

Writes ``benchmarks/results/attribution_rankings[_TAG].json`` (per method and regressor: success,
iterations, psi of every attribute, both rankings, and :func:`cfjax.metrics.squares_report` of the
CEs against the originals and, for the latent methods, against the reconstructions: how much the
square's interior and the background changed, on the same images for every method) and a figure
of the directed importances.

Usage:
  python benchmarks/attribution_rankings.py                 # 16 images, all three methods
  python benchmarks/attribution_rankings.py --every 40      # 8 images
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: I001  (before JAX: it sets XLA_FLAGS)

import jax
import numpy as np

import cfjax
from cfjax import attribution as at
from cfjax import data
from cfjax.metrics import squares_report

FACTORS = ("color_a", "color_b", "x", "y")
METHODS = ("cf-attack", "acre", "diffae-re")


def fit_heads(vae, mean_vae):
  b = next(iter(data.load("squares", split="train", batch_size=1200, shuffle=False, image_size=32)))
  z = at.encode_images(mean_vae, b["image"], key=jax.random.key(0))
  return at.fit_heads(z, {k: b[k].astype(np.float32) for k in FACTORS},
                      at.HeadsConfig(family="linear", strength=1e-4), key=jax.random.key(1), generator=vae)


def make_method(name: str, f, models: dict):
  if name == "cf-attack":
    return cfjax.methods.cf_attack(predictor=f, generator=models["vae"], steps=300, trajectory_every=0)
  if name == "acre":
    return cfjax.methods.acre(predictor=f, diffusion=models["ddpm"])
  return cfjax.methods.diffae_re(predictor=f, generator=models["diffae"], trajectory_every=0)


def summary(att) -> dict:
  psi = {kind: dict(zip(att.names, np.asarray(v).round(5).tolist())) for kind, v in att.psi.items()}
  return {"psi": psi, "ranked_mean_abs": [r["attribute"] for r in att.ranked("mean_abs")],
          "ranked_directed": [r["attribute"] for r in att.ranked("directed")]}


def explain_and_attribute(name: str, rho: str, x, grids, ids, heads, models) -> dict:
  f = cfjax.load_predictor(f"squares_regressor_{rho}")
  pred = np.asarray(f(x))
  t = cfjax.make_targets("mirror", task="regression", predictions=pred, labels=grids[0]["label"][ids])[:, 0]
  t0 = time.perf_counter()
  res = cfjax.explain(make_method(name, f, models), x, t, key=jax.random.key(2), ids=ids, num_slots=len(ids),
                      progress=False)
  seconds = time.perf_counter() - t0
  start = res.get("reconstruction", x)
  images = {"original": start, "counterfactual": res["counterfactual"], "original_prediction": pred,
            "target": t, "success": res["success"]}
  row = {"method": name, "regressor": rho, "images": len(ids), "seconds": round(seconds, 1),
         "success_rate": float(res["success"].mean()), "mean_iterations": float(res["iterations"].mean()),
         "attributed_from": "reconstruction" if "reconstruction" in res else "original",
         "encoded": summary(at.attribute_ces(images, heads, models["mean_vae"]))}
  report = {**res, "original": x, "image_id": ids, "target": t}
  row["squares"] = squares_report(report, *grids)
  if "reconstruction" in res:
    row["squares_own_change"] = squares_report({**report, "original": res["reconstruction"]}, *grids)
  if name == "cf-attack":
    row["latent"] = summary(at.attribute_ces({**res, "original_prediction": pred, "target": t}, heads))
  common.log(f"{name} {rho}: success {row['success_rate']:.0%}, ranked {row['encoded']['ranked_mean_abs']}")
  return row


def plot(rows: list[dict], path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  methods = list(dict.fromkeys(r["method"] for r in rows))
  fig, axs = plt.subplots(len(methods), 2, figsize=(8, 2.3 * len(methods)), sharex=True, squeeze=False)
  for i, name in enumerate(methods):
    for j, rho in enumerate(("rho0", "rho1")):
      ax = axs[i, j]
      match = [r for r in rows if r["method"] == name and r["regressor"] == rho]
      if not match:
        ax.axis("off")
        continue
      psi = match[0]["encoded"]["psi"]["directed"]
      ax.barh(list(FACTORS), [psi[k] for k in FACTORS], color=["tab:red", "tab:gray", "tab:blue", "tab:blue"],
              edgecolor="black")
      ax.axvline(0, color="black", linewidth=0.5)
      ax.invert_yaxis()
      ax.set_title(f"{name}, squares_regressor_{rho}: success {match[0]['success_rate']:.0%}", fontsize=9)
  fig.supxlabel("directed psi through the VAE's encoder (towards the target)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--every", type=int, default=20, help="every k-th lower-grid image")
  p.add_argument("--offset", type=int, default=3, help="first grid id")
  p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
  p.add_argument("--out-dir", default=None)
  p.add_argument("--tag", default="", help="names the variant measured (appended to the file name)")
  a = p.parse_args(argv)
  vae, mean_vae = cfjax.load_generator("squares_vae"), cfjax.load_generator("squares_vae", encode="mean")
  models = {"vae": vae, "mean_vae": mean_vae, "ddpm": cfjax.load_diffusion("squares_ddpm"),
            "diffae": cfjax.load_generator("squares_diffae")}
  heads = fit_heads(vae, mean_vae)
  grids = data.squares_grid("lower", image_size=32), data.squares_grid("upper", image_size=32)
  ids = np.arange(a.offset, len(grids[0]["image"]), a.every)
  x = grids[0]["image"][ids]
  rows = [explain_and_attribute(name, rho, x, grids, ids, heads, models)
          for name in a.methods for rho in ("rho0", "rho1")]
  res = {"settings": {"ids": ids.tolist(), "key_seed": 2, "target": "mirror", "heads": "linear, squares_vae mean codes",
                      "diffae_train_steps": models["diffae"].meta.get("train_steps")},
         "heads_r2": {k: round(v["r2"], 4) for k, v in heads.metrics.items()},
         "rows": rows, "machine": common.machine_info()}
  json_path, png_path = common.output_paths("attribution_rankings", False, a.out_dir, a.tag)
  common.write_json(json_path, res)
  plot(rows, png_path)
  return res


if __name__ == "__main__":
  main()
