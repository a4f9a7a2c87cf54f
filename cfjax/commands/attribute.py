"""``cfjax attribute``: which attributes the counterfactuals of a run change (local and global importance).

Reads the CEs of ``cfjax explain`` (``--ces``: its output directory, a ``results.npz`` or a run
directory) and attribute heads (``--heads``: a ``cfjax fit-heads`` directory), and writes into
``--out``: ``global.csv`` / ``global.json`` (attributes ranked by ``psi``), ``per_image.csv`` /
``per_image.json`` (``phi`` of every CE) and ``importance.png`` (the ranking as bars). Latent
methods' CEs carry their latents; pixel-space CEs (ace, acre) are encoded with ``--generator``.

Example:
  cfjax attribute --ces out/cf_attack --heads heads/squares --out out/attribution
"""

from __future__ import annotations

from cfjax._validate import CfjaxInputError

KINDS = ("directed", "mean_abs")


def add_parser(sub):
  p = sub.add_parser("attribute", help="rank the attributes that a run's counterfactuals change",
                     description=__doc__.splitlines()[0])
  p.add_argument("--ces", required=True, help="cfjax explain output directory, results.npz or run directory")
  p.add_argument("--heads", required=True, help="attribute heads directory (cfjax fit-heads)")
  p.add_argument("--generator", default=None,
                 help="the heads' generator: encodes pixel-space CEs, and is checked against the heads")
  p.add_argument("--kind", default=None, choices=KINDS,
                 help="ranking: directed (mean s*phi, default where the originals' predictions are known) "
                      "or mean_abs (mean |phi|)")
  p.add_argument("--only-successful", action="store_true", help="attribute only CEs that reach their target")
  p.add_argument("--positive-class", type=int, default=1, help="class whose probability sets the signs")
  p.add_argument("--top", type=int, default=10, help="attributes in the figure")
  p.add_argument("--seed", type=int, default=0, help="keys the encoder of pixel-space CEs")
  p.add_argument("--out", required=True, help="output directory")
  p.set_defaults(func=run)


def _run_generator(ces) -> str | None:
  """The generator named in the summary of a ``cfjax explain`` directory, if any."""
  import json
  from pathlib import Path
  summary = Path(ces) / "summary.json"
  if not summary.is_file():
    return None
  settings = json.loads(summary.read_text()).get("settings", {})
  return settings.get("generator")


def run(args) -> int:
  import jax
  from cfjax import attribution as at
  heads = at.load_heads(args.heads)
  used = _run_generator(args.ces)
  if used is not None and used != heads.generator["name"]:
    raise CfjaxInputError(f"the CEs in {args.ces} come from generator {used!r}, but the heads were fitted "
                          f"for {heads.generator['name']!r}: fit heads on {used!r}'s latents")
  gen = None
  if args.generator:
    from cfjax.generators import load_generator
    gen = load_generator(args.generator)
  att = at.attribute_ces(args.ces, heads, gen, key=jax.random.key(args.seed), only_successful=args.only_successful,
                         positive_class=args.positive_class)
  if att.phi.shape[0] == 0:
    raise CfjaxInputError(f"no counterfactuals to attribute in {args.ces}")
  kind = args.kind or att.default_kind()
  paths = att.write(args.out, top=args.top, kind=kind)
  print(f"{att.phi.shape[0]} counterfactuals, ranked by {kind}:")
  for row in att.ranked(kind)[: args.top]:
    print(f"  {row['rank']:>2}. {row['attribute']:<24} psi {row[f'psi_{kind}']:+.4f}")
  print(f"figure: {paths['figure']}")
  print(f"tables: {paths['global_csv']}, {paths['per_image_csv']}")
  return 0
