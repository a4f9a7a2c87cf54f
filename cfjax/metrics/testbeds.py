"""Ground-truth metrics on the synthetic testbeds: which factors a CE changed, by how much, and how
far it is from the ideal CE where one exists.

* :func:`region_change`: mean |x' - x| inside given pixel regions (e.g. the squares interior vs the
  background), pooled over every region pixel of every CE, and the ratio of the first two.
* :func:`squares_factor_change`: the squares factors read off the pixels of x and x' at the
  square's known position (interior red = color_a, background grey = color_b, the grey border
  ring), their changes, and how often each changed by more than ``tolerance`` grey levels (a
  changed ring means the square moved or was repainted).
* :func:`shapes_background_change`: on shapes, whether the CE repainted the background into
  another palette colour (the planted shortcut) and how much the background and the shape's
  colour changed.
* :func:`ideal_distance`: distance of x' to the ideal CE (the squares "mirror" target: the
  image's upper twin), next to the input's distance to it, and the share of the gap closed.
* :func:`squares_report`: the squares validity report of CEs towards the "mirror" target
  (success, interior vs background change, distance to the ideal CE, prediction error).

Grey levels are reported in [0, 255] units (``scale``), as the testbeds define their factors.

Example:
  >>> import numpy as np
  >>> from cfjax import data, metrics
  >>> lo, hi = data.squares_grid("lower", image_size=32), data.squares_grid("upper", image_size=32)
  >>> b = {"original": lo["image"][:8], "counterfactual": hi["image"][:8], "ideal": hi["image"][:8]}
  >>> metrics.compute(metrics.ideal_distance(), b)["ideal_gap_closed"]
  1.0
"""

from __future__ import annotations

import importlib
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from cfjax._validate import CfjaxInputError
from cfjax.metrics.base import Batch, Metric, check_pair, mean_metric


def _testbed(name: str):
  """The testbed module (``cfjax.data.squares`` is also the name of a function, hence importlib)."""
  return importlib.import_module(f"cfjax.data.{name}")


def _abs_change(b, a="original", c="counterfactual"):
  return jnp.mean(jnp.abs(b[c].astype(jnp.float32) - b[a].astype(jnp.float32)), axis=-1)


def _region_sum(v, m):
  """Per example: (sum of v over the region, region pixel count); v, m (N, H, W)."""
  m = m.astype(jnp.float32)
  return jnp.sum(v * m, axis=(1, 2)), jnp.sum(m, axis=(1, 2))


def _ratio(num, den) -> float:
  return float(num / den) if den > 0 else float("nan")


def _check_regions(keys: Sequence[str]):
  def check(batch: Batch):
    check_pair(batch)
    shape = np.shape(batch["original"])[:3]
    for k in keys:
      if np.shape(batch[k]) != shape:
        raise CfjaxInputError(f"region {k!r} must be an (N, H, W) mask of shape {shape}, got "
                              f"{np.shape(batch[k])}.")
  return check


def squares_regions(x, y, image_size: int = 64) -> dict[str, np.ndarray]:
  """(N, H, W) bool masks of a squares image: ``interior``, ``border`` ring, ``background``.

  Example:
    >>> r = squares_regions(np.array([0]), np.array([0]), image_size=32)
    >>> int(r["interior"].sum()), int(r["border"].sum()), int(r["background"].sum())
    (16, 20, 988)
  """
  g = _testbed("squares").geometry(image_size)
  x, y = np.asarray(x), np.asarray(y)
  r = np.arange(image_size)
  rows = (r >= x[:, None]) & (r < x[:, None] + g["full"])
  cols = (r >= y[:, None]) & (r < y[:, None] + g["full"])
  square = rows[:, :, None] & cols[:, None, :]
  inner = _testbed("squares").interior_mask(x, y, image_size)
  return {"interior": inner, "border": square & ~inner, "background": ~square}


