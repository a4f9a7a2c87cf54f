"""Ha & Bender's squares testbed: a regression task with a known cause and a plantable shortcut.

Construction (64 px, as in the published generator of "Diffusion Counterfactuals for Image
Regressors"): a grey background of level ``color_b``; a 12x12 square whose top-left corner is at
``(x, y)`` (``x`` indexes ROWS) with a 2-pixel border of grey 127 and an 8x8 interior whose red
channel is ``color_a`` (green and blue 0). Every pixel and channel gets N(0, 20^2) noise, the
result is clipped to [0, 255] and truncated to 8 bits (the published set is stored as PNGs, the
float -> uint8 cast truncates), then divided by 255. The regression label is ``color_a / 255``.

Training set: the four factors vary in balanced halves: ``color_a`` and ``color_b`` in [0, 128)
or [128, 256), ``x`` and ``y`` in [0, P/2) or [P/2, P) with P = 64 - 12 = 52 positions (so
x, y in [0, 51], as in the published ``randint`` calls). Example ``i`` takes half-combination
``i % 16`` exactly as published (bit 0: color_a upper when i is even; bit 1: color_b; bit 2: x;
bit 3: y), values uniform within their half.

Shortcut knob ``rho`` in [0, 1]: with probability ``rho`` the half of ``color_b`` is *copied*
from the half of ``color_a``; otherwise it keeps its published balanced value. Both half
indicators stay balanced, P(same half) = (1 + rho) / 2, and their correlation is exactly
``rho``: 0 is the published construction, 1 means the background always gives the label's half
away.

Validation grids: 3x3 positions (``linspace(0, 52, 3)``) x 5 inner colours
(``linspace(0, 127, 5)``) x 7 backgrounds (``linspace(0, 255, 7)``), truncated to int as the
published generator does (0, 31, 63, 95, 127 and 0, 42, 85, 127, 170, 212, 255) = 315 images in
the published order (x, y, color_a, color_b; color_b fastest). ``"upper"`` are the same images
with ``color_a + 128`` and the same pixel noise, so they differ from their ``"lower"`` twins only
inside the interior mask: by exactly 128/255 in red wherever neither is clipped.

``image_size=32`` halves the geometry for fast tests: 6x6 square, 1-pixel border, 4x4
interior, P = 26 positions (grids at 0, 13, 26). The noise stays N(0, 20^2).
"""

from __future__ import annotations

import numpy as np

from cfjax._validate import CfjaxInputError
from cfjax.data.sources import CHUNK, ChunkedSource, chunk_rng, gather

NOISE_STD = 20.0
BORDER_GREY = 127
SPLIT_CODES = {"train": 0, "test": 1, "grid": 2}
DEFAULT_SIZES = {"train": 16000, "test": 1600}

# image_size -> (interior side, border width)
_GEOMETRY = {64: (8, 2), 32: (4, 1)}


def geometry(image_size: int) -> dict[str, int]:
  """Square geometry at a supported image size: inner, border, full side, positions P."""
  if image_size not in _GEOMETRY:
    raise CfjaxInputError(f"squares supports image_size 64 or 32, got {image_size!r}.")
  inner, border = _GEOMETRY[image_size]
  full = inner + 2 * border
  return dict(inner=inner, border=border, full=full, positions=image_size - full)


def _check_rho(rho: float) -> float:
  rho = float(rho)
  if not 0.0 <= rho <= 1.0:
    raise CfjaxInputError(f"rho must lie in [0, 1], got {rho}.")
  return rho


def _box(start: np.ndarray, side: int, size: int) -> np.ndarray:
  """(n, size) bool: which coordinates lie in [start, start + side)."""
  r = np.arange(size)
  return (r >= start[:, None]) & (r < start[:, None] + side)


def interior_mask(x: np.ndarray, y: np.ndarray, image_size: int = 64) -> np.ndarray:
  """(n, H, W) bool mask of the red interior of squares at rows ``x``, columns ``y``."""
  g = geometry(image_size)
  x = np.asarray(x)
  y = np.asarray(y)
  return (_box(x + g["border"], g["inner"], image_size)[:, :, None]
          & _box(y + g["border"], g["inner"], image_size)[:, None, :])


def render(color_a, color_b, x, y, noise: np.ndarray, image_size: int = 64) -> np.ndarray:
  """Renders squares as uint8 (n, H, W, 3) from factors and (n, H, W, 3) noise in grey levels."""
  g = geometry(image_size)
  color_a, color_b, x, y = (np.asarray(v) for v in (color_a, color_b, x, y))
  square = _box(x, g["full"], image_size)[:, :, None] & _box(y, g["full"], image_size)[:, None, :]
  inner = interior_mask(x, y, image_size)
  base = np.broadcast_to(color_b.astype(np.float32)[:, None, None, None], noise.shape).copy()
  base[square] = BORDER_GREY
  fg = np.zeros((len(x), 1, 1, 3), np.float32)
  fg[:, 0, 0, 0] = color_a
  base = np.where(inner[..., None], fg, base)
  # The uint8 cast of the published generator truncates; floor is the same on [0, 255].
  return np.floor(np.clip(base + noise, 0.0, 255.0)).astype(np.uint8)


