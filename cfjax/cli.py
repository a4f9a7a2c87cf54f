"""The ``cfjax`` command line.

Each subcommand lives in its own module under :mod:`cfjax.commands` and exposes
``add_parser(subparsers)`` (which registers it and sets ``func``). Modules are imported lazily
per command so that ``cfjax --help`` does not import JAX.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cfjax._validate import CfjaxInputError

# subcommand name -> module in cfjax.commands
COMMANDS = {
    "demo": "demo",
    "train-predictor": "train_predictor",
    "train-diffusion": "train_diffusion",
    "train-vae": "train_vae",
    "train-diffae": "train_diffae",
    "convert-checkpoint": "convert_checkpoint",
    "explain": "explain",
    "evaluate": "evaluate",
    "fit-heads": "fit_heads",
    "attribute": "attribute",
}


def _available():
  out = {}
  for name, mod in COMMANDS.items():
    try:
      out[name] = importlib.import_module(f"cfjax.commands.{mod}")
    except ModuleNotFoundError as e:
      if e.name != f"cfjax.commands.{mod}":
        raise
  return out


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="cfjax", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  for _, module in _available().items():
    module.add_parser(sub)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if getattr(args, "accepts_extra", False):
    args.extra = extra  # a command with options of its own kind (explain: the method's)
  elif extra:
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  try:
    return int(args.func(args) or 0)
  except CfjaxInputError as e:
    print(f"cfjax {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
