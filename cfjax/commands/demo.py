"""``cfjax demo``: AC-RE counterfactuals with the bundled squares models, in a few minutes on a CPU.

Explains 16 images of the squares "lower" validation grid towards their "mirror" target
(inner colour + 128/255) with two bundled regressors: one trained without the spurious
background correlation (rho = 0) and one trained with it (rho = 1, a shortcut learner: flipping
only its background half moves its prediction by 0.11, against 0.01 for rho = 0), and prints how
much each one's counterfactuals change inside and outside the square. The rho = 0 regressor's
CEs change the square's interior (per pixel about 40x more than the background); the rho = 1
regressor's change the background too (only 1.5-4x less than the interior, measured on 32 and 16
grid images): the counterfactuals expose the shortcut. AC-RE runs with its defaults (the paper's
squares setting; the early stop judges the refined CE, l1 weight 0.003).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np



def add_parser(sub):
  p = sub.add_parser("demo", help="AC-RE on the bundled squares models (a few minutes on CPU)",
                     description=__doc__.splitlines()[0])
  p.add_argument("--out", default="cfjax_demo", help="output directory (default ./cfjax_demo)")
  p.add_argument("--num-images", type=int, default=16)
  p.add_argument("--iterations", type=int, default=100)
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(func=run)


def run(args) -> int:
  from cfjax.pipeline.job import ExplainJob, run_job
  out = Path(args.out)
  ids = np.linspace(0, 314, args.num_images).round().astype(int)
  rows = {}
  for name in ("squares_regressor_rho0", "squares_regressor_rho1"):
    s = run_job(ExplainJob(
        method="acre", dataset="squares_grid_lower", predictor=name, models={"diffusion": "squares_ddpm"},
        out_dir=str(out / name), target="mirror", method_options={"iterations": args.iterations},
        subset=tuple(int(i) for i in ids), num_slots=8, progress=not args.quiet))
    res = np.load(out / name / "results.npz")
    m = np.asarray(_interior_masks(res["image_id"]), bool)
    change = np.abs(res["counterfactual"] - res["original"]).sum(-1)
    rows[name] = {"success_rate": s["success_rate"], "mean_iterations": s["mean_iterations"],
                  "mean_change_inside_square": float(change[m].mean()),
                  "mean_change_outside_square": float(change[~m].mean()),
                  "figure": s["figure"]}
  (out / "demo.json").write_text(json.dumps(rows, indent=1))
  for name, r in rows.items():
    print(f"{name}: {r['success_rate']:.0%} reach the target in {r['mean_iterations']:.1f} iterations; "
          f"mean |change| inside the square {r['mean_change_inside_square']:.3f}, outside "
          f"{r['mean_change_outside_square']:.4f}")
    print(f"  figure: {r['figure']}")
  print(f"summary: {out / 'demo.json'}")
  return 0


def _interior_masks(image_ids):
  from cfjax.data import squares_grid
  g = squares_grid("lower", image_size=32)
  return g["mask"][np.asarray(image_ids)]