def region_change(regions: Sequence[str] = ("interior", "background"), *, scale: float = 255.0
                  ) -> Metric:
  """Mean |x' - x| (channel mean, times ``scale``) inside each region, pooled over all region pixels.

  Args:
    regions: batch keys of (N, H, W) bool masks; reports ``change_{region}`` for each and, for
      two or more, ``change_{first}_over_{second}``.
    scale: 255 reports grey levels.

  Example:
    >>> from cfjax.metrics import compute
    >>> x = np.zeros((1, 2, 2, 3), np.float32)
    >>> m = np.array([[[True, False], [False, False]]])
    >>> b = {"original": x, "counterfactual": x + np.float32(0.1) * m[..., None], "inside": m, "outside": ~m}
    >>> {k: round(v, 3) for k, v in compute(region_change(("inside", "outside")), b).items()}
    {'change_inside': 25.5, 'change_outside': 0.0, 'change_inside_over_outside': inf}
  """
  regions = tuple(regions)
  if not regions:
    raise CfjaxInputError("region_change needs at least one region key.")

  def per_example(b):
    d = _abs_change(b)
    out = {}
    for r in regions:
      out[f"sum_{r}"], out[f"px_{r}"] = _region_sum(d, b[r])
    return out

  def finalize(m, n):
    out = {f"change_{r}": _ratio(m[f"sum_{r}"], m[f"px_{r}"]) * scale for r in regions}
    if len(regions) >= 2:
      a, b = out[f"change_{regions[0]}"], out[f"change_{regions[1]}"]
      out[f"change_{regions[0]}_over_{regions[1]}"] = a / b if b > 0 else float("inf")
    return out

  outputs = tuple(f"{p}_{r}" for r in regions for p in ("sum", "px"))
  return mean_metric("region_change", per_example, requires=("original", "counterfactual", *regions),
                     outputs=outputs, finalize=finalize, check=_check_regions(regions))


def _box(start, side, size):
  r = jnp.arange(size)
  return (r >= start[:, None]) & (r < start[:, None] + side)


def _squares_levels(img, x, y, image_size):
  """Per example (interior red, ring grey, background grey) in [0, 1] from the known position."""
  g = _testbed("squares").geometry(image_size)
  rows, cols = _box(x, g["full"], image_size), _box(y, g["full"], image_size)
  square = rows[:, :, None] & cols[:, None, :]
  inner = (_box(x + g["border"], g["inner"], image_size)[:, :, None]
           & _box(y + g["border"], g["inner"], image_size)[:, None, :])
  grey = jnp.mean(img, axis=-1)

  def mean(v, m):
    s, c = _region_sum(v, m)
    return s / c
  return mean(img[..., 0], inner), mean(grey, square & ~inner), mean(grey, ~square)


def squares_factor_change(image_size: int = 64, *, tolerance: float = 16.0) -> Metric:
  """Which squares factors a CE changed and by how much (grey levels), read at the known position.

  The batch needs ``x``, ``y`` (the square's corner, as the data set gives them). Reports
  ``delta_color_a`` (signed mean change of the interior red), ``abs_delta_color_a``,
  ``abs_delta_color_b`` (background level), ``abs_delta_border`` (the grey ring), the fractions
  ``changed_color_a``, ``changed_color_b``, ``changed_border`` (above ``tolerance``), and
  ``color_b_over_color_a`` (the mean background change per unit of interior change: near 0 for a
  faithful regressor's CEs, large for a shortcut's).

  Example:
    >>> from cfjax import data
    >>> from cfjax.metrics import compute
    >>> lo, hi = data.squares_grid("lower", image_size=32), data.squares_grid("upper", image_size=32)
    >>> s = slice(14, 18)  # color_a 63: neither twin clips at 0 or 255
    >>> b = {"original": lo["image"][s], "counterfactual": hi["image"][s], "x": lo["x"][s], "y": lo["y"][s]}
    >>> r = compute(squares_factor_change(32), b)
    >>> r["delta_color_a"], r["changed_color_b"]
    (128.0, 0.0)
  """
  _testbed("squares").geometry(image_size)

  def per_example(b):
    x, y = b["x"].astype(jnp.int32), b["y"].astype(jnp.int32)
    before = _squares_levels(b["original"].astype(jnp.float32), x, y, image_size)
    after = _squares_levels(b["counterfactual"].astype(jnp.float32), x, y, image_size)
    da, dr, db = ((v1 - v0) * jnp.float32(255.0) for v0, v1 in zip(before, after))
    tol = jnp.float32(tolerance)
    return {"delta_color_a": da, "abs_delta_color_a": jnp.abs(da), "abs_delta_color_b": jnp.abs(db),
            "abs_delta_border": jnp.abs(dr), "changed_color_a": (jnp.abs(da) > tol).astype(jnp.float32),
            "changed_color_b": (jnp.abs(db) > tol).astype(jnp.float32),
            "changed_border": (jnp.abs(dr) > tol).astype(jnp.float32)}

  def finalize(m, n):
    out = {k: float(v) for k, v in m.items()}
    a = out["abs_delta_color_a"]
    out["color_b_over_color_a"] = out["abs_delta_color_b"] / a if a > 0 else float("inf")
    return out

  def check(batch: Batch):
    check_pair(batch)
    size = np.shape(batch["original"])[1:3]
    if size != (image_size, image_size):
      raise CfjaxInputError(f"squares_factor_change({image_size}) got {size[0]}x{size[1]} images.")

  outputs = ("delta_color_a", "abs_delta_color_a", "abs_delta_color_b", "abs_delta_border",
             "changed_color_a", "changed_color_b", "changed_border")
  return mean_metric("squares_factor_change", per_example, requires=("original", "counterfactual", "x", "y"),
                     outputs=outputs, finalize=finalize, check=check)


