"""Validity of AC-RE and ACE on the testbeds with the bundled models (JSON, and the CE grids).

AC-RE on the squares "lower" validation grid with the "mirror" target (+128/255, whose ideal
counterfactual is the image's "upper" twin, same noise), for the regressor trained without
(rho = 0) and with (rho = 1) the background shortcut, with AC-RE's defaults (the paper's squares
setting: 1000 steps re-spaced to 50, tau 5, step 2/255, at most 100 iterations, tolerance 0.05,
mask dilation 5; early stop judging the refined CE, l1 weight 0.003) unless an AC-RE option is
given (any option of ``cfjax explain --method acre``; the JSON records the settings used):
success rate, iterations, mean |change| inside the square's interior vs in the background (in
[0, 255] units, channel mean), and the distance of each CE to its ideal counterfactual
(:func:`cfjax.metrics.squares_report`).
The images are grid ids ``offset, offset + every, ...``; ``--seed`` is the key seed.
ACE on the first ``--shapes`` shapes test images (flip the bundled classifier's decision) with
the bundled shapes DDPM (tau 5 of 50 re-spaced steps, at most 50 iterations of step 2/255, early
stop, mask dilation 5).

Usage:
  python benchmarks/validity.py [--every 5] [--offset 0] [--seed 0] [--shapes 32]
      [--stop-check refined] [--lam 0.003] [--out benchmarks/results/validity.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")


def main(argv=None) -> dict:
  from cfjax.commands.explain import method_parser
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[method_parser("acre")])
  p.add_argument("--every", type=int, default=5, help="explain every k-th of the 315 grid images")
  p.add_argument("--offset", type=int, default=0, help="first grid id (ids offset, offset + every, ...)")
  p.add_argument("--seed", type=int, default=0, help="key seed of the explanation jobs")
  p.add_argument("--shapes", type=int, default=32, help="shapes test images for ACE (0: skip)")
  p.add_argument("--out", default="benchmarks/results/validity.json")
  p.add_argument("--work", default=None, help="job directories (default /tmp/cfjax_validity_<out name>)")
  p.add_argument("--models", nargs="+", default=["squares_regressor_rho0", "squares_regressor_rho1"])
  p.add_argument("--squares-ddpm", default="squares_ddpm", help="bundled name or checkpoint path")
  p.add_argument("--shapes-ddpm", default="shapes_ddpm", help="bundled name or checkpoint path")
  p.add_argument("--shapes-tau", type=int, default=5)
  args = p.parse_args(argv)

  import numpy as np
  from cfjax.data import squares_grid
  from cfjax.methods import method_spec
  from cfjax.metrics import squares_report
  from cfjax.pipeline.job import ExplainJob, run_job

  # Only the AC-RE options given on the command line; the method's defaults fill in the rest.
  options = {o.name: getattr(args, o.name) for o in method_spec("acre").options() if hasattr(args, o.name)}
  work = Path(args.work or f"/tmp/cfjax_validity_{Path(args.out).stem}")
  lower, upper = squares_grid("lower", image_size=32), squares_grid("upper", image_size=32)
  ids = np.arange(args.offset, 315, args.every)
  report = {"squares_ddpm": str(args.squares_ddpm), "images": {"every": args.every, "offset": args.offset,
                                                               "ids": ids.tolist()},
            "seed": args.seed, "acre_options_given": options, "target": "mirror (+128/255)"}
  for name in args.models:
    t0 = time.time()
    s = run_job(ExplainJob(method="acre", dataset="squares_grid_lower", predictor=name, target="mirror",
                           models={"diffusion": args.squares_ddpm}, method_options=options,
                           subset=tuple(ids.tolist()), seed=args.seed, out_dir=str(work / name)))
    res = dict(np.load(work / name / "results.npz"))
    tol = s["settings"]["tolerance"]
    report.setdefault("acre_settings", s["settings"])
    report[name] = {**squares_report(res, lower, upper),
                    "pre_reached": float(np.mean(np.abs(res["pre_prediction"] - res["target"]) <= tol)),
                    "seconds": round(time.time() - t0, 1), "ce_per_s": s["ce_per_s_this_session"]}
    print(name, json.dumps(report[name], indent=1))
  if args.shapes:
    t0 = time.time()
    ace = {"respacing": "50", "tau": args.shapes_tau, "iterations": 50, "step_size": 2 / 255,
           "early_stop": True, "mask_dilation": 5,
           **({"refine_noise": options["refine_noise"]} if "refine_noise" in options else {})}
    s = run_job(ExplainJob(method="ace", dataset="shapes", predictor="shapes_classifier", target="flip",
                           models={"diffusion": args.shapes_ddpm}, method_options=ace, limit=args.shapes,
                           seed=args.seed, out_dir=str(work / "ace_shapes")))
    res = dict(np.load(work / "ace_shapes" / "results.npz"))
    report["shapes_ddpm"] = str(args.shapes_ddpm)
    report["ace_settings"] = s["settings"]
    report["ace_shapes"] = {"num_images": s["num_explained"], "flip_rate": s["success_rate"],
                            "mean_mask_fraction": float(res["mask"].mean()),
                            "mean_iterations": s["mean_iterations"], "seconds": round(time.time() - t0, 1)}
    print("ace_shapes", json.dumps(report["ace_shapes"], indent=1))
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
  return report


if __name__ == "__main__":
  main()
