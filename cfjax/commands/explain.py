"""``cfjax explain``: counterfactuals for a dataset with any registered method.

Writes OUT/grid.png (original | counterfactual | mask, where the method makes one | difference),
OUT/results.npz (per-image arrays), OUT/summary.json (success rate, mean iterations, CE/s,
settings), OUT/trajectory.png for methods that record a latent path, and OUT/run/ (the resumable
shards: re-running the same command after an interruption continues where it stopped).
``--metrics a,b`` computes metrics (:mod:`cfjax.metrics.runs`) while the run streams, prints them
and writes them to summary.json under "metrics".

The options after the common ones are the method's own, generated from its declared config:
``cfjax explain --method NAME --help`` lists them.
"""

from __future__ import annotations

import argparse
import json

from cfjax._validate import CfjaxInputError

MODEL_FLAGS = ("predictor", "diffusion", "generator")


def add_parser(sub):
  p = sub.add_parser("explain", help="explain a dataset with any method (ace, acre, cf-attack, diffae-re, ...)",
                     description=__doc__.splitlines()[0], add_help=False, allow_abbrev=False)
  _common(p)
  p.set_defaults(func=run, accepts_extra=True)


def _common(p):
  p.add_argument("-h", "--help", action="store_true", help="show this help (with --method: its options)")
  p.add_argument("--method", help="a registered method (cfjax explain --help lists them)")
  p.add_argument("--dataset", help="e.g. squares_grid_lower, shapes, mnist, celeb_a")
  p.add_argument("--split", default="test")
  p.add_argument("--limit", type=int, default=None, help="explain the first N images")
  p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=JSON",
                 help="testbed option, e.g. --dataset-option rho=1.0")
  p.add_argument("--predictor", help="bundled name, checkpoint directory or training run directory")
  p.add_argument("--diffusion", help="diffusion model (methods that need one): name, checkpoint or run")
  p.add_argument("--generator", help="generator (latent methods): name, checkpoint or run")
  p.add_argument("--target", default=None,
                 help="target rule: flip | class:K | next (classifiers); value:V | shift:D | "
                      "values:V1,V2 | mirror (regressors); default mirror / flip / next")
  p.add_argument("--num-slots", type=int, default=16)
  p.add_argument("--steps-per-call", type=int, default=None,
                 help="method steps per compiled call (default: the method's, 1 for diffusion methods)")
  p.add_argument("--result-slots", type=int, default=None,
                 help="finished CEs whose results are computed together (default: --num-slots)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--metrics", action="append", default=[], metavar="NAMES",
                 help="metrics computed while the run streams, comma-separated (see cfjax evaluate); "
                      "written to summary.json")
  p.add_argument("--features", default=None,
                 help="feature extractor of fid / sfid: squares, shapes, inception weights or any predictor "
                      "(default: the testbed's own)")
  p.add_argument("--out", help="output directory")
  p.add_argument("--quiet", action="store_true")


def _methods():
  from cfjax.methods import known_methods
  return known_methods()


def method_parser(name: str) -> argparse.ArgumentParser:
  """The parser of one method's options, generated from its config."""
  from cfjax.methods import method_spec
  spec = method_spec(name)
  p = argparse.ArgumentParser(prog=f"cfjax explain --method {name}", add_help=False, allow_abbrev=False,
                              description=spec.doc.splitlines()[0] if spec.doc else None)
  g = p.add_argument_group(f"options of {name} (models: {', '.join(spec.needs)})")
  for o in spec.options():
    flag = "--" + o.name.replace("_", "-")
    kw = {"dest": o.name, "default": argparse.SUPPRESS, "help": f"{o.help} (default {o.default})"}
    if o.type is bool:
      g.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
    else:
      choices = [c for c in o.choices if c is not None] if o.choices else None
      g.add_argument(flag, type=o.type, choices=choices, **kw)
  return p


def parse_options(items) -> dict:
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


def _help(parser_of_common, method):
  text = parser_of_common.format_help()
  if method:
    text += "\n" + method_parser(method).format_help()
  else:
    text += "\nmethods: " + ", ".join(_methods()) + " (cfjax explain --method NAME --help lists its options)\n"
  print(text)
  return 0


def run(args) -> int:
  from cfjax.methods import method_spec
  from cfjax.pipeline.job import ExplainJob, run_job
  if args.method is not None:
    method_spec(args.method)  # an unknown name is an error before anything else
  if args.help:
    p = argparse.ArgumentParser(prog="cfjax explain", description=__doc__.splitlines()[0], add_help=False,
                                allow_abbrev=False)
    _common(p)
    return _help(p, args.method)
  missing = [f"--{n}" for n in ("method", "dataset", "predictor", "out") if getattr(args, n) is None]
  if missing:
    raise CfjaxInputError(f"cfjax explain needs {', '.join(missing)} (see cfjax explain --help)")
  from cfjax.metrics.runs import metric_names
  metrics = metric_names(args.metrics)
  mp = method_parser(args.method)
  try:
    opts, rest = mp.parse_known_args(args.extra)
  except SystemExit as e:  # argparse already printed what is wrong with the value
    raise CfjaxInputError(f"bad option value for method {args.method!r}") from e
  if rest:
    raise CfjaxInputError(f"unknown option(s) {' '.join(rest)} for method {args.method!r}; "
                          f"cfjax explain --method {args.method} --help lists them")
  job = ExplainJob(
      method=args.method, dataset=args.dataset, predictor=args.predictor, out_dir=args.out,
      models={"diffusion": args.diffusion, "generator": args.generator}, method_options=vars(opts),
      target=args.target, split=args.split, limit=args.limit,
      dataset_options=parse_options(args.dataset_option), num_slots=args.num_slots,
      steps_per_call=args.steps_per_call, result_slots=args.result_slots, seed=args.seed,
      progress=not args.quiet, metrics=metrics, features=args.features)
  summary = run_job(job)
  print(f"{summary['num_explained']} counterfactuals, {summary['success_rate']:.1%} reach the target, "
        f"mean {summary['mean_iterations']:.1f} iterations")
  for k, v in summary.get("metrics", {}).items():
    print(f"  {k}: {v:.4g}")
  print(f"figure:  {summary['figure']}")
  if "trajectory_figure" in summary:
    print(f"path:    {summary['trajectory_figure']}")
  print(f"summary: {args.out}/summary.json")
  return 0