def shapes_background_change(*, mask_key: str = "shape_mask", scale: float = 255.0) -> Metric:
  """On shapes: did the CE repaint the background into another palette colour (the shortcut)?

  The batch needs the input's shape mask under ``mask_key`` (the data set's ``mask``). Reports
  ``background_changed`` (fraction of CEs whose mean background colour is nearest to another
  palette entry than the input's), ``abs_delta_background`` and ``abs_delta_shape`` (the change of
  the mean colour outside / inside the mask, channel mean, times ``scale``).

  Example:
    >>> from cfjax import data
    >>> from cfjax.metrics import compute
    >>> d = data.shapes(4)
    >>> b = {"original": d["image"], "counterfactual": d["image"], "shape_mask": d["mask"]}
    >>> compute(shapes_background_change(), b)["background_changed"]
    0.0
  """
  palette = jnp.asarray(_testbed("shapes").PALETTE, jnp.float32)

  def per_example(b):
    m = b[mask_key].astype(jnp.float32)[..., None]

    def colours(img):
      img = img.astype(jnp.float32)
      outside = jnp.sum(img * (1 - m), axis=(1, 2)) / jnp.maximum(jnp.sum(1 - m, axis=(1, 2)), 1.0)
      inside = jnp.sum(img * m, axis=(1, 2)) / jnp.maximum(jnp.sum(m, axis=(1, 2)), 1.0)
      return outside, inside

    (bg0, fg0), (bg1, fg1) = colours(b["original"]), colours(b["counterfactual"])

    def nearest(c):
      return jnp.argmin(jnp.sum((c[:, None, :] - palette[None]) ** 2, axis=-1), axis=1)
    s = jnp.float32(scale)
    return {"background_changed": (nearest(bg0) != nearest(bg1)).astype(jnp.float32),
            "abs_delta_background": jnp.mean(jnp.abs(bg1 - bg0), axis=-1) * s,
            "abs_delta_shape": jnp.mean(jnp.abs(fg1 - fg0), axis=-1) * s}

  return mean_metric("shapes_background_change", per_example,
                     requires=("original", "counterfactual", mask_key),
                     outputs=("background_changed", "abs_delta_background", "abs_delta_shape"),
                     check=_check_regions((mask_key,)))


