"""Shapes: a classification testbed with a causal factor (shape) and a spurious one (background).

The class is the shape (0 circle, 1 square, then optionally 2 triangle, 3 cross). Each image has
a background whose colour class ``background`` is drawn from a fixed palette; with probability
``rho`` it is copied from the shape class, otherwise drawn uniformly from the ``num_classes``
palette entries. For two classes both indicators stay balanced and their correlation is exactly
``rho``; for more classes P(background == class) = rho + (1 - rho) / num_classes. A classifier
that learns the background instead of the shape is caught by its counterfactuals (they repaint
the background) and by the ``rho = 0`` test split.

Nuisance factors, all independent of the class: position (``x`` rows, ``y`` columns of the
centre), ``size`` (half-extent in pixels), foreground ``color`` (RGB in [0.55, 1]), and pixel
noise N(0, 0.03^2), clipped to [0, 1] and stored as 8-bit values like a PNG dataset.
Geometry scales with ``image_size`` (reference 32 px: half-extent 5 to 9 pixels).
"""

from __future__ import annotations

import numpy as np

from cfjax._validate import CfjaxInputError
from cfjax.data.sources import CHUNK, ChunkedSource, chunk_rng, gather

SHAPE_NAMES = ("circle", "square", "triangle", "cross")
# Dark, clearly different backgrounds, one per class the shortcut can point to.
PALETTE = np.array([[0.10, 0.15, 0.45], [0.45, 0.12, 0.10], [0.10, 0.40, 0.12], [0.38, 0.35, 0.08]],
                   np.float32)
NOISE_STD = 0.03
SPLIT_CODES = {"train": 10, "test": 11}
DEFAULT_SIZES = {"train": 10000, "test": 2000}


def _check(num_classes: int, rho: float, image_size: int) -> None:
  if num_classes not in (2, 3, 4):
    raise CfjaxInputError(f"shapes supports num_classes 2, 3 or 4, got {num_classes!r}.")
  if not 0.0 <= float(rho) <= 1.0:
    raise CfjaxInputError(f"rho must lie in [0, 1], got {rho}.")
  if int(image_size) < 16:
    raise CfjaxInputError(f"shapes needs image_size >= 16, got {image_size!r}.")


def _shape_masks(shape, x, y, size, image_size: int) -> np.ndarray:
  """(n, H, W) bool: the pixels covered by each example's shape."""
  r = np.arange(image_size, dtype=np.float32)
  dr = r[None, :, None] - x[:, None, None].astype(np.float32)
  dc = r[None, None, :] - y[:, None, None].astype(np.float32)
  s = size[:, None, None].astype(np.float32)
  circle = dr**2 + dc**2 <= s**2
  # Squares get a half-side of 0.886 s so circle and square cover about the same area: the
  # class cannot be read off the pixel count.
  square = np.maximum(np.abs(dr), np.abs(dc)) <= 0.886 * s
  triangle = (dr <= s) & (np.abs(dc) <= (dr + s) / 2)
  arm = s / 3
  cross = ((np.abs(dr) <= arm) & (np.abs(dc) <= s)) | ((np.abs(dc) <= arm) & (np.abs(dr) <= s))
  k = shape[:, None, None]
  return np.where(k == 0, circle, np.where(k == 1, square, np.where(k == 2, triangle, cross)))


def _make_chunk(c: int, seed: int, image_size: int, rho: float, num_classes: int, split: str,
                pixels: bool = True) -> dict[str, np.ndarray]:
  rng = chunk_rng(seed, SPLIT_CODES[split], c)
  n = CHUNK
  scale = image_size / 32
  shape = rng.integers(0, num_classes, n)
  copy = rng.random(n) < rho
  background = np.where(copy, shape, rng.integers(0, num_classes, n))
  size = rng.integers(int(round(5 * scale)), int(round(9 * scale)) + 1, n)
  lo, hi = size + 1, image_size - size - 2
  x = lo + (rng.random(n) * (hi - lo + 1)).astype(np.int64)
  y = lo + (rng.random(n) * (hi - lo + 1)).astype(np.int64)
  color = rng.uniform(0.55, 1.0, (n, 3)).astype(np.float32)
  out = dict(label=shape.astype(np.int32), shape=shape.astype(np.int32),
             background=background.astype(np.int32), x=x.astype(np.int32),
             y=y.astype(np.int32), size=size.astype(np.int32), color=color)
  if pixels:
    noise = rng.standard_normal((n, image_size, image_size, 3), dtype=np.float32) * NOISE_STD
    mask = _shape_masks(shape, x, y, size, image_size)
    img = np.where(mask[..., None], color[:, None, None, :], PALETTE[background][:, None, None, :])
    out["image"] = np.round(np.clip(img + noise, 0.0, 1.0) * 255).astype(np.uint8)
    out["mask"] = mask
  return out


def to_public(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = dict(arrays)
  out["image"] = arrays["image"].astype(np.float32) / np.float32(255.0)
  return out


def source(split: str = "train", *, n: int | None = None, seed: int = 0, image_size: int = 32,
           rho: float = 0.0, num_classes: int = 2) -> ChunkedSource:
  """A random-access source of uint8 examples of a shapes split ("train" or "test")."""
  _check(num_classes, rho, image_size)
  n = DEFAULT_SIZES[split] if n is None else int(n)
  return ChunkedSource(
      lambda c: _make_chunk(c, seed, int(image_size), float(rho), num_classes, split), n)


def factors(n: int, *, seed: int = 0, image_size: int = 32, rho: float = 0.0,
            num_classes: int = 2, split: str = "train") -> dict[str, np.ndarray]:
  """Only the ground-truth factors of ``shapes(n, ...)`` (cheap: no pixels are drawn)."""
  _check(num_classes, rho, image_size)
  return gather(lambda c: _make_chunk(c, seed, int(image_size), float(rho), num_classes, split,
                                      pixels=False), n)


def shapes(n: int, *, seed: int = 0, image_size: int = 32, rho: float = 0.0,
           num_classes: int = 2, split: str = "train") -> dict[str, np.ndarray]:
  """Generates ``n`` shapes images with their ground-truth factors.

  Args:
    n: number of examples; example ``i`` does not depend on ``n``.
    seed: random seed.
    image_size: side in pixels (>= 16).
    rho: shortcut strength in [0, 1] (see the module docstring).
    num_classes: 2 (circle, square), 3 (+ triangle) or 4 (+ cross).
    split: "train" or "test": independent random streams.

  Returns:
    dict with ``image`` (n, H, W, 3) float32 in [0, 1], ``label`` (n,) int32 (= ``shape``),
    ``mask`` (n, H, W) bool (the shape's pixels) and the factors ``shape``, ``background``,
    ``x``, ``y``, ``size`` (int32) and ``color`` (n, 3) float32.

  Example:
    >>> d = shapes(8, rho=1.0)
    >>> d["image"].shape, bool((d["background"] == d["label"]).all())
    ((8, 32, 32, 3), True)
  """
  _check(num_classes, rho, image_size)
  return to_public(gather(
      lambda c: _make_chunk(c, seed, int(image_size), float(rho), num_classes, split), n))
