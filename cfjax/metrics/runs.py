"""Metrics of explanation runs, by name: defaults per task and dataset, testbed ground truth joined
by image id, a streaming ``on_result`` callback for jobs, and the evaluation of run directories.

A run is what :func:`cfjax.pipeline.job.run_job` (``cfjax explain``) writes: ``summary.json``
(the method, its settings with the task, and the run's dataset, split, target rule, predictor)
and ``results.npz`` (per-CE arrays with ``image_id``, ``original``, ``target``). Metrics are built
from that record alone:

* ``success_rate``, ``proximity``: every run.
* ``flip_rate`` (with ``target_rate``), ``cout``: classification; the run's predictor is loaded
  by name (``flip_rate`` reads the stored predictions when no predictor is recorded).
* ``oracle_mae``: regression, from the stored predictions.
* ``region_change`` (square interior vs background), ``squares_factor_change``: squares data sets.
* ``shapes_background_change``: shapes.
* ``ideal_distance`` (grey levels): a squares grid explained with the "mirror" target, whose
  ideal CE is the image's twin in the other grid.
* ``fid``, ``sfid``: CEs against the run's inputs in the features of a feature extractor
  (:func:`cfjax.metrics.features.feature_extractor`): the one given (``features=``, ``cfjax
  evaluate --features``), else the one the run records, else the testbed's in-domain network
  (squares, shapes); other data sets need one named (e.g. a converted InceptionV3).

Metrics that need models of their own (FVA, MNAC, ...) are built in Python with
:mod:`cfjax.metrics` and passed to :func:`cfjax.metrics.evaluate_results`.

Example:
  >>> default_metrics("regression", "squares_grid_lower", "mirror")
  ('success_rate', 'oracle_mae', 'proximity', 'squares_factor_change', 'ideal_distance')
  >>> metric_names(["success_rate,proximity", "flip_rate"])
  ('success_rate', 'proximity', 'flip_rate')
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cfjax._validate import CfjaxInputError, unknown_name
from cfjax.metrics import testbeds, validity
from cfjax.metrics.base import Metric
from cfjax.metrics.evaluate import Evaluator, load_results, stream_results

# metric -> the ground-truth batch keys it reads, joined from the data set by image id
GROUND_TRUTH = {"region_change": ("interior", "background"), "squares_factor_change": ("x", "y"),
                "shapes_background_change": ("shape_mask",), "ideal_distance": ("ideal",)}
TASKS = {"flip_rate": "classification", "cout": "classification", "oracle_mae": "regression"}
NEEDS_PREDICTOR = ("cout",)
FEATURE_METRICS = ("fid", "sfid")
SUPPORTED = ("success_rate", "flip_rate", "oracle_mae", "proximity", "cout", *FEATURE_METRICS, *GROUND_TRUTH)


def metric_names(values: str | Sequence[str] | None) -> tuple[str, ...]:
  """Metric names from ``"a,b"`` strings or lists of them, checked against the known names."""
  if values is None:
    return ()
  items = [values] if isinstance(values, str) else list(values)
  names = tuple(n.strip() for v in items for n in str(v).split(",") if n.strip())
  for n in names:
    if n not in SUPPORTED:
      from cfjax.metrics.registry import known_metrics
      if n in known_metrics():
        raise CfjaxInputError(f"metric {n!r} needs a model of its own: build it with cfjax.metrics.{n}"
                              f"(...) and cfjax.metrics.evaluate_results; by name: {', '.join(SUPPORTED)}.")
      raise unknown_name("metric", n, SUPPORTED)
  if len(set(names)) != len(names):
    raise CfjaxInputError(f"metric names given twice: {', '.join(names)}.")
  return names


def _is_squares(dataset: str) -> bool:
  return dataset == "squares" or dataset.startswith("squares_grid_")


def default_metrics(task: str, dataset: str, target: str | None = None) -> tuple[str, ...]:
  """The metrics a run of ``task`` on ``dataset`` with target rule ``target`` gets by default."""
  names = ["success_rate", "flip_rate" if task == "classification" else "oracle_mae", "proximity"]
  if _is_squares(dataset):
    names.append("squares_factor_change")
  if dataset.startswith("squares_grid_") and target == "mirror":
    names.append("ideal_distance")
  if dataset == "shapes":
    names.append("shapes_background_change")
  return tuple(names)


def _check_fits(names: Sequence[str], run: dict, task: str) -> None:
  dataset = run["dataset"]
  for n in names:
    if TASKS.get(n, task) != task:
      raise CfjaxInputError(f"metric {n!r} is for {TASKS[n]} runs; this run ({dataset}) is {task}.")
  squares_only = [n for n in ("region_change", "squares_factor_change") if n in names]
  if squares_only and not _is_squares(dataset):
    raise CfjaxInputError(f"{', '.join(squares_only)} need(s) a squares data set, not {dataset!r}.")
  if "shapes_background_change" in names and dataset != "shapes":
    raise CfjaxInputError(f"shapes_background_change needs the shapes data set, not {dataset!r}.")
  if "ideal_distance" in names and not (dataset.startswith("squares_grid_") and run.get("target") == "mirror"):
    raise CfjaxInputError("ideal_distance needs an ideal CE: a squares grid (squares_grid_lower/upper) "
                          f"explained with --target mirror; this run is {dataset!r} with target "
                          f"{run.get('target')!r}.")


def _load_fields(dataset: str, run: dict, image_size: int, n: int, fields: Sequence[str]) -> dict:
  """The first ``n`` examples' ``fields`` of the run's data set, in id order."""
  from cfjax import data
  ds = data.load(dataset, split=run.get("split", "test"), batch_size=256, shuffle=False,
                 image_size=image_size, **dict(run.get("dataset_options") or {}))
  parts: dict[str, list] = {f: [] for f in fields}
  count = 0
  for b in ds:
    for f in fields:
      parts[f].append(b[f])
    count += len(b["id"])
    if count >= n:
      break
  if count < n:
    raise CfjaxInputError(f"the run's image ids go up to {n - 1}, but {dataset!r} split "
                          f"{run.get('split')!r} has {count} examples.")
  return {f: np.concatenate(v)[:n] for f, v in parts.items()}


def ground_truth(names: Sequence[str], run: dict, *, image_size: int, image_ids) -> dict[str, np.ndarray]:
  """Ground-truth arrays the metrics ``names`` read, indexed by image id (0 .. max id).

  Example:
    >>> run = {"dataset": "squares_grid_lower", "split": "test", "target": "mirror"}
    >>> gt = ground_truth(["ideal_distance"], run, image_size=32, image_ids=[0, 4])
    >>> sorted(gt), gt["ideal"].shape
    (['ideal'], (5, 32, 32, 3))
  """
  keys = {k for n in names for k in GROUND_TRUTH.get(n, ())}
  if not keys:
    return {}
  dataset, n = run["dataset"], int(np.max(image_ids)) + 1
  out: dict[str, np.ndarray] = {}
  if keys & {"x", "y", "interior", "background"}:
    xy = _load_fields(dataset, run, image_size, n, ("x", "y"))
    regions = testbeds.squares_regions(xy["x"], xy["y"], image_size)
    out.update({k: v for k, v in {**xy, **regions}.items() if k in keys})
  if "shape_mask" in keys:
    mask = _load_fields(dataset, run, image_size, n, ("mask",))["mask"]
    out["shape_mask"] = mask.reshape(mask.shape[:3]).astype(bool)
  if "ideal" in keys:
    twin = "squares_grid_upper" if dataset.endswith("lower") else "squares_grid_lower"
    out["ideal"] = _load_fields(twin, run, image_size, n, ("image",))["image"]
  return out


def _traceable(predictor) -> Callable:
  """A jittable ``images -> outputs`` of a :class:`cfjax.nets.Predictor` (its checks run on the host)."""
  net = getattr(predictor, "net", None)
  if net is None:
    return predictor
  return lambda x: net.apply(net.params, x)


def _one_logit(predictor, image_size: int) -> bool:
  import jax
  channels = int(getattr(predictor, "channels", 3))
  out = jax.eval_shape(_traceable(predictor),
                       jax.ShapeDtypeStruct((1, image_size, image_size, channels), np.float32))
  return out.ndim == 1 or out.shape[-1] == 1


def feature_name(run: dict, features=None):
  """The feature extractor of a run's ``fid`` / ``sfid``: ``features``, the run's record, or the
  testbed's in-domain network.

  Example:
    >>> feature_name({"dataset": "squares_grid_lower"})
    'squares'
  """
  chosen = features or run.get("features")
  if chosen:
    return chosen
  dataset = run["dataset"]
  if _is_squares(dataset):
    return "squares"
  if dataset == "shapes":
    return "shapes"
  raise CfjaxInputError(f"fid and sfid on {dataset!r} need a feature extractor: pass --features (a converted "
                        "InceptionV3 directory, or any predictor checkpoint); the testbeds have their own.")


def _feature_extractor(run: dict, features=None):
  chosen = feature_name(run, features)
  if hasattr(chosen, "apply"):  # a FeatureExtractor already
    return chosen
  from cfjax.metrics.features import feature_extractor
  return feature_extractor(chosen)


def _build(name: str, *, predictor, image_size: int, features=None) -> Metric:
  if name in FEATURE_METRICS:
    from cfjax.metrics import realism
    return realism.fid(features) if name == "fid" else realism.sfid(features, id_key="image_id")
  if name == "flip_rate":
    return validity.flip_rate(None if predictor is None else _traceable(predictor), to_target=True)
  if name == "cout":
    from cfjax.metrics.transition import cout
    return cout(_traceable(predictor), binary=_one_logit(predictor, image_size))
  if name == "squares_factor_change":
    return testbeds.squares_factor_change(image_size)
  if name == "ideal_distance":
    return testbeds.ideal_distance(scale=255.0)
  from cfjax.metrics.registry import make
  return make(name)


def build_metrics(names: Sequence[str], run: dict, *, task: str, image_size: int, image_ids,
                  predictor=None, features=None) -> tuple[list[Metric], dict[str, np.ndarray]]:
  """The metrics ``names`` of one run and the ground truth they join by image id.

  Args:
    names: metric names (see the module docstring).
    run: the run record (``summary.json``'s ``run``): ``dataset``, ``split``, ``target``,
      ``dataset_options``.
    task: "classification" or "regression".
    image_size: the run's image side.
    image_ids: the run's image ids (the ground truth covers 0 .. their max).
    predictor: the run's predictor (``flip_rate`` and ``cout`` evaluate the CEs with it).
    features: the feature extractor of ``fid`` / ``sfid`` (see :func:`feature_name`).

  Example:
    >>> run = {"dataset": "shapes", "split": "test", "target": "flip"}
    >>> ms, gt = build_metrics(["success_rate", "proximity"], run, task="classification",
    ...                        image_size=32, image_ids=[0, 1])
    >>> [m.name for m in ms], gt
    (['success_rate', 'proximity'], {})
  """
  names = metric_names(names)
  _check_fits(names, run, task)
  if predictor is None and any(n in NEEDS_PREDICTOR for n in names):
    raise CfjaxInputError(f"{', '.join(n for n in names if n in NEEDS_PREDICTOR)} need(s) the run's "
                          "predictor, and the run records none.")
  if any(n in FEATURE_METRICS for n in names):
    features = _feature_extractor(run, features)  # loaded once for fid and sfid
  metrics = [_build(n, predictor=predictor, image_size=image_size, features=features) for n in names]
  return metrics, ground_truth(names, run, image_size=image_size, image_ids=image_ids)


def _wanted(metrics: Sequence[Metric]) -> set[str]:
  return {k for m in metrics for k in (*m.requires, *m.accepts)}


class StreamingMetrics:
  """An explanation job's ``on_result`` callback: metrics of the CEs while the run streams.

  The engine's result batches carry the job id (``id``) and the method's outputs; the callback
  joins the job's per-CE inputs (``per_job``: ``original``, ``target``, ``image_id``, ...,
  indexed like ``job_ids``) and the ground truth (by ``image_id``), then updates the metrics.
  :meth:`finish` adds the CEs that were not streamed (read back by a resumed run).

  Example:
    >>> ids = np.arange(2)
    >>> x = np.zeros((2, 32, 32, 3), np.float32)
    >>> sm = StreamingMetrics(["success_rate", "proximity"], {"dataset": "shapes"}, task="classification",
    ...                       job_ids=ids, per_job={"original": x, "image_id": ids})
    >>> sm({"id": ids, "counterfactual": x + np.float32(0.5), "success": np.array([True, False])})
    >>> sm.finish({"id": ids})["success_rate"]
    0.5
  """

  def __init__(self, names: Sequence[str], run: dict, *, task: str, job_ids, per_job: dict,
               predictor=None, features=None, then: Callable[[dict], None] | None = None):
    from cfjax.methods.base import REQUIRED_RESULTS
    x = np.asarray(per_job["original"])
    metrics, data = build_metrics(names, run, task=task, image_size=int(x.shape[1]),
                                  image_ids=per_job["image_id"], predictor=predictor, features=features)
    have = {"id", *REQUIRED_RESULTS, *per_job, *data}
    for m in metrics:
      absent = [k for k in m.requires if k not in have]
      if absent:
        raise CfjaxInputError(f"metric {m.name!r} needs {', '.join(absent)}, which this run does not record.")
    self.evaluator = Evaluator(metrics, data=data, id_key="image_id")
    self.keys = _wanted(metrics) - set(per_job) - set(data)
    self.job_ids = np.asarray(job_ids, np.int64)
    self._order = np.argsort(self.job_ids)
    self.per_job = per_job
    self.then = then
    self.seen: set[int] = set()

  def __call__(self, batch: dict) -> None:
    ids = np.asarray(batch["id"], np.int64)
    rows = self._order[np.searchsorted(self.job_ids[self._order], ids)]
    part = {k: batch[k] for k in self.keys if k in batch}
    self.evaluator({**part, **{k: np.asarray(v)[rows] for k, v in self.per_job.items()}})
    self.seen.update(ids.tolist())
    if self.then is not None:
      self.then(batch)

  def finish(self, results: dict, batch_size: int = 64) -> dict[str, float]:
    """Streams the CEs of ``results`` not seen yet (with the per-CE inputs joined) and finalizes."""
    rest = np.flatnonzero(~np.isin(np.asarray(results["id"]), list(self.seen)))
    keys = (self.keys | set(self.per_job)) & set(results)
    for i in range(0, len(rest), batch_size):
      self.evaluator({k: np.asarray(results[k])[rest[i:i + batch_size]] for k in keys})
    return self.evaluator.result()


def read_run(run_dir) -> tuple[dict, Path]:
  """A run directory's ``summary.json`` and the path of its ``results.npz`` (checked)."""
  d = Path(run_dir)
  summary, results = d / "summary.json", d / "results.npz"
  if not d.is_dir():
    raise CfjaxInputError(f"{run_dir} is not a directory.")
  if not summary.is_file() or not results.is_file():
    raise CfjaxInputError(f"{run_dir} holds no results of cfjax explain (summary.json and results.npz); "
                          "run cfjax explain --out DIR first.")
  s = json.loads(summary.read_text())
  for k in ("method", "settings", "run"):
    if k not in s:
      raise CfjaxInputError(f"{summary} has no {k!r}: not written by cfjax explain.")
  return s, results


