"""A whole explanation job, as the CLI runs it: models and data in, CEs, a figure and a summary out.

Everything is checked before anything compiles (names, image sizes, targets, the run
directory); the run itself goes through :func:`cfjax.engine.explain` with a resumable writer.

Example:
  >>> from cfjax.engine.job import explain_dataset
  >>> summary = explain_dataset(method="acre", dataset="squares_grid_lower", limit=8,
  ...     predictor="squares_regressor_rho0", diffusion="squares_ddpm", target="mirror",
  ...     out_dir="/tmp/cfjax_job")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

from cfjax._validate import CfjaxInputError, check_images


def load_diffusion(name_or_path):
  """A bundled or converted diffusion checkpoint: ``(Network, meta)`` (meta has the diffusion settings)."""
  from cfjax import checkpoint
  from cfjax.assets import model_path
  p = Path(name_or_path)
  if not p.exists() and "/" not in str(name_or_path):
    p = model_path(str(name_or_path))
  net, meta = checkpoint.load(p, expect={"arch": "adm_unet"})
  if "diffusion" not in meta:
    raise CfjaxInputError(f"{p} has no diffusion settings in its metadata (steps, schedule)")
  return net, meta


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


def explain_dataset(*, method: str, dataset: str, predictor, diffusion, out_dir, target: str,
                    split: str = "test", limit: int | None = None, respacing: str | None = None,
                    tau: int = 5, iterations: int | None = None, step_size: float | None = None,
                    num_slots: int = 16, steps_per_call: int = 2,
                    result_slots: int | None = None, seed: int = 0,
                    dataset_options: dict | None = None, method_options: dict | None = None,
                    subset=None, figure_rows: int = 8, progress: bool = True) -> dict:
  """Runs ``method`` on a dataset and writes ``out_dir/{results.npz, summary.json, grid.png}``.

  Re-running the same call resumes: finished CEs are read back, not recomputed. ``subset``
  keeps only the listed example ids (after ``limit``).
  """
  from cfjax import methods, nets
  from cfjax.diffusion import make_schedule
  from cfjax.engine.runner import explain
  from cfjax.methods.targets import make_targets
  from cfjax.viz import ce_grid

  methods_known = methods.known_methods()
  if method not in methods_known:
    from cfjax._validate import unknown_name
    raise unknown_name("method", method, methods_known)
  pred = nets.load_predictor(predictor)
  task = pred.meta.get("task", "regression" if method == "acre" else "classification")
  if (method == "acre") != (task == "regression"):
    raise CfjaxInputError(f"method {method!r} does not fit a {task} predictor "
                          f"({'use acre' if task == 'regression' else 'use ace'})")
  unet, umeta = load_diffusion(diffusion)
  size = pred.image_size
  if unet.config.get("image_size") != size:
    raise CfjaxInputError(f"the predictor takes {size} px images but the diffusion model "
                          f"{unet.config.get('image_size')} px")
  steps = int(umeta["diffusion"]["steps"])
  respacing = respacing or str(50 if steps >= 1000 else 25)
  sched = make_schedule(steps, umeta["diffusion"].get("schedule", "linear"), respacing)
  opts = dict(method_options or {})
  if iterations is not None:
    opts["iterations"] = iterations
  if step_size is not None:
    opts["step_size"] = step_size
  m = methods.make(method, predictor=pred.net, diffusion=unet, schedule=sched, tau=tau, **opts)

  x, labels, ids = load_images(dataset, split=split, limit=limit, image_size=size,
                               dataset_options=dataset_options)
  if subset is not None:
    keep = np.isin(ids, np.asarray(subset))
    if not keep.any():
      raise CfjaxInputError(f"none of the requested ids are in {dataset!r}")
    x, labels, ids = x[keep], labels[keep], ids[keep]
  x = check_images(x, name=f"{dataset} images", image_size=size)
  outputs = np.asarray(pred(x))
  from cfjax import data as data_mod
  info = data_mod.dataset_info(dataset, **{k: v for k, v in (dataset_options or {}).items()
                                           if k in ("rho", "image_size", "num_classes")})
  label_range = tuple(info.get("label_range") or (0.0, 1.0))
  targets = make_targets(target, task=task, predictions=outputs, labels=labels, label_range=label_range)
  n_t = targets.shape[1]
  # One job per (image, target): job id = image id * T + j, so keys stay per (image, target).
  job_ids = (ids[:, None].astype(np.int64) * n_t + np.arange(n_t)[None]).reshape(-1)
  job_x = np.repeat(x, n_t, axis=0)
  job_t = targets.reshape(-1)
  settings = {"dataset": dataset, "split": split, "limit": limit, "target": target,
              "predictor": str(predictor), "diffusion": str(diffusion), "respacing": respacing,
              "seed": seed, "dataset_options": dataset_options or {},
              "subset": None if subset is None else [int(i) for i in subset]}
  out_dir = Path(out_dir)
  t0 = time.perf_counter()
  results, stats = explain(m, job_x, job_t, ids=job_ids, key=jax.random.key(seed),
                           num_slots=num_slots, steps_per_call=steps_per_call,
                           result_slots=result_slots,
                           out_dir=out_dir / "run", run_settings=settings, progress=progress,
                           return_stats=True)
  wall = time.perf_counter() - t0
  position = {int(j): k for k, j in enumerate(job_ids)}
  order = np.array([position[int(i)] for i in results["id"]], np.int64)  # job index of each result
  results["image_id"] = ids[order // n_t]
  results["target"] = job_t[order]
  results["original"] = job_x[order]
  results["original_prediction"] = outputs[order // n_t]
  results["label"] = labels[order // n_t]
  np.savez_compressed(out_dir / "results.npz", **results)
  success = results["success"].astype(bool)
  captions = [f"id {int(i)}: {float(np.squeeze(p0)):.2f}->{float(np.squeeze(p1)):.2f} (t {float(t):.2f})"
              for i, p0, p1, t in zip(results["image_id"], results["original_prediction"],
                                      results["prediction"], results["target"])]
  grid = ce_grid(results["original"], results["counterfactual"], results["mask"], out_dir / "grid.png",
                 captions=captions, max_rows=figure_rows,
                 title=f"{method} on {dataset}: {success.mean():.0%} reach the target")
  summary = {
      "method": method, "settings": m.settings, "run": settings,
      "num_explained": int(len(success)), "success_rate": float(success.mean()),
      "mean_iterations": float(results["iterations"].mean()),
      "status_counts": {s.name: int((results["status"] == s).sum()) for s in methods.Status},
      "ce_per_s_this_session": float(stats["ce_per_s"]) if stats.get("num_done") else None,
      "computed_this_session": int(stats.get("num_done", 0)), "wall_seconds": wall,
      "engine": {k: v for k, v in stats.items() if k != "ce_per_s"},
      "devices": [str(d) for d in jax.local_devices()],
      "figure": str(grid), "results": str(out_dir / "results.npz"),
  }
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
  return summary
