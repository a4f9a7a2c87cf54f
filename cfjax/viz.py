"""Figures: counterfactual grids (original | counterfactual | [mask] | difference) and trajectory strips.

Example:
  >>> import numpy as np, tempfile, os
  >>> x = np.random.rand(2, 32, 32, 3).astype(np.float32)
  >>> p = ce_grid(x, np.clip(x + 0.1, 0, 1), np.ones((2, 32, 32)), os.path.join(tempfile.mkdtemp(), "g.png"))
  >>> p.endswith("g.png")
  True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _show(ax, img, **kw):
  img = np.asarray(img)
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
    kw.setdefault("cmap", "gray")
  if img.ndim == 3:
    img = np.clip(img, 0, 1)
  ax.imshow(img, **kw)
  ax.set_xticks([])
  ax.set_yticks([])


def _save(fig, path) -> str:
  fig.tight_layout()
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  _pyplot().close(fig)
  return str(path)


def ce_grid(originals, counterfactuals, masks, path, *, captions=None, max_rows: int = 8,
            title: str | None = None) -> str:
  """Writes a PNG with one row per image: original, counterfactual, mask (if given), difference.

  The difference panel shows ``counterfactual - original`` summed over channels on a symmetric
  red/blue scale shared by all rows, so rows can be compared. Methods without a mask (latent
  methods change the whole image) get three panels.
  """
  plt = _pyplot()
  originals, counterfactuals = np.asarray(originals), np.asarray(counterfactuals)
  n = min(len(originals), max_rows)
  diff = (counterfactuals[:n] - originals[:n]).sum(-1)
  vmax = max(float(np.abs(diff).max()), 1e-6)
  heads = ["original", "counterfactual"] + (["mask"] if masks is not None else []) + ["difference"]
  fig, axes = plt.subplots(n, len(heads), figsize=(len(heads) * 1.8, n * 1.8 + (0.4 if title else 0)),
                           squeeze=False)
  for r in range(n):
    panels = [originals[r], counterfactuals[r]] + ([np.asarray(masks)[r]] if masks is not None else [])
    for c, img in enumerate(panels):
      _show(axes[r, c], img, **({"cmap": "gray", "vmin": 0, "vmax": 1} if heads[c] == "mask" else {}))
    _show(axes[r, -1], diff[r], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    if r == 0:
      for c, h in enumerate(heads):
        axes[r, c].set_title(h, fontsize=9)
    if captions is not None:
      axes[r, 0].set_ylabel(captions[r], fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  return _save(fig, path)


def trajectory_strip(originals, frames, counterfactuals, path, *, captions=None,
                     title: str | None = None) -> str:
  """Writes a PNG with one row per image: original, decoded points along the path, counterfactual.

  ``frames[r]`` is an array of decoded images (the first is the reconstruction of the start code).
  """
  plt = _pyplot()
  n = len(frames)
  cols = 2 + max(len(f) for f in frames)
  fig, axes = plt.subplots(n, cols, figsize=(cols * 1.5, n * 1.5 + (0.4 if title else 0)), squeeze=False)
  for r in range(n):
    row = [originals[r], *frames[r], counterfactuals[r]]
    for c in range(cols):
      if c < len(row) - 1:
        _show(axes[r, c], row[c])
      else:
        axes[r, c].axis("off")
    _show(axes[r, cols - 1], row[-1])
    if r == 0:
      axes[r, 0].set_title("original", fontsize=8)
      axes[r, 1].set_title("start (decoded)", fontsize=8)
      axes[r, cols - 1].set_title("counterfactual", fontsize=8)
    if captions is not None:
      axes[r, 0].set_ylabel(captions[r], fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  return _save(fig, path)