def _load_predictor(names, summary, predictor):
  wants = any(n in ("flip_rate", "cout") for n in names)
  if not wants or predictor is not None:
    return predictor
  name = summary["run"].get("predictor")
  if not name:
    return None
  from cfjax.nets.loading import load_predictor
  return load_predictor(name)


def run_metric_names(summary: dict, names: Sequence[str] | None = None) -> tuple[str, ...]:
  """``names`` checked, or the defaults of a run (see :func:`default_metrics`)."""
  if names:
    return metric_names(names)
  run = summary["run"]
  return default_metrics(summary["settings"].get("task", "classification"), run["dataset"], run.get("target"))


def evaluate_run(run_dir, names: Sequence[str] | None = None, *, predictor=None, features=None,
                 batch_size: int = 64) -> dict:
  """The metrics of one ``cfjax explain`` directory.

  Args:
    run_dir: the directory (``summary.json``, ``results.npz``).
    names: metric names; default :func:`default_metrics` of the run.
    predictor: overrides the predictor recorded in ``summary.json`` (``flip_rate``, ``cout``).
    features: the feature extractor of ``fid`` / ``sfid`` (see :func:`feature_name`).
    batch_size: CEs per streamed batch.

  Returns:
    dict with ``dir``, ``method``, ``dataset``, ``task``, ``num_explained``, ``metrics``
    (the names), ``values`` (every reported number) and ``groups`` (metric -> its value keys).

  Example:
    >>> row = evaluate_run("/tmp/cfjax_run", ["success_rate"])  # doctest: +SKIP
    >>> row["values"]  # doctest: +SKIP
    {'success_rate': 1.0}
  """
  summary, path = read_run(run_dir)
  names = run_metric_names(summary, names)
  res = load_results(path)
  task = summary["settings"].get("task", "classification")
  metrics, data = build_metrics(names, summary["run"], task=task, image_size=int(res["original"].shape[1]),
                                image_ids=res["image_id"], predictor=_load_predictor(names, summary, predictor),
                                features=features)
  ev = stream_results(res, metrics, data=data, id_key="image_id", batch_size=batch_size)
  groups = ev.result_by_metric()
  return {"dir": str(run_dir), "method": summary["method"], "dataset": summary["run"]["dataset"],
          "task": task, "num_explained": int(len(res["id"])), "metrics": list(names),
          "values": ev.result(), "groups": {k: list(v) for k, v in groups.items()}}


