"""``cfjax explain``: counterfactuals for a dataset with ACE (classifiers) or AC-RE (regressors).

Writes OUT/grid.png (original | counterfactual | mask | difference), OUT/results.npz (per-image
arrays), OUT/summary.json (success rate, mean iterations, CE/s, settings) and OUT/run/ (the
resumable shards: re-running the same command after an interruption continues where it stopped).
"""

from __future__ import annotations

import json


def add_parser(sub):
  p = sub.add_parser("explain", help="explain a dataset with ACE or AC-RE", description=__doc__.splitlines()[0])
  p.add_argument("--method", required=True, help="ace (classifiers) or acre (regressors)")
  p.add_argument("--dataset", required=True, help="e.g. squares_grid_lower, shapes, celeb_a")
  p.add_argument("--split", default="test")
  p.add_argument("--limit", type=int, default=None, help="explain the first N images")
  p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=JSON",
                 help="testbed option, e.g. --dataset-option rho=1.0")
  p.add_argument("--predictor", required=True, help="checkpoint directory or bundled name")
  p.add_argument("--diffusion", required=True, help="checkpoint directory or bundled name")
  p.add_argument("--target", default=None,
                 help="target rule: flip | class:K | next (ace); value:V | shift:D | values:V1,V2 | mirror (acre)")
  p.add_argument("--respacing", default=None, help="re-spacing of the DDPM (default 50 for 1000 steps, 25 for 500)")
  p.add_argument("--tau", type=int, default=5)
  p.add_argument("--iterations", type=int, default=None)
  p.add_argument("--step-size", type=float, default=None, help="in [0, 1] units, e.g. 0.00784 for 2/255")
  p.add_argument("--dist", choices=("l1", "l2"), default=None)
  p.add_argument("--lam", type=float, default=None)
  p.add_argument("--optimizer", choices=("sign", "sgd", "adam"), default=None)
  p.add_argument("--early-stop", action="store_true", help="ace: stop an image once its decision is the target")
  p.add_argument("--tolerance", type=float, default=None, help="acre: early-stop tolerance (default 0.05)")
  p.add_argument("--margin", type=float, default=None,
                 help="early-stop margin: ace, on the target's probability lead; acre, stop at "
                      "|f - target| <= tolerance - margin (default 0)")
  p.add_argument("--mask-dilation", type=int, default=None)
  p.add_argument("--chain-mode", choices=("unrolled", "rolled"), default=None)
  p.add_argument("--refine-noise", choices=("attack", "fresh"), default=None,
                 help="refinement noise: the attack's last draws (default) or fresh draws (original ACE)")
  p.add_argument("--stop-check", choices=("filter", "refined"), default=None,
                 help="early stop judged on the filtered sample (default) or on the refined CE")
  p.add_argument("--num-slots", type=int, default=16)
  p.add_argument("--steps-per-call", type=int, default=2)
  p.add_argument("--result-slots", type=int, default=None,
                 help="finished CEs refined together (default: --num-slots)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True)
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(func=run)


def parse_options(items) -> dict:
  from cfjax._validate import CfjaxInputError
  out = {}
  for item in items:
    k, sep, v = item.partition("=")
    if not sep:
      raise CfjaxInputError(f"expected KEY=JSON, got {item!r}")
    try:
      out[k] = json.loads(v)
    except json.JSONDecodeError:
      out[k] = v
  return out


def run(args) -> int:
  from cfjax.engine.job import explain_dataset
  names = ("dist", "lam", "optimizer", "tolerance", "margin", "mask_dilation", "chain_mode",
           "refine_noise", "stop_check")
  opts = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
  if args.early_stop:
    opts["early_stop"] = True
  target = args.target or ("mirror" if args.method == "acre" else "flip")
  summary = explain_dataset(
      method=args.method, dataset=args.dataset, split=args.split, limit=args.limit,
      predictor=args.predictor, diffusion=args.diffusion, out_dir=args.out, target=target,
      respacing=args.respacing, tau=args.tau, iterations=args.iterations, step_size=args.step_size,
      num_slots=args.num_slots, steps_per_call=args.steps_per_call,
      result_slots=args.result_slots, seed=args.seed,
      dataset_options=parse_options(args.dataset_option), method_options=opts,
      progress=not args.quiet)
  print(f"{summary['num_explained']} counterfactuals, {summary['success_rate']:.1%} reach the target, "
        f"mean {summary['mean_iterations']:.1f} iterations")
  print(f"figure:  {summary['figure']}")
  print(f"summary: {args.out}/summary.json")
  return 0
