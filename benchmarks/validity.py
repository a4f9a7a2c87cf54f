"""Validity of AC-RE and ACE on the testbeds with the bundled models (JSON, and the CE grids).

AC-RE on the squares "lower" validation grid with the "mirror" target (+128/255, whose ideal
counterfactual is the image's "upper" twin, same noise), for the regressor trained without
(rho = 0) and with (rho = 1) the background shortcut, in AC-RE's squares setting (1000 steps
re-spaced to 50, tau = 5, step 2/255, at most 100 iterations, early stop at 0.05, mask dilation 5):
success rate, iterations, mean |change| inside the square's interior vs in the background (in
[0, 255] units, channel mean), and the distance of each CE to its ideal counterfactual.
ACE on the shapes testbed (flip the bundled classifier's decision) with the bundled shapes DDPM.

Usage:
  python benchmarks/validity.py [--every 5] [--shapes 32] [--stop-check refined] [--margin 0.02]
      [--lam 0.003] [--refine-noise attack|fresh] [--out benchmarks/results/validity.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")


def squares_report(results: dict, grid_lower: dict, grid_upper: dict) -> dict:
  """Per-run numbers of AC-RE on the lower grid (see the module docstring)."""
  import numpy as np
  ids = results["image_id"]
  ce, x = results["counterfactual"], results["original"]
  inside = grid_lower["mask"][ids].astype(bool)
  square = np.zeros_like(inside)  # the whole 12x12 (6x6 at 32 px) square: interior plus border
  for k, i in enumerate(ids):
    ys, xs = np.nonzero(grid_lower["mask"][i])
    b = max(1, (ys.max() - ys.min() + 1) // 4)
    square[k, max(ys.min() - b, 0):ys.max() + b + 1, max(xs.min() - b, 0):xs.max() + b + 1] = True
  background = ~square
  change = np.abs(ce - x).mean(-1) * 255
  ideal = grid_upper["image"][ids]
  success = results["success"].astype(bool)
  return {
      "num_images": int(len(ids)),
      "success_rate": float(success.mean()),
      "mean_iterations": float(results["iterations"].mean()),
      "mean_change_inside_interior_255": float(change[inside].mean()),
      "mean_change_background_255": float(change[background].mean()),
      "inside_over_background": float(change[inside].mean() / max(change[background].mean(), 1e-9)),
      "mean_abs_distance_to_ideal_255": float(np.abs(ce - ideal).mean() * 255),
      "mean_abs_distance_original_to_ideal_255": float(np.abs(x - ideal).mean() * 255),
      "interior_red_distance_to_ideal_255": float(
          np.abs(ce[..., 0] - ideal[..., 0])[inside].mean() * 255),
      "interior_red_original_to_ideal_255": float(
          np.abs(x[..., 0] - ideal[..., 0])[inside].mean() * 255),
      "mean_prediction_error": float(np.abs(results["prediction"] - results["target"]).mean()),
  }


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--every", type=int, default=5, help="explain every k-th of the 315 grid images")
  p.add_argument("--shapes", type=int, default=32, help="shapes test images for ACE (0: skip)")
  p.add_argument("--out", default="benchmarks/results/validity.json")
  p.add_argument("--work", default="/tmp/cfjax_validity")
  p.add_argument("--models", nargs="+", default=["squares_regressor_rho0", "squares_regressor_rho1"])
  p.add_argument("--squares-ddpm", default="squares_ddpm", help="bundled name or checkpoint path")
  p.add_argument("--shapes-ddpm", default="shapes_ddpm", help="bundled name or checkpoint path")
  p.add_argument("--shapes-tau", type=int, default=5)
  p.add_argument("--stop-check", default="filter", help="acre: early stop on the filter or the refined CE")
  p.add_argument("--margin", type=float, default=0.0, help="acre: early-stop margin")
  p.add_argument("--lam", type=float, default=None, help="acre: l1 weight (default: the method's, 0.001)")
  p.add_argument("--refine-noise", default="attack", help="attack (cfjax default) or fresh (original)")
  args = p.parse_args(argv)

  import numpy as np
  from cfjax.data import squares_grid
  from cfjax.engine.job import explain_dataset

  lower, upper = squares_grid("lower", image_size=32), squares_grid("upper", image_size=32)
  subset = np.arange(0, 315, args.every)
  report = {"squares_ddpm": str(args.squares_ddpm), "shapes_ddpm": str(args.shapes_ddpm),
            "shapes_tau": args.shapes_tau,
            "setting": "acre: 1000 steps re-spaced to 50, tau 5, step 2/255, <= 100 iterations, "
                       "tolerance 0.05, mask dilation 5, threshold 0.15, target mirror (+128/255)",
            "stop_check": args.stop_check, "margin": args.margin, "refine_noise": args.refine_noise,
            "lam": args.lam}
  for name in args.models:
    t0 = time.time()
    s = explain_dataset(method="acre", dataset="squares_grid_lower", predictor=name,
                        diffusion=args.squares_ddpm, out_dir=Path(args.work) / name, target="mirror",
                        respacing="50", tau=5, iterations=100, step_size=2 / 255,
                        method_options={"mask_dilation": 5, "tolerance": 0.05, "margin": args.margin,
                                        "stop_check": args.stop_check, "refine_noise": args.refine_noise,
                                        **({} if args.lam is None else {"lam": args.lam})},
                        subset=subset,
                        num_slots=16, steps_per_call=2)
    res = dict(np.load(Path(args.work) / name / "results.npz"))
    pre_reached = np.abs(res["pre_prediction"] - res["target"]) <= 0.05
    report[name] = {**squares_report(res, lower, upper), "pre_reached": float(pre_reached.mean()),
                    "seconds": round(time.time() - t0, 1),
                    "ce_per_s": s["ce_per_s_this_session"], "figure": s["figure"]}
    print(name, json.dumps(report[name], indent=1))
  if args.shapes:
    t0 = time.time()
    s = explain_dataset(method="ace", dataset="shapes", predictor="shapes_classifier",
                        diffusion=args.shapes_ddpm, out_dir=Path(args.work) / "ace_shapes",
                        target="flip", limit=args.shapes, respacing="50", tau=args.shapes_tau,
                        iterations=50,
                        step_size=2 / 255, method_options={"early_stop": True, "mask_dilation": 5,
                                                           "refine_noise": args.refine_noise},
                        num_slots=16, steps_per_call=2)
    res = dict(np.load(Path(args.work) / "ace_shapes" / "results.npz"))
    report["ace_shapes"] = {"num_images": s["num_explained"], "flip_rate": s["success_rate"],
                            "mean_mask_fraction": float(res["mask"].mean()),
                            "mean_iterations": s["mean_iterations"], "seconds": round(time.time() - t0, 1),
                            "figure": s["figure"]}
    print("ace_shapes", json.dumps(report["ace_shapes"], indent=1))
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(report, indent=1))
  return report


if __name__ == "__main__":
  main()
