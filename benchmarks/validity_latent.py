"""Validity of the latent methods (Diff-AE-RE, Counterfactual Attacks) on the squares testbed, beside AC-RE.

The squares "lower" validation grid with the "mirror" target (+128/255, whose ideal counterfactual
is the image's "upper" twin), for the regressor trained without (rho = 0) and with (rho = 1) the
background shortcut, with the method's defaults unless options are given (``--option name=value``).
For each regressor: :func:`cfjax.metrics.squares_report` of the CEs against the originals (success,
iterations, change inside the square's interior vs the background, distance to the ideal CE) and,
as ``own_change``, of the CEs against the generator's reconstruction of the original (what the
latent edit itself changed, apart from the autoencoder's reconstruction error). With ``--acre DIR``
(the work directory of ``benchmarks/validity.py`` on the same ids) the AC-RE figures of the same
images are copied beside them.

Usage:
  python benchmarks/validity_latent.py --method diffae-re --generator squares_diffae --every 10 --offset 2 \\
      --seed 1 --out benchmarks/results/validity_diffae_re_heldout_seed1.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")


def _value(text: str):
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return text


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--method", default="diffae-re", choices=("diffae-re", "cf-attack"))
  p.add_argument("--generator", default="squares_diffae", help="bundled name or checkpoint path")
  p.add_argument("--option", action="append", default=[], help="a method option, name=value")
  p.add_argument("--every", type=int, default=10, help="explain every k-th of the 315 grid images")
  p.add_argument("--offset", type=int, default=2, help="first grid id")
  p.add_argument("--seed", type=int, default=1, help="key seed of the explanation jobs")
  p.add_argument("--models", nargs="+", default=["squares_regressor_rho0", "squares_regressor_rho1"])
  p.add_argument("--acre", default=None, help="benchmarks/validity.py work directory of the same ids")
  p.add_argument("--out", default="benchmarks/results/validity_latent.json")
  p.add_argument("--work", default=None, help="job directories (default /tmp/cfjax_<out name>)")
  args = p.parse_args(argv)

  import numpy as np
  from cfjax.data import squares_grid
  from cfjax.metrics import squares_report
  from cfjax.pipeline.job import ExplainJob, run_job

  options = dict(o.split("=", 1) for o in args.option)
  options = {k: _value(v) for k, v in options.items()}
  work = Path(args.work or f"/tmp/cfjax_{Path(args.out).stem}")
  lower, upper = squares_grid("lower", image_size=32), squares_grid("upper", image_size=32)
  ids = np.arange(args.offset, 315, args.every)
  from cfjax.nets.loading import load_network
  train_steps = load_network(args.generator, kind="generator")[1].get("train_steps")
  report = {"method": args.method, "generator": str(args.generator), "generator_train_steps": train_steps,
            "options_given": options,
            "images": {"every": args.every, "offset": args.offset, "ids": ids.tolist()}, "seed": args.seed,
            "target": "mirror (+128/255)"}
  for name in args.models:
    t0 = time.time()
    s = run_job(ExplainJob(method=args.method, dataset="squares_grid_lower", predictor=name, target="mirror",
                           models={"generator": args.generator}, method_options=options,
                           subset=tuple(ids.tolist()), seed=args.seed, out_dir=str(work / name)))
    res = dict(np.load(work / name / "results.npz"))
    report.setdefault("settings", s["settings"])
    own = {**res, "original": res["reconstruction"]}
    report[name] = {**squares_report(res, lower, upper), "own_change": squares_report(own, lower, upper),
                    "seconds": round(time.time() - t0, 1), "ce_per_s": s["ce_per_s_this_session"]}
    if args.acre:
      acre = dict(np.load(Path(args.acre) / name / "results.npz"))
      report[name]["acre_same_images"] = squares_report(acre, lower, upper)
    print(name, json.dumps(report[name], indent=1))
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
  return report


if __name__ == "__main__":
  main()