def _data_key(summary: dict) -> tuple:
  run = summary["run"]
  return run["dataset"], run.get("split"), json.dumps(run.get("dataset_options") or {}, sort_keys=True)


def _row_names(rows: list[dict]) -> list[str]:
  methods = [r["method"] for r in rows]
  names = [m if methods.count(m) == 1 else f"{m} ({Path(r['dir']).name})" for m, r in zip(methods, rows)]
  return [n if names.count(n) == 1 else f"{n} #{i + 1}" for i, n in enumerate(names)]


def evaluate_runs(dirs: Sequence, names: Sequence[str] | None = None, *, predictor=None, features=None,
                  batch_size: int = 64) -> dict:
  """Metrics of several runs side by side: one row per run (named by its method).

  Without ``names`` each run gets the defaults its task and data set share with the others.
  Every run is checked before any is evaluated; metrics that read a data set's ground truth
  require the runs to explain the same data set.

  Returns:
    dict with ``metrics`` (names), ``columns`` (every value key, in order), ``groups`` (metric
    -> value keys) and ``runs`` (the rows of :func:`evaluate_run`, each with its ``name``).

  Example:
    >>> table = evaluate_runs(["/tmp/run_a", "/tmp/run_b"], ["success_rate"])  # doctest: +SKIP
    >>> [r["name"] for r in table["runs"]]  # doctest: +SKIP
    ['cf-attack (run_a)', 'cf-attack (run_b)']
  """
  if not dirs:
    raise CfjaxInputError("no run directories to evaluate.")
  summaries = [read_run(d)[0] for d in dirs]
  if names:
    names = metric_names(names)
  else:
    defaults = [run_metric_names(s) for s in summaries]
    names = tuple(n for n in defaults[0] if all(n in d for d in defaults))
  needs_data = [n for n in names if n in GROUND_TRUTH]
  keys = {_data_key(s) for s in summaries}
  if needs_data and len(keys) > 1:
    raise CfjaxInputError(f"{', '.join(needs_data)} read(s) a data set's ground truth, and the runs explain "
                          f"different data: {', '.join(sorted(k[0] for k in keys))}; compare runs of one "
                          "data set or choose other --metric.")
  for s in summaries:
    _check_fits(names, s["run"], s["settings"].get("task", "classification"))
  if any(n in FEATURE_METRICS for n in names):
    chosen = {str(feature_name(s["run"], features)) for s in summaries}
    if len(chosen) > 1:
      raise CfjaxInputError(f"fid / sfid would use different features per run ({', '.join(sorted(chosen))}), "
                            "which makes them incomparable: pass one --features.")
    features = _feature_extractor(summaries[0]["run"], features)
  rows = [evaluate_run(d, names, predictor=predictor, features=features, batch_size=batch_size) for d in dirs]
  for r, n in zip(rows, _row_names(rows)):
    r["name"] = n
  columns = list(dict.fromkeys(k for r in rows for k in r["values"]))
  groups = {n: list(dict.fromkeys(k for r in rows for k in r["groups"].get(n, []))) for n in names}
  return {"metrics": list(names), "columns": columns, "groups": groups, "runs": rows}
