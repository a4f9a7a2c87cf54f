"""``cfjax train-diffae``: trains a diffusion autoencoder (Diff-AE), resumably, into one directory.

Example:
  cfjax train-diffae --dataset squares --rho 0 --net squares32 --steps 8000 --batch-size 32 \\
      --lr 1e-4 --sample-every 1000 --out runs/squares_diffae

The semantic encoder and the z_sem-conditioned UNet are trained jointly with Diff-AE's epsilon
MSE (:mod:`cfjax.training.diffae`). Re-running the same command after an interruption continues
from the last checkpoint; a different configuration in the same ``--out`` is an error, except
``--steps`` (constant learning rate: a finished run can be extended). The EMA model is
``OUT/model`` (load it with ``cfjax.load_generator(OUT)``), with ``OUT/metrics.json``
(encode -> decode error on the validation images, and how much of the image z_sem alone
carries), ``OUT/recon.png`` (rows: originals, reconstructions, renders of z_sem from fresh noise),
``OUT/samples/`` and ``OUT/log.jsonl``.
"""

from __future__ import annotations

import argparse

from cfjax.commands import _training

# Options that define the run, in the order the canonical command line lists them.
_RUN_OPTIONS = ("dataset", "rho", "image_size", "net", "steps", "batch_size", "lr", "grad_clip", "p2_gamma",
                "ema", "diffusion_steps", "schedule", "t_eval", "seed", "sample_every", "checkpoint_every",
                "log_every", "eval_limit", "init", "out")


def add_parser(subparsers) -> argparse.ArgumentParser:
  p = subparsers.add_parser("train-diffae", help="train a diffusion autoencoder (Diff-AE)",
                            description=__doc__.splitlines()[0])
  p.add_argument("--dataset", required=True, help="squares, shapes (any cfjax.data name with a test split)")
  p.add_argument("--rho", type=float, default=None, help="shortcut strength of a testbed (squares, shapes)")
  p.add_argument("--image-size", type=int, default=32)
  p.add_argument("--net", default="squares32",
                 help="network: squares32 (cfjax.training.diffae.NETS) or a Diff-AE template (e.g. ffhq64_autoenc)")
  p.add_argument("--steps", type=int, default=10000)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (constant)")
  p.add_argument("--grad-clip", type=float, default=1.0, help="global-norm clip (0: none)")
  p.add_argument("--p2-gamma", type=float, default=0.0,
                 help="P2 weighting (1 + SNR)^-gamma of the epsilon MSE, favouring the noisy steps where "
                      "z_sem is learned (0: Diff-AE's plain MSE)")
  p.add_argument("--ema", type=float, default=0.9999, help="EMA decay (with a warm-up)")
  p.add_argument("--diffusion-steps", type=int, default=1000)
  p.add_argument("--schedule", default="linear", choices=("linear", "cosine"))
  p.add_argument("--t-eval", type=int, default=20, help="DDIM steps of encoding and rendering")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--sample-every", type=int, default=0, help="reconstruction grid every K steps (0: at the end)")
  p.add_argument("--checkpoint-every", type=int, default=200)
  p.add_argument("--log-every", type=int, default=50)
  p.add_argument("--eval-limit", type=int, default=None, help="validation images for the metrics (default: all)")
  p.add_argument("--init", default=None,
                 help="warm start from a saved Diff-AE of the same net and data (a bundled name such as "
                      "squares_diffae, or a path): training continues at its step count, --steps counts the total")
  p.add_argument("--out", required=True, help="run directory")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.set_defaults(func=run)
  return p


def run(args: argparse.Namespace) -> int:
  from cfjax.training import diffae
  cfg = diffae.DiffaeTrainConfig(
      dataset=args.dataset, out=args.out, net=args.net,
      testbed=() if args.rho is None else (("rho", args.rho),), image_size=args.image_size,
      steps=args.steps, batch_size=args.batch_size, lr=args.lr, grad_clip=args.grad_clip,
      p2_gamma=args.p2_gamma, ema=args.ema, diffusion_steps=args.diffusion_steps, schedule=args.schedule,
      T_eval=args.t_eval, seed=args.seed,
      sample_every=args.sample_every, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
      eval_limit=args.eval_limit, init=args.init)
  with _training.interruptible() as stop:
    result = diffae.train(cfg, command=_training.command_line("train-diffae", args, _RUN_OPTIONS),
                          hooks=[stop], progress=not args.no_progress)
  metrics = ", ".join(f"{k} {v:.4g}" for k, v in result["metrics"].items() if isinstance(v, float))
  print(f"saved {result['model']}; reconstructions {result['grid']}")
  print(f"metrics: {metrics}")
  return 0
