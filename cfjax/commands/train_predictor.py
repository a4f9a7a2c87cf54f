"""``cfjax train-predictor``: trains a regressor or classifier, resumably, into one directory.

Example:
  cfjax train-predictor --dataset squares --task regression --arch small_cnn --rho 1.0 \\
      --image-size 32 --steps 3000 --batch-size 64 --lr 2e-3 --eval-every 500 --out runs/sq_rho1

Re-running the same command after an interruption continues from the last checkpoint; a
different configuration in the same ``--out`` is an error. The final model is ``OUT/model`` (a
:func:`cfjax.checkpoint.save` directory), with ``OUT/metrics.json`` and ``OUT/log.jsonl``.
"""

from __future__ import annotations

import argparse

from cfjax.commands import _training

# Options that define the run, in the order the canonical command line lists them.
_RUN_OPTIONS = ("dataset", "task", "arch", "attribute", "targets", "rho", "image_size", "width", "steps",
                "batch_size", "lr", "weight_decay", "schedule", "warmup", "seed", "eval_every",
                "checkpoint_every", "log_every", "out")


def add_parser(subparsers) -> argparse.ArgumentParser:
  p = subparsers.add_parser("train-predictor", help="train a regressor or classifier",
                            description=__doc__.splitlines()[0])
  p.add_argument("--dataset", required=True, help="squares, shapes, mnist, celeb_a, ...")
  p.add_argument("--task", required=True, choices=("regression", "classification"))
  p.add_argument("--arch", default="small_cnn", help="small_cnn or resnet18")
  p.add_argument("--attribute", default=None, help="label attribute (e.g. Smiling for celeb_a)")
  p.add_argument("--targets", default=None,
                 help="regress on these attributes together (comma-separated, or 'all'; standardised) "
                      "instead of the label: a testbed's in-domain feature network")
  p.add_argument("--rho", type=float, default=None, help="shortcut strength of a testbed (squares, shapes)")
  p.add_argument("--image-size", type=int, default=32)
  p.add_argument("--width", type=int, default=None, help="network width (arch default if unset)")
  p.add_argument("--steps", type=int, default=2000)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--lr", type=float, default=2e-3)
  p.add_argument("--weight-decay", type=float, default=1e-4)
  p.add_argument("--schedule", default="cosine", choices=("cosine", "constant"))
  p.add_argument("--warmup", type=int, default=0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--eval-every", type=int, default=0, help="evaluate every K steps (0: at the end)")
  p.add_argument("--checkpoint-every", type=int, default=200)
  p.add_argument("--log-every", type=int, default=50, help="steps between training-log records")
  p.add_argument("--out", required=True, help="run directory")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.set_defaults(func=run)
  return p


def command_line(args: argparse.Namespace) -> str:
  """The canonical command line that reproduces ``args`` (every run option spelled out)."""
  return _training.command_line("train-predictor", args, _RUN_OPTIONS)


def _targets(text: str | None):
  if text is None or text == "all":
    return text
  return tuple(t.strip() for t in text.split(",") if t.strip())


def run(args: argparse.Namespace) -> int:
  from cfjax.training import predictor
  testbed = {} if args.rho is None else {"rho": args.rho}
  result = predictor.train(
      dataset=args.dataset, task=args.task, arch=args.arch, out=args.out, steps=args.steps,
      batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
      schedule=args.schedule, warmup=args.warmup, seed=args.seed, image_size=args.image_size,
      width=args.width, attribute=args.attribute, testbed_kwargs=testbed, targets=_targets(args.targets),
      eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
      command=command_line(args), progress=not args.no_progress)
  metrics = ", ".join(f"{k} {v:.4g}" for k, v in result["metrics"].items() if isinstance(v, float))
  print(f"saved {result['model']} ({metrics})")
  return 0
