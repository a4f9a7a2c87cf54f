"""``cfjax train-vae``: trains the Counterfactual Attacks VAE (paper's loss), resumably, into one directory.

Example:
  cfjax train-vae --dataset squares --image-size 32 --steps 3000 --batch-size 64 --lr 1e-3 \\
      --edge-weight 0.2 --l1-weight 4 --kl-weight 0 --latent-dim 64 --seed 0 --out runs/squares_vae

The loss is the paper's (MSE + edge_weight * Sobel edge magnitude of the output + l1_weight * L1,
optionally + kl_weight * KL; see :mod:`cfjax.training.vae`). Re-running the same command after an
interruption continues from the last checkpoint; a different configuration in the same ``--out``
is an error, except ``--steps`` with the constant schedule (a finished run can be extended). The final model is ``OUT/model`` (a :func:`cfjax.checkpoint.save` directory with
``meta["kind"] == "generator"``), with ``OUT/metrics.json`` (reconstruction error on the
validation data), ``OUT/recon.png`` (originals and reconstructions in alternate rows) and
``OUT/log.jsonl``.
"""

from __future__ import annotations

import argparse

from cfjax.commands import _training

# Options that define the run, in the order the canonical command line lists them.
_RUN_OPTIONS = ("dataset", "rho", "image_size", "latent_dim", "steps", "batch_size", "lr", "schedule",
                "edge_weight", "l1_weight", "kl_weight", "seed", "checkpoint_every", "log_every", "eval_limit",
                "out")


def add_parser(subparsers) -> argparse.ArgumentParser:
  p = subparsers.add_parser("train-vae", help="train the Counterfactual Attacks VAE",
                            description=__doc__.splitlines()[0])
  p.add_argument("--dataset", required=True, help="squares, shapes (any cfjax.data name with a test split)")
  p.add_argument("--rho", type=float, default=None, help="shortcut strength of a testbed (squares, shapes)")
  p.add_argument("--image-size", type=int, default=32, help="28 or 32")
  p.add_argument("--latent-dim", type=int, default=64)
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
  p.add_argument("--schedule", default="constant", choices=("constant", "cosine"),
                 help="learning rate: constant (the paper's) or cosine decay to 1%% at --steps")
  p.add_argument("--edge-weight", type=float, default=0.2, help="weight of the Sobel edge term")
  p.add_argument("--l1-weight", type=float, default=4.0, help="weight of the L1 term")
  p.add_argument("--kl-weight", type=float, default=0.0, help="weight of the KL term (0 in the paper)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--checkpoint-every", type=int, default=500)
  p.add_argument("--log-every", type=int, default=50, help="steps between training-log records")
  p.add_argument("--eval-limit", type=int, default=None,
                 help="validation images for the final metrics (default: all)")
  p.add_argument("--out", required=True, help="run directory")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.set_defaults(func=run)
  return p


def command_line(args: argparse.Namespace) -> str:
  """The canonical command line that reproduces ``args`` (every run option spelled out)."""
  return _training.command_line("train-vae", args, _RUN_OPTIONS)


def run(args: argparse.Namespace) -> int:
  from cfjax.training import vae
  testbed = {} if args.rho is None else {"rho": args.rho}
  with _training.interruptible() as stop:
    result = vae.train(
        dataset=args.dataset, out=args.out, image_size=args.image_size, latent_dim=args.latent_dim,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule, edge_weight=args.edge_weight,
        l1_weight=args.l1_weight, kl_weight=args.kl_weight, seed=args.seed, testbed_kwargs=testbed,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        eval_limit=args.eval_limit, command=command_line(args), hooks=[stop], progress=not args.no_progress)
  metrics = ", ".join(f"{k} {v:.4g}" for k, v in result["metrics"].items() if isinstance(v, float))
  print(f"saved {result['model']}; reconstructions {result['grid']}")
  print(f"metrics: {metrics}")
  return 0
