"""``cfjax convert-checkpoint``: a guided-diffusion PyTorch state dict -> a cfjax (orbax) checkpoint."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def add_parser(sub):
  p = sub.add_parser(
      "convert-checkpoint",
      help="convert a guided-diffusion / ACE / DiME .pt (or .npz) state dict to a cfjax checkpoint",
      description="Reads the state dict with torch.load(weights_only=True) (never arbitrary "
                  "unpickling), checks every key and shape against the named UNet config, and "
                  "writes an orbax checkpoint that `cfjax explain --diffusion` accepts.")
  p.add_argument("source", help="path of the .pt/.pth (needs `pip install 'cfjax[torch]'`) or .npz file")
  p.add_argument("--config", required=True,
                 help="named UNet config (celeba128, celebahq256, imagenet256_uncond, small32, ...)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                 help="override a config entry, e.g. --set num_classes=1000 --set dtype='\"bfloat16\"'")
  p.add_argument("--steps", type=int, help="diffusion steps the model was trained with (default: the config's)")
  p.add_argument("--schedule", choices=["linear", "cosine"], help="beta schedule (default: the config's)")
  p.add_argument("--out", required=True, help="output checkpoint directory")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(func=run)


def run(args) -> int:
  from cfjax import checkpoint
  from cfjax._validate import CfjaxInputError
  from cfjax.nets import diffusion_settings, torch_import, unet_config

  overrides = {}
  for item in args.set:
    key, sep, value = item.partition("=")
    if not sep:
      raise CfjaxInputError(f"--set expects KEY=JSON, got {item!r}")
    try:
      overrides[key] = json.loads(value)
    except json.JSONDecodeError as e:
      raise CfjaxInputError(f"--set {key}: {value!r} is not JSON ({e})") from e
  config = unet_config(args.config, **overrides)
  diffusion = diffusion_settings(args.config)
  if args.steps:
    diffusion["steps"] = args.steps
  if args.schedule:
    diffusion["schedule"] = args.schedule
  src = Path(args.source)
  net = torch_import.load_guided_diffusion(src, config)
  digest = hashlib.sha256(src.read_bytes()).hexdigest()
  meta = {"kind": "diffusion", "diffusion": diffusion, "source": str(src.resolve()),
          "source_sha256": digest, "named_config": args.config,
          "command": "cfjax convert-checkpoint " + " ".join(getattr(args, "argv", []) or sys.argv[2:])}
  out = checkpoint.save(args.out, net.config, net.params, meta=meta, overwrite=args.overwrite)
  print(f"wrote {out} ({sum(x.size for x in __import__('jax').tree.leaves(net.params)):,} parameters)")
  return 0
