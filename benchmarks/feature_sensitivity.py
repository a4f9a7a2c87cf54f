"""What a testbed FID sees: FID between squares and controlled changes of them, per feature network.

For N squares of the test split (32 px), each change re-renders the same factors with one factor
moved (the square's colour color_a or the background color_b by +64 grey levels, clipped at 255;
the square moved by 4 pixels) or only the pixel noise drawn afresh, and the FID between the
originals and the changed set is computed in the features of each extractor: the in-domain
feature network bundled for squares (``squares_features``, trained on every factor) and the
penultimate layer of the rho = 0 regressor (``squares_regressor_rho0``, trained on color_a only).

Writes ``benchmarks/results/feature_sensitivity[_quick].json`` and a bar plot beside it.

Usage:
  python benchmarks/feature_sensitivity.py            # 1024 squares
  python benchmarks/feature_sensitivity.py --quick    # 256 squares
"""

from __future__ import annotations

import argparse
import importlib

import common  # noqa: I001  (before JAX: it sets XLA_FLAGS)

import numpy as np

from cfjax.metrics.features import feature_extractor
from cfjax.metrics.realism import fid_from_features

EXTRACTORS = ("squares_features", "squares_regressor_rho0")
SIZE = 32
sq = importlib.import_module("cfjax.data.squares")  # the module (cfjax.data.squares is also a function)


def changes(n: int, seed: int = 0) -> dict[str, np.ndarray]:
  """The originals and each changed set, as float32 images in [0, 1]."""
  f = sq.factors(n, image_size=SIZE, split="test", seed=seed)
  rng = np.random.default_rng(seed + 1)

  def noise():
    return rng.normal(0.0, sq.NOISE_STD, (n, SIZE, SIZE, 3)).astype(np.float32)

  base = noise()
  move = dict(f)
  g = sq.geometry(SIZE)
  move["x"] = np.where(f["x"] + 4 <= g["positions"], f["x"] + 4, f["x"] - 4)
  sets = {"original": (f, base), "fresh_noise": (f, noise()),
          "color_a_plus_64": ({**f, "color_a": np.minimum(f["color_a"] + 64, 255)}, base),
          "color_b_plus_64": ({**f, "color_b": np.minimum(f["color_b"] + 64, 255)}, base),
          "square_moved_4px": (move, base)}
  return {k: sq.render(v["color_a"], v["color_b"], v["x"], v["y"], z, SIZE).astype(np.float32) / 255
          for k, (v, z) in sets.items()}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="256 squares")
  p.add_argument("--n", type=int, default=None, help="squares (default 1024; quick 256)")
  p.add_argument("--out-dir", default=None)
  args = p.parse_args()
  n = args.n or (256 if args.quick else 1024)
  sets = changes(n)
  out = {"n": n, "image_size": SIZE, "machine": common.machine_info(), "fid": {}}
  for name in EXTRACTORS:
    f = feature_extractor(name)
    feats = {k: np.asarray(f(v), np.float64) for k, v in sets.items()}
    out["fid"][name] = {k: fid_from_features(feats["original"], v) for k, v in feats.items() if k != "original"}
    common.log(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in out["fid"][name].items()))
  json_path, png_path = common.output_paths("feature_sensitivity", args.quick, args.out_dir)
  common.write_json(json_path, out)
  _plot(out, png_path)
  common.log(f"wrote {json_path} and {png_path}")


def _plot(out: dict, path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  kinds = list(next(iter(out["fid"].values())))
  fig, ax = plt.subplots(figsize=(8, 3.5))
  width = 0.8 / len(out["fid"])
  for i, (name, values) in enumerate(out["fid"].items()):
    ax.bar(np.arange(len(kinds)) + i * width, [max(values[k], 1e-6) for k in kinds], width, label=name)
  ax.set_xticks(np.arange(len(kinds)) + width * (len(out["fid"]) - 1) / 2, kinds, fontsize=8)
  ax.set_yscale("log")
  ax.set_ylabel("FID to the originals")
  ax.set_title(f"What the squares feature networks see ({out['n']} test squares, 32 px)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


if __name__ == "__main__":
  main()
