"""Reports of a metrics table (:func:`cfjax.metrics.runs.evaluate_runs`): JSON, a markdown table
with methods as rows and metrics as columns, a bar figure per metric and CE examples per run.

Example:
  >>> table = {"metrics": ["success_rate"], "columns": ["success_rate"],
  ...          "groups": {"success_rate": ["success_rate"]},
  ...          "runs": [{"name": "acre", "num_explained": 4, "values": {"success_rate": 0.75}}]}
  >>> print(markdown_table(table))
  | method | n | success_rate |
  |---|---|---|
  | acre | 4 | 0.75 |
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np


def _fmt(v, digits: int) -> str:
  if v is None:
    return "-"
  v = float(v)
  if math.isnan(v) or math.isinf(v):
    return str(v)
  return f"{v:.{digits}g}"


def markdown_table(table: dict, *, digits: int = 4) -> str:
  """The table as markdown: one row per run (its name, the CE count), one column per value."""
  cols = table["columns"]
  lines = ["| method | n | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
  for r in table["runs"]:
    cells = [_fmt(r["values"].get(c), digits) for c in cols]
    lines.append(f"| {r['name']} | {r['num_explained']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


def metric_figures(table: dict, out_dir) -> list[str]:
  """One PNG per metric, ``{metric}.png``: a bar chart of each of its values over the runs."""
  from cfjax.viz import _pyplot, _save
  plt = _pyplot()
  names = [r["name"] for r in table["runs"]]
  paths = []
  for metric, keys in table["groups"].items():
    fig, axes = plt.subplots(1, len(keys), figsize=(max(2.0, 0.6 * len(names) + 1.2) * len(keys), 3.2),
                             squeeze=False)
    for ax, key in zip(axes[0], keys):
      vals = [r["values"].get(key, np.nan) for r in table["runs"]]
      ax.bar(range(len(names)), [v if np.isfinite(v) else np.nan for v in vals], color="tab:blue")
      ax.set_xticks(range(len(names)))
      ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
      ax.set_title(key, fontsize=9)
    fig.suptitle(metric, fontsize=10)
    paths.append(_save(fig, Path(out_dir) / f"{_slug(metric)}.png"))
  return paths


def example_figures(table: dict, out_dir, *, rows: int = 8) -> list[str]:
  """Per run, ``examples_{name}.png``: :func:`cfjax.viz.ce_grid` of the image ids all runs share."""
  from cfjax.metrics.evaluate import load_results
  from cfjax.viz import ce_grid
  results = [load_results(Path(r["dir"]) / "results.npz") for r in table["runs"]]
  common = set.intersection(*(set(res["image_id"].tolist()) for res in results))
  ids = sorted(common)[:rows]
  paths = []
  for r, res in zip(table["runs"], results):
    first = {int(i): k for k, i in reversed(list(enumerate(res["image_id"])))}
    pick = np.array([first[i] for i in ids], np.int64)
    caps = [f"id {i}: {'ok' if s else 'not reached'}" for i, s in zip(ids, res["success"][pick])]
    rate = r["values"].get("success_rate")
    title = r["name"] + (f": {rate:.0%} reach the target" if rate is not None else "")
    mask = res["mask"][pick] if "mask" in res else None
    paths.append(ce_grid(res["original"][pick], res["counterfactual"][pick], mask,
                         Path(out_dir) / f"examples_{_slug(r['name'])}.png", captions=caps,
                         max_rows=rows, title=title))
  return paths


def write_report(table: dict, out, *, rows: int = 8) -> dict:
  """Writes ``metrics.json``, ``metrics.md`` and ``figures/`` under ``out``; returns the paths."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  figures = metric_figures(table, out / "figures")
  if rows > 0:
    figures += example_figures(table, out / "figures", rows=rows)
  md = markdown_table(table)
  (out / "metrics.md").write_text(md + "\n")
  (out / "metrics.json").write_text(json.dumps({**table, "figures": figures}, indent=1, default=float))
  return {"json": str(out / "metrics.json"), "markdown": str(out / "metrics.md"), "figures": figures}
