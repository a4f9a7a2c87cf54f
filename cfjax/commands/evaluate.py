"""``cfjax evaluate``: metrics of ``cfjax explain`` runs side by side, as JSON, markdown and figures.

Writes OUT/metrics.json (every value of every run, the settings of the table), OUT/metrics.md
(methods as rows, metrics as columns), OUT/figures/{metric}.png (each value per run) and
OUT/figures/examples_{run}.png (the CEs of the image ids all runs share). Metrics are chosen by
name (``--metric``, repeated or comma-separated); the default depends on the task and data set
(classification: success_rate, flip_rate, proximity; regression: success_rate, oracle_mae,
proximity; plus the testbeds' ground-truth metrics); ``fid`` and ``sfid`` compare the CEs with the
run's inputs in the features of ``--features`` (default: the testbed's in-domain network).

Example:
  cfjax evaluate --ces runs/acre runs/ace --out runs/compare --metric success_rate,proximity
"""

from __future__ import annotations


def add_parser(sub):
  p = sub.add_parser("evaluate", help="metrics of explain runs: JSON, a markdown table, figures",
                     description=__doc__.splitlines()[0])
  p.add_argument("--ces", nargs="+", required=True, metavar="DIR", help="cfjax explain output directories")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--metric", action="append", default=[], metavar="NAME",
                 help="metric name(s), repeated or comma-separated (default: per task and data set)")
  p.add_argument("--predictor", default=None,
                 help="predictor for flip_rate / cout (default: the one each run records)")
  p.add_argument("--features", default=None,
                 help="feature extractor of fid / sfid (default: the one each run records, else the testbed's "
                      "in-domain network): squares, shapes, a converted InceptionV3 directory, any predictor")
  p.add_argument("--examples", type=int, default=8, help="images per examples figure (0: none)")
  p.add_argument("--batch-size", type=int, default=64)
  p.set_defaults(func=run)


def run(args) -> int:
  from cfjax.metrics.report import markdown_table, write_report
  from cfjax.metrics.runs import evaluate_runs, metric_names
  names = metric_names(args.metric)  # unknown names fail before any run is read
  predictor = None
  if args.predictor:
    from cfjax.nets.loading import load_predictor
    predictor = load_predictor(args.predictor)
  table = evaluate_runs(args.ces, names or None, predictor=predictor, features=args.features,
                        batch_size=args.batch_size)
  paths = write_report(table, args.out, rows=args.examples)
  print(markdown_table(table))
  print(f"metrics: {paths['json']}, {paths['markdown']}")
  print(f"figures: {len(paths['figures'])} in {args.out}/figures")
  return 0
