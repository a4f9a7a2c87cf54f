"""Figures: counterfactual grids (original | counterfactual | mask | difference).

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


def ce_grid(originals, counterfactuals, masks, path, *, captions=None, max_rows: int = 8,
            title: str | None = None) -> str:
  """Writes a PNG with one row per image: original, counterfactual, mask, difference.

  The difference panel shows ``counterfactual - original`` summed over channels on a symmetric
  red/blue scale shared by all rows, so rows can be compared.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  originals, counterfactuals = np.asarray(originals), np.asarray(counterfactuals)
  masks = np.asarray(masks)
  n = min(len(originals), max_rows)
  diff = (counterfactuals[:n] - originals[:n]).sum(-1)
  vmax = max(float(np.abs(diff).max()), 1e-6)
  fig, axes = plt.subplots(n, 4, figsize=(4 * 1.8, n * 1.8 + (0.4 if title else 0)), squeeze=False)
  heads = ["original", "counterfactual", "mask", "difference"]
  for r in range(n):
    panels = [originals[r], counterfactuals[r], masks[r], diff[r]]
    for c, img in enumerate(panels):
      ax = axes[r, c]
      if c == 2:
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
      elif c == 3:
        ax.imshow(img, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
      else:
        ax.imshow(np.clip(img, 0, 1))
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(heads[c], fontsize=9)
    if captions is not None:
      axes[r, 0].set_ylabel(captions[r], fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return str(path)
