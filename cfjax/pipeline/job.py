"""A whole explanation job, as the CLI runs it: models and data in, CEs, figures and a summary out.

The job is method-agnostic: the registered method declares the models it needs and its options
(:class:`cfjax.methods.MethodConfig`), the job loads those models, the data and the targets,
checks everything before anything compiles, runs :func:`cfjax.explain` with a resumable writer,
and writes ``results.npz``, ``summary.json``, ``grid.png`` and, for methods that record a
trajectory, ``trajectory.png``.

Example:
  >>> from cfjax.pipeline.job import ExplainJob, run_job
  >>> summary = run_job(ExplainJob(method="acre", dataset="squares_grid_lower", limit=8,
  ...     predictor="squares_regressor_rho0", models={"diffusion": "squares_ddpm"},
  ...     target="mirror", out_dir="/tmp/cfjax_job"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from cfjax._validate import CfjaxInputError, check_images


@dataclasses.dataclass(frozen=True)
class ExplainJob:
  """Everything that defines an explanation run of a dataset.

  ``models`` names the models other than the predictor that the method needs
  (``{"diffusion": ...}``, ``{"generator": ...}``): bundled names, checkpoints or run directories.
  ``subset`` keeps only the listed example ids (after ``limit``). ``target`` is a rule of
  :func:`cfjax.methods.make_targets` (default: "mirror" for regression, "flip" for a binary
  classifier, "next" otherwise). ``metrics`` names metrics (:mod:`cfjax.metrics.runs`) computed
  while the run streams and written to the summary; ``features`` is the feature extractor of
  ``fid`` / ``sfid`` among them (default: the testbed's in-domain network).
  """

  method: str
  dataset: str
  predictor: str
  out_dir: str
  models: dict = dataclasses.field(default_factory=dict)
  method_options: dict = dataclasses.field(default_factory=dict)
  target: str | None = None
  split: str = "test"
  limit: int | None = None
  subset: tuple | None = None
  dataset_options: dict = dataclasses.field(default_factory=dict)
  num_slots: int = 16
  steps_per_call: int | None = None  # None: the method's own (Method.steps_per_call)
  result_slots: int | None = None
  seed: int = 0
  figure_rows: int = 8
  progress: bool = True
  metrics: tuple[str, ...] = ()
  features: str | None = None


def load_images(dataset: str, *, split: str = "test", limit: int | None = None, image_size=None,
                dataset_options: dict | None = None):
  """Images, labels and ids of the first ``limit`` examples of a dataset, in id order."""
  from cfjax import data
  kw = dict(dataset_options or {})
  if image_size is not None:
    kw["image_size"] = image_size
  ds = data.load(dataset, split=split, batch_size=64, shuffle=False, **kw)
  xs, ys, ids = [], [], []
  count = 0
  for b in ds:
    xs.append(b["image"])
    ys.append(b["label"])
    ids.append(b["id"])
    count += len(b["id"])
    if limit is not None and count >= limit:
      break
  if not xs:
    raise CfjaxInputError(f"dataset {dataset!r} split {split!r} is empty")
  x, y, i = np.concatenate(xs), np.concatenate(ys), np.concatenate(ids)
  if limit is not None:
    x, y, i = x[:limit], y[:limit], i[:limit]
  return x, y, i


def load_models(job: ExplainJob):
  """The predictor and the other models the method declares, checked against what was given."""
  from cfjax.generators import load_generator
  from cfjax.methods import method_spec
  from cfjax.nets.loading import load_diffusion, load_predictor
  spec = method_spec(job.method)
  others = [n for n in spec.needs if n != "predictor"]
  missing = [n for n in others if not job.models.get(n)]
  if missing:
    raise CfjaxInputError(f"method {job.method!r} needs --{' --'.join(missing)} "
                          f"(it takes {', '.join(spec.needs)})")
  extra = [n for n, v in job.models.items() if v and n not in others]
  if extra:
    raise CfjaxInputError(f"method {job.method!r} takes no --{' --'.join(extra)} "
                          f"(it takes {', '.join(spec.needs)})")
  loaders = {"diffusion": load_diffusion, "generator": load_generator}
  models = {n: loaders[n](job.models[n]) for n in others}
  return spec, load_predictor(job.predictor), models


def default_target(task: str, outputs: np.ndarray) -> str:
  if task == "regression":
    return "mirror"
  return "flip" if np.asarray(outputs).ndim == 1 else "next"


def run_job(job: ExplainJob, *, on_result: Callable[[dict], None] | None = None) -> dict:
  """Runs the job and writes ``out_dir/{results.npz, summary.json, grid.png}``; returns the summary.

  Re-running the same job resumes: finished CEs are read back, not recomputed.
  """
  from cfjax import data as data_mod
  from cfjax.methods import Status
  from cfjax.methods.targets import make_targets
  from cfjax.pipeline.explain import explain

  spec, pred, models = load_models(job)
  m = spec(predictor=pred, **models, **job.method_options)
  task = m.settings["task"]
  size = pred.image_size or _model_image_size(models)
  x, labels, ids = load_images(job.dataset, split=job.split, limit=job.limit, image_size=size,
                               dataset_options=job.dataset_options)
  if job.subset is not None:
    keep = np.isin(ids, np.asarray(job.subset))
    if not keep.any():
      raise CfjaxInputError(f"none of the requested ids are in {job.dataset!r}")
    x, labels, ids = x[keep], labels[keep], ids[keep]
  x = check_images(x, name=f"{job.dataset} images", image_size=size, channels=pred.channels)
  outputs = np.asarray(pred(x))
  info = data_mod.dataset_info(job.dataset, **{k: v for k, v in job.dataset_options.items()
                                               if k in ("rho", "image_size", "num_classes")})
  rule = job.target or default_target(task, outputs)
  targets = make_targets(rule, task=task, predictions=outputs, labels=labels,
                         label_range=tuple(info.get("label_range") or (0.0, 1.0)))
  n_t = targets.shape[1]
  # One explanation per (image, target): job id = image id * T + j, so keys stay per (image, target).
  job_ids = (ids[:, None].astype(np.int64) * n_t + np.arange(n_t)[None]).reshape(-1)
  job_x, job_t = np.repeat(x, n_t, axis=0), targets.reshape(-1)
  settings = {"dataset": job.dataset, "split": job.split, "limit": job.limit, "target": rule,
              "predictor": str(job.predictor), **{k: str(v) for k, v in job.models.items() if v},
              "seed": job.seed, "dataset_options": job.dataset_options,
              "subset": None if job.subset is None else [int(i) for i in job.subset]}
  if job.features:
    settings["features"] = str(job.features)  # the features of fid / sfid, for cfjax evaluate too
  per_job = {"image_id": np.repeat(ids, n_t), "target": job_t, "original": job_x,
             "original_prediction": np.repeat(outputs, n_t, axis=0), "label": np.repeat(labels, n_t)}
  if job.metrics:
    from cfjax.metrics.runs import StreamingMetrics
    on_result = StreamingMetrics(job.metrics, settings, task=task, job_ids=job_ids, per_job=per_job,
                                 predictor=pred, then=on_result)
  out_dir = Path(job.out_dir)
  t0 = time.perf_counter()
  results, stats = explain(m, job_x, job_t, ids=job_ids, key=jax.random.key(job.seed),
                           num_slots=job.num_slots, steps_per_call=job.steps_per_call,
                           result_slots=job.result_slots, out_dir=out_dir / "run", run_settings=settings,
                           progress=job.progress, return_stats=True, on_result=on_result)
  wall = time.perf_counter() - t0
  position = {int(j): k for k, j in enumerate(job_ids)}
  order = np.array([position[int(i)] for i in results["id"]], np.int64)  # job index of each result
  results.update({k: v[order] for k, v in per_job.items()})
  np.savez_compressed(out_dir / "results.npz", **results)
  success = results["success"].astype(bool)
  figures = _figures(job, m, models, results, out_dir, success)
  summary = {
      "method": job.method, "settings": m.settings, "run": settings,
      "num_explained": int(len(success)), "success_rate": float(success.mean()),
      "mean_iterations": float(results["iterations"].mean()),
      "status_counts": {s.name: int((results["status"] == s).sum()) for s in Status},
      "ce_per_s_this_session": float(stats["ce_per_s"]) if stats.get("num_done") else None,
      "computed_this_session": int(stats.get("num_done", 0)), "wall_seconds": wall,
      "engine": {k: v for k, v in stats.items() if k != "ce_per_s"},
      "devices": [str(d) for d in jax.local_devices()],
      **figures, "results": str(out_dir / "results.npz"),
  }
  if job.metrics:
    summary["metrics"] = on_result.finish(results)
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
  return summary


def _model_image_size(models: dict):
  for mdl in models.values():
    shape = getattr(mdl, "image_shape", None)
    if shape is not None:
      return int(shape[0])
    if getattr(mdl, "image_size", None):
      return int(mdl.image_size)
  return None


STRIP_FRAMES = 6


def _full_latents(results: dict, row: int, steps) -> np.ndarray:
  """Generator latents of the recorded ``steps`` of CE ``row``: the trajectory, followed by the
  method's ``latent_fixed`` where it optimises only part of the latent (see methods.base)."""
  z = np.asarray(results["trajectory"][row][steps])
  if "latent_fixed" not in results:
    return z
  fixed = np.asarray(results["latent_fixed"][row]).reshape(1, -1)
  return np.concatenate([z, np.broadcast_to(fixed, (len(z), fixed.shape[1]))], axis=-1)


def _figures(job: ExplainJob, method, models: dict, results: dict, out_dir: Path, success) -> dict[str, Any]:
  """The CE grid (with the mask panel where the method returns one) and the trajectory strip."""
  from cfjax.viz import ce_grid, trajectory_strip

  def scalar(v):
    v = np.asarray(v, np.float64).reshape(-1)
    return float(v[0]) if v.size == 1 else float(v.max())

  captions = [f"id {int(i)}: {scalar(p0):.2f}->{scalar(p1):.2f} (t {scalar(t):.2f})"
              for i, p0, p1, t in zip(results["image_id"], results["original_prediction"],
                                      results["prediction"], results["target"])]
  title = f"{job.method} on {job.dataset}: {success.mean():.0%} reach the target"
  out = {"figure": ce_grid(results["original"], results["counterfactual"], results.get("mask"),
                           out_dir / "grid.png", captions=captions, max_rows=job.figure_rows, title=title)}
  gen = models.get("generator")
  if gen is not None and "trajectory" in results:
    n = min(job.figure_rows, len(results["id"]))
    decode = jax.jit(jax.vmap(lambda z: gen.decode(gen.params, z, jax.random.key(0))))
    frames = []
    for r in range(n):  # at most STRIP_FRAMES evenly spaced recorded latents per image
      steps = np.unique(np.linspace(0, int(results["trajectory_length"][r]) - 1, STRIP_FRAMES).round().astype(int))
      padded = np.concatenate([steps, np.full(STRIP_FRAMES - len(steps), steps[-1])])
      frames.append(np.clip(np.asarray(decode(_full_latents(results, r, padded)))[: len(steps)], 0, 1))
    every = method.settings.get("trajectory_every")
    out["trajectory_figure"] = trajectory_strip(
        results["original"][:n], frames, results["counterfactual"][:n], out_dir / "trajectory.png",
        captions=captions[:n], title=f"{job.method}: the path in latent space (frames every "
                                     f">= {every} steps)")
  return out
