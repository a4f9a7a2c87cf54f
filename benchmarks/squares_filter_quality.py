"""How ACE's noise-and-denoise filter treats the squares validation grids, for a trained DDPM.

Runs :func:`cfjax.training.diffusion.squares_filter_quality` (F_tau: 1000 steps re-spaced to 50,
tau = 5 by default, AC-RE's squares setting) on the 630 lower + upper grid images and writes the
numbers as JSON (interior red change, background change, border change, fraction of squares whose
interior colour moves by less than 16/255, and the noise-resampling floor for scale).

Usage:
  python benchmarks/squares_filter_quality.py [--model squares_ddpm] --out /tmp/filter_quality.json \\
      [--tau 5] [--respacing 50] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="squares_ddpm",
                 help="squares DDPM: bundled name, checkpoint or training run directory")
  p.add_argument("--out", default=None, help="JSON file to write (default: print only)")
  p.add_argument("--tau", type=int, nargs="+", default=[5], help="one or more tau values")
  p.add_argument("--respacing", default="50")
  p.add_argument("--limit", type=int, default=None, help="images per grid (default all 315)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)

  import cfjax
  from cfjax.training.diffusion import squares_filter_quality
  ddpm = cfjax.load_diffusion(args.model)
  net = ddpm.net
  results = {"model": str(args.model), "runs": []}
  for tau in args.tau:
    t0 = time.time()
    res = squares_filter_quality(net.apply, net.params, diffusion_steps=ddpm.steps,
                                 schedule=ddpm.beta_schedule, respacing=args.respacing, tau=tau,
                                 image_size=net.config["image_size"], limit=args.limit,
                                 seed=args.seed)
    res["seconds"] = round(time.time() - t0, 1)
    results["runs"].append(res)
    print(json.dumps(res, sort_keys=True))
  if args.out:
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True))
  return results


if __name__ == "__main__":
  main()