def ideal_distance(*, region_key: str | None = None, channel: int | None = None,
                   scale: float = 1.0) -> Metric:
  """Distance of each CE to its ideal CE (batch key ``ideal``), pooled over pixels.

  Args:
    region_key: optional (N, H, W) bool mask key: compare only there (e.g. the squares interior).
    channel: compare only this channel (e.g. 0, the squares' red); default the channel mean.
    scale: 255 reports grey levels.

  Reports ``ideal_distance`` (mean |x' - ideal|), ``original_ideal_distance`` (mean |x - ideal|)
  and ``ideal_gap_closed`` = 1 - their ratio (1: the ideal CE, 0: no closer than the input).

  Example:
    >>> from cfjax.metrics import compute
    >>> x, ideal = np.zeros((1, 2, 2, 1), np.float32), np.ones((1, 2, 2, 1), np.float32)
    >>> compute(ideal_distance(), {"original": x, "counterfactual": x + np.float32(0.75), "ideal": ideal})
    {'ideal_distance': 0.25, 'original_ideal_distance': 1.0, 'ideal_gap_closed': 0.75}
  """
  def per_example(b):
    diff = {}
    for k in ("counterfactual", "original"):
      d = jnp.abs(b[k].astype(jnp.float32) - b["ideal"].astype(jnp.float32))
      d = jnp.mean(d, axis=-1) if channel is None else d[..., channel]
      m = b[region_key] if region_key else jnp.ones(d.shape, bool)
      diff[k], px = _region_sum(d, m)
    return {"ce": diff["counterfactual"], "x": diff["original"], "px": px}

  def finalize(m, n):
    ce, x = _ratio(m["ce"], m["px"]), _ratio(m["x"], m["px"])
    return {"ideal_distance": ce * scale, "original_ideal_distance": x * scale,
            "ideal_gap_closed": 1.0 - ce / x if x > 0 else float("nan")}

  def check(batch: Batch):
    check_pair(batch)
    check_pair(batch, "original", "ideal")
    if region_key:
      _check_regions((region_key,))(batch)

  requires = ("original", "counterfactual", "ideal") + ((region_key,) if region_key else ())
  return mean_metric("ideal_distance", per_example, requires=requires, outputs=("ce", "x", "px"),
                     finalize=finalize, check=check)


def squares_report(results: dict, grid_lower: dict, grid_upper: dict) -> dict[str, float]:
  """Validity and locality of CEs of lower-grid squares towards the "mirror" target (+128/255).

  Args:
    results: per-CE ``image_id`` (lower-grid ids), ``original``, ``counterfactual``, ``success``,
      ``iterations``, ``prediction``, ``target`` (as ``cfjax explain`` and jobs return them).
    grid_lower, grid_upper: :func:`cfjax.data.squares_grid` twins at the CEs' image size; the
      upper twin of an image is its ideal CE.

  Returns:
    ``success_rate``, ``mean_iterations``, the mean |change| (grey levels, channel mean) inside
    the square's interior and in the background (:func:`region_change`) and their ratio, the
    distance to the ideal CE over the image and of the interior's red (:func:`ideal_distance`),
    next to the input's, and ``mean_prediction_error`` (:func:`~cfjax.metrics.oracle_mae` of the
    stored predictions).

  Example:
    >>> from cfjax import data
    >>> lo, hi = data.squares_grid("lower", image_size=32), data.squares_grid("upper", image_size=32)
    >>> ids = np.arange(4)
    >>> res = {"image_id": ids, "original": lo["image"][ids], "counterfactual": hi["image"][ids],
    ...        "success": np.ones(4, bool), "iterations": np.ones(4), "prediction": hi["label"][ids],
    ...        "target": hi["label"][ids]}
    >>> r = squares_report(res, lo, hi)
    >>> r["mean_abs_distance_to_ideal_255"], r["mean_change_background_255"]
    (0.0, 0.0)
  """
  from cfjax.metrics.evaluate import compute
  from cfjax.metrics.validity import oracle_mae, success_rate
  ids = np.asarray(results["image_id"])
  size = int(np.shape(results["original"])[1])
  regions = squares_regions(np.asarray(grid_lower["x"])[ids], np.asarray(grid_lower["y"])[ids], size)
  batch = {k: np.asarray(results[k]) for k in ("original", "counterfactual", "success", "prediction", "target")}
  batch.update(ideal=np.asarray(grid_upper["image"])[ids], interior=regions["interior"],
               background=regions["background"])
  r = compute([success_rate(), region_change(scale=255.0), ideal_distance(scale=255.0), oracle_mae()], batch)
  red = compute(ideal_distance(region_key="interior", channel=0, scale=255.0), batch)
  return {
      "num_images": int(len(ids)), "success_rate": r["success_rate"],
      "mean_iterations": float(np.mean(results["iterations"])),
      "mean_change_inside_interior_255": r["change_interior"],
      "mean_change_background_255": r["change_background"],
      "inside_over_background": r["change_interior_over_background"],
      "mean_abs_distance_to_ideal_255": r["ideal_distance"],
      "mean_abs_distance_original_to_ideal_255": r["original_ideal_distance"],
      "interior_red_distance_to_ideal_255": red["ideal_distance"],
      "interior_red_original_to_ideal_255": red["original_ideal_distance"],
      "mean_prediction_error": r["oracle_mae"],
  }
