"""``cfjax fit-heads``: attribute heads (GLMs) on a generator's latent codes of a dataset.

Encodes ``--limit`` images of ``--dataset`` with ``--generator`` and fits one head per attribute:
the testbeds' factors (squares: color_a, color_b, x, y; shapes: shape (the label), background,
x, y, size) or CelebA's 40 attributes (read through tfds from ``--data-dir``, never downloaded).
``--predictor P`` adds the heads of P's own decisions on the decoded latents (``class_k`` /
``prediction``: the InterFaceGAN direction of ``cfjax explain --method interfacegan``). Writes the
heads to ``--out`` (see :func:`cfjax.attribution.load_heads`) and prints their held-out metrics.

Example:
  cfjax fit-heads --generator squares_vae --dataset squares --attributes color_a,color_b,x,y \\
      --limit 2000 --out heads/squares
"""

from __future__ import annotations

import dataclasses

from cfjax._validate import CfjaxInputError, unknown_name

ALL = "all"


def add_parser(sub):
  p = sub.add_parser("fit-heads", help="fit attribute heads (GLMs) on a generator's latents",
                     description=__doc__.splitlines()[0])
  p.add_argument("--generator", required=True, help="bundled name, checkpoint directory or run directory")
  p.add_argument("--dataset", required=True, help="squares, shapes, celeb_a, celeb_a_hq, ...")
  p.add_argument("--attributes", default=ALL,
                 help="comma-separated factor / attribute names, or 'all' (default); 'none' with --predictor")
  p.add_argument("--predictor", default=None, help="also fit heads of this predictor's decisions")
  p.add_argument("--split", default="train")
  p.add_argument("--limit", type=int, default=2000, help="images to encode")
  p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=JSON",
                 help="testbed option, e.g. --dataset-option rho=1.0")
  p.add_argument("--data-dir", default=None, help="tfds data directory (real datasets)")
  p.add_argument("--family", default="auto",
                 help="auto (0/1: logistic, other counts: poisson, else linear), logistic, linear or poisson; "
                      "or one per attribute, comma-separated")
  p.add_argument("--penalty", default="l2", choices=("l2", "l1"))
  p.add_argument("--strength", default="1e-3",
                 help="penalty strength, or comma-separated candidates chosen by cross-validation")
  p.add_argument("--folds", type=int, default=5)
  p.add_argument("--holdout", type=float, default=0.2, help="fraction held out for the metrics")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True, help="output directory of the heads")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(func=run)


def _strengths(text: str):
  try:
    vals = tuple(float(v) for v in text.split(",") if v.strip())
  except ValueError as e:
    raise CfjaxInputError(f"--strength must be numbers, got {text!r}") from e
  return vals[0] if len(vals) == 1 else vals


def _families(text: str, num_attributes: int) -> tuple[str, ...]:
  """One family per attribute: the one given for all, or one each (comma-separated)."""
  fams = tuple(f.strip() for f in text.split(","))
  for f in fams:
    if f not in ("auto", "logistic", "linear", "poisson"):
      raise CfjaxInputError(f"--family must be auto, logistic, linear or poisson (or one per attribute), "
                            f"got {f!r}")
  if len(fams) == 1:
    return fams * num_attributes
  if len(fams) != num_attributes:
    raise CfjaxInputError(f"--family names {len(fams)} families for {num_attributes} attributes")
  return fams


def _load_data(args, size: int):
  import numpy as np
  from cfjax import data
  from cfjax.commands.explain import parse_options
  ds = data.load(args.dataset, split=args.split, batch_size=min(args.limit, 256), shuffle=False,
                 image_size=size, data_dir=args.data_dir, **parse_options(args.dataset_option))
  first = next(iter(ds))
  avail = data.attribute_names(first)
  named = {ALL: avail, "none": []}
  wanted = named[args.attributes] if args.attributes in named else [s.strip() for s in args.attributes.split(",")]
  for n in wanted:
    if n not in avail:
      raise unknown_name(f"attribute of {args.dataset!r}", n, avail)
  images, cols, count = [], {n: [] for n in wanted}, 0
  for b in ds:
    images.append(b["image"])
    for n, v in data.attribute_columns(b, wanted).items():
      cols[n].append(v)
    count += len(b["image"])
    if count >= args.limit:
      break
  return np.concatenate(images)[: args.limit], {n: np.concatenate(v)[: args.limit] for n, v in cols.items()}


def run(args) -> int:
  from pathlib import Path
  if args.limit < 10:
    raise CfjaxInputError(f"--limit must be >= 10, got {args.limit}")
  if args.attributes == "none" and not args.predictor:
    raise CfjaxInputError("--attributes none needs --predictor (nothing to fit otherwise)")
  if Path(args.out).exists() and not args.overwrite:
    raise CfjaxInputError(f"{args.out} exists; pass --overwrite to replace it")
  import jax
  from cfjax import attribution as at
  from cfjax.generators import load_generator
  gen = load_generator(args.generator)
  images, labels = _load_data(args, int(gen.image_shape[0]))
  families = _families(args.family, len(labels))
  config = at.HeadsConfig(strength=_strengths(args.strength), penalty=args.penalty, folds=args.folds,
                          holdout=args.holdout)
  config.check()
  key = jax.random.key(args.seed)
  z = at.encode_images(gen, images, key=jax.random.fold_in(key, 0))
  if args.predictor:
    from cfjax.nets.loading import load_predictor
    pred = load_predictor(args.predictor)
    task = (pred.meta or {}).get("task")
    if task is None:
      raise CfjaxInputError(f"predictor {args.predictor!r} records no task")
    decisions = at.decision_labels(pred, gen, z, task=task, key=jax.random.fold_in(key, 1))
    families += ("auto",) * len(decisions)  # logistic per class, or linear for a regressor
    labels.update(decisions)
  config = dataclasses.replace(config, family=families)
  heads = at.fit_heads(z, labels, config, key=jax.random.fold_in(key, 2), generator=gen)
  path = heads.save(args.out, overwrite=args.overwrite)
  _print_summary(heads)
  print(f"heads: {path}")
  return 0


def _print_summary(heads) -> None:
  for row in heads.summary():
    scores = {k: row[k] for k in ("accuracy", "auc", "r2", "rmse", "deviance_explained") if k in row}
    text = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
    print(f"  {row['attribute']:<24} {row['family']:<9} strength {row['strength']:.2g}  {text}")
