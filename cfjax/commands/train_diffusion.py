"""``cfjax train-diffusion``: trains a DDPM (guided-diffusion objective), resumably, into one directory.

Example:
  cfjax train-diffusion --dataset squares --image-size 32 --config squares32 --steps 2000 \\
      --batch-size 32 --lr 1e-4 --diffusion-steps 1000 --schedule linear --sample-every 500 \\
      --out runs/squares_ddpm

Re-running the same command after an interruption continues from the last checkpoint; a
different configuration in the same ``--out`` is an error, except ``--steps`` (the learning rate
is constant, so a larger ``--steps`` extends a finished run). The final EMA model is ``OUT/model``
(a :func:`cfjax.checkpoint.save` directory with ``meta["kind"] == "diffusion"``), sample grids
are ``OUT/samples/step_*.png``, and ``OUT/metrics.json`` holds the final loss and, for squares,
the quality of ACE's filter on the validation grids.
"""

from __future__ import annotations

import argparse

from cfjax.commands import _training

# Options that define the run, in the order the canonical command line lists them.
_RUN_OPTIONS = ("dataset", "rho", "image_size", "config", "channel_mult", "attention_resolutions",
                "num_res_blocks", "model_channels", "steps", "batch_size", "lr", "weight_decay",
                "grad_clip", "ema", "diffusion_steps", "schedule", "seed", "sample_every",
                "sampler", "sample_respacing", "checkpoint_every", "out")


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v.strip()]


def add_parser(subparsers) -> argparse.ArgumentParser:
  p = subparsers.add_parser("train-diffusion", help="train a DDPM (ADM UNet, learned variance)",
                            description=__doc__.splitlines()[0])
  p.add_argument("--dataset", required=True, help="any cfjax.data name: squares, shapes, mnist, ...")
  p.add_argument("--rho", type=float, default=None, help="shortcut strength of a testbed (squares, shapes)")
  p.add_argument("--image-size", type=int, default=32)
  p.add_argument("--config", default="squares32", help="named UNet config (cfjax.nets.unet_config)")
  p.add_argument("--model-channels", type=int, default=None, help="override the config's base width")
  p.add_argument("--channel-mult", default=None, help="override, e.g. 1,2,2")
  p.add_argument("--attention-resolutions", default=None, help="override, e.g. 16,8 ('' for none)")
  p.add_argument("--num-res-blocks", type=int, default=None, help="override")
  p.add_argument("--steps", type=int, default=10000)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--lr", type=float, default=1e-4)
  p.add_argument("--weight-decay", type=float, default=0.0)
  p.add_argument("--grad-clip", type=float, default=1.0, help="global-norm clip (0: none)")
  p.add_argument("--ema", type=float, default=0.9999, help="EMA decay (with a warm-up)")
  p.add_argument("--diffusion-steps", type=int, default=1000)
  p.add_argument("--schedule", default="linear", choices=("linear", "cosine"))
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--sample-every", type=int, default=0, help="sample grid every K steps (0: at the end)")
  p.add_argument("--sampler", default="ddpm", choices=("ddpm", "ddim"))
  p.add_argument("--sample-respacing", default="50", help='re-spacing of the sampler ("50", "ddim50")')
  p.add_argument("--checkpoint-every", type=int, default=200)
  p.add_argument("--filter-images", type=int, default=None,
                 help="squares: validation images for the final filter measurement (0: skip)")
  p.add_argument("--out", required=True, help="run directory")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.set_defaults(func=run)
  return p


def command_line(args: argparse.Namespace) -> str:
  """The canonical command line that reproduces ``args`` (every run option spelled out)."""
  return _training.command_line("train-diffusion", args, _RUN_OPTIONS)


def net_config(args: argparse.Namespace) -> dict:
  """The UNet config: the named config with the command line's overrides and image size."""
  from cfjax.nets import unet_config
  over = {"image_size": args.image_size}
  if args.model_channels is not None:
    over["model_channels"] = args.model_channels
  if args.channel_mult is not None:
    over["channel_mult"] = _ints(args.channel_mult)
  if args.attention_resolutions is not None:
    over["attention_resolutions"] = _ints(args.attention_resolutions)
  if args.num_res_blocks is not None:
    over["num_res_blocks"] = args.num_res_blocks
  return unet_config(args.config, **over)


def run(args: argparse.Namespace) -> int:
  from cfjax.training import diffusion
  testbed = {} if args.rho is None else {"rho": args.rho}
  with _training.interruptible() as stop:
    result = _train(diffusion, args, testbed, stop)
  print(f"saved {result['model']}; samples {result['grid']}")
  print(f"metrics: {result['metrics']}")
  return 0


def _train(diffusion, args, testbed, stop):
  return diffusion.train(
      dataset=args.dataset, net=net_config(args), out=args.out, steps=args.steps,
      batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
      grad_clip=args.grad_clip or None, ema=args.ema, diffusion_steps=args.diffusion_steps,
      schedule=args.schedule, seed=args.seed, image_size=args.image_size, testbed_kwargs=testbed,
      sample_every=args.sample_every, sampler=args.sampler, sample_respacing=args.sample_respacing,
      checkpoint_every=args.checkpoint_every, filter_images=args.filter_images,
      command=command_line(args), hooks=[stop], progress=not args.no_progress)