def _train_factors(rng: np.random.Generator, index: np.ndarray, rho: float, positions: int):
  """Factors of the published balanced design (plus the rho shortcut) for example ``index``."""
  a_up = index % 2 == 0
  b_up = (index // 2) % 2 == 0
  x_up = (index // 4) % 2 == 0
  y_up = (index // 8) % 2 == 0
  n = len(index)
  copy = rng.random(n) < rho
  b_up = np.where(copy, a_up, b_up)
  half = positions // 2
  color_a = rng.integers(0, 128, n) + 128 * a_up
  color_b = rng.integers(0, 128, n) + 128 * b_up
  x = rng.integers(0, half, n) + half * x_up
  y = rng.integers(0, half, n) + half * y_up
  return {k: v.astype(np.int32) for k, v in
          dict(color_a=color_a, color_b=color_b, x=x, y=y).items()}


def factors(n: int, *, seed: int = 0, image_size: int = 64, rho: float = 0.0,
            split: str = "train") -> dict[str, np.ndarray]:
  """Only the ground-truth factors of ``squares(n, ...)`` (cheap: no pixels are drawn)."""
  return gather(lambda c: _make_chunk(c, seed, image_size, rho, split, pixels=False), n)


def _make_chunk(c: int, seed: int, image_size: int, rho: float, split: str,
                pixels: bool = True) -> dict[str, np.ndarray]:
  g = geometry(image_size)
  rng = chunk_rng(seed, SPLIT_CODES[split], c)
  index = c * CHUNK + np.arange(CHUNK)
  out = _train_factors(rng, index, rho, g["positions"])
  if pixels:
    noise = rng.standard_normal((CHUNK, image_size, image_size, 3), dtype=np.float32) * NOISE_STD
    out["image"] = render(out["color_a"], out["color_b"], out["x"], out["y"], noise, image_size)
    out["mask"] = interior_mask(out["x"], out["y"], image_size)
  return out


def to_public(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """uint8 images -> float32 [0, 1], and the regression label color_a / 255."""
  out = dict(arrays)
  out["image"] = arrays["image"].astype(np.float32) / np.float32(255.0)
  out["label"] = (arrays["color_a"] / 255.0).astype(np.float32)
  return out


def source(split: str = "train", *, n: int | None = None, seed: int = 0, image_size: int = 64,
           rho: float = 0.0) -> ChunkedSource:
  """A random-access source of uint8 examples of a squares split ("train" or "test")."""
  rho = _check_rho(rho)
  geometry(image_size)
  n = DEFAULT_SIZES[split] if n is None else int(n)
  return ChunkedSource(lambda c: _make_chunk(c, seed, image_size, rho, split), n)


def squares(n: int, *, seed: int = 0, image_size: int = 64, rho: float = 0.0,
            split: str = "train") -> dict[str, np.ndarray]:
  """Generates ``n`` squares images with their factors (see the module docstring).

  Args:
    n: number of examples; example ``i`` does not depend on ``n``.
    seed: random seed.
    image_size: 64 (published) or 32 (half geometry, for fast tests).
    rho: shortcut strength in [0, 1]; the correlation between the halves of color_a and color_b.
    split: "train" or "test": independent random streams with the same design.

  Returns:
    dict with ``image`` (n, H, W, 3) float32 in [0, 1], ``label`` (n,) float32 = color_a / 255,
    ``mask`` (n, H, W) bool (the interior), and int32 ``color_a``, ``color_b``, ``x``, ``y``.

  Example:
    >>> d = squares(16, image_size=32)
    >>> d["image"].shape, d["label"].dtype
    ((16, 32, 32, 3), dtype('float32'))
  """
  rho = _check_rho(rho)
  geometry(image_size)
  return to_public(gather(lambda c: _make_chunk(c, seed, image_size, rho, split), n))


def grid_factors(image_size: int = 64) -> dict[str, np.ndarray]:
  """Factors of the 315-image lower grid in the published order (color_b fastest)."""
  g = geometry(image_size)
  pos = np.linspace(0, g["positions"], 3).round().astype(np.int32)
  inner = np.linspace(0, 127, 5).astype(np.int32)
  bg = np.linspace(0, 255, 7).astype(np.int32)
  x, y, a, b = np.meshgrid(pos, pos, inner, bg, indexing="ij")
  return dict(color_a=a.ravel(), color_b=b.ravel(), x=x.ravel(), y=y.ravel())


def grid_arrays(which: str, *, seed: int = 0, image_size: int = 64) -> dict[str, np.ndarray]:
  """uint8 version of :func:`squares_grid` (used by the loaders)."""
  if which not in ("lower", "upper"):
    raise CfjaxInputError(f"squares_grid: which must be 'lower' or 'upper', got {which!r}.")
  f = grid_factors(image_size)
  n = len(f["x"])
  # One noise draw shared by both twins: the upper grid differs only inside the interior.
  noise = chunk_rng(seed, SPLIT_CODES["grid"], 0).standard_normal(
      (n, image_size, image_size, 3), dtype=np.float32) * NOISE_STD
  if which == "upper":
    f["color_a"] = f["color_a"] + 128
  f["image"] = render(f["color_a"], f["color_b"], f["x"], f["y"], noise, image_size)
  f["mask"] = interior_mask(f["x"], f["y"], image_size)
  return f


def squares_grid(which: str, *, seed: int = 0, image_size: int = 64) -> dict[str, np.ndarray]:
  """The published 315-image validation grid, lower or upper twin.

  Args:
    which: "lower" (inner colours 0..127) or "upper" (the same images, inner colour + 128).
    seed: noise seed, shared by both twins.
    image_size: 64 or 32.

  Returns:
    The same keys as :func:`squares`.

  Example:
    >>> lo = squares_grid("lower", image_size=32)
    >>> hi = squares_grid("upper", image_size=32)
    >>> bool(((lo["image"] != hi["image"]).any(-1) <= lo["mask"]).all())
    True
  """
  return to_public(grid_arrays(which, seed=seed, image_size=image_size))
