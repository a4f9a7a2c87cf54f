"""Input checks that run at the edges, before anything is traced or compiled.

Every public entry point that takes images, names or targets calls these, so a user gets a
message that names the problem instead of a shape error from deep inside XLA. Nothing here is
ever called inside ``jit``.
"""

from __future__ import annotations

import difflib
from typing import Iterable

import numpy as np


class CfjaxInputError(ValueError):
  """Raised for bad user input (shape, range, dtype, NaN, unknown names, ...)."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> CfjaxInputError:
  """Error for an unknown registry name, with the closest known names suggested."""
  known = sorted(known)
  close = difflib.get_close_matches(str(name), known, n=3)
  hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
  return CfjaxInputError(f"unknown {kind} {name!r}. Known: {', '.join(known)}.{hint}")


def check_choice(kind: str, name: str, known: Iterable[str]) -> str:
  known = list(known)
  if name not in known:
    raise unknown_name(kind, name, known)
  return name


def check_images(
    x,
    *,
    name: str = "images",
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = 3,
    value_range: tuple[float, float] = (0.0, 1.0),
    batched: bool = True,
    tol: float = 1e-6,
) -> np.ndarray:
  """Checks an NHWC float image batch and returns it as a float32 numpy array.

  Args:
    x: array-like images, NHWC (``batched=True``) or HWC.
    name: what to call the array in messages.
    image_size: expected spatial size (int for square images, or (H, W)); None accepts any.
    channels: expected channel count; None accepts any.
    value_range: inclusive range the values must lie in (default [0, 1], cfjax's public range).
    batched: whether a leading batch axis is expected.
    tol: slack allowed outside the range for float round-off.

  Raises:
    CfjaxInputError: naming the problem (dtype, rank, size, channels, NaN/inf, range).
  """
  arr = np.asarray(x)
  if arr.dtype == np.uint8:
    raise CfjaxInputError(
        f"{name} have dtype uint8; cfjax takes float images in [{value_range[0]}, {value_range[1]}]:"
        " divide by 255 and cast to float32 first.")
  if not np.issubdtype(arr.dtype, np.floating):
    raise CfjaxInputError(f"{name} must be a float array, got dtype {arr.dtype}.")
  rank = 4 if batched else 3
  layout = "NHWC" if batched else "HWC"
  if arr.ndim != rank:
    raise CfjaxInputError(f"{name} must be {layout} (rank {rank}), got shape {arr.shape}.")
  if batched and arr.shape[0] == 0:
    raise CfjaxInputError(f"{name} is empty (batch size 0).")
  h, w, c = arr.shape[-3:]
  if channels is not None and c != channels:
    hint = " (this looks like NCHW; cfjax images are NHWC)" if arr.shape[-3] == channels else ""
    raise CfjaxInputError(f"{name} must have {channels} channels in the last axis, got shape {arr.shape}{hint}.")
  if image_size is not None:
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if (h, w) != hw:
      raise CfjaxInputError(f"{name} must be {hw[0]}x{hw[1]} pixels, got {h}x{w} (shape {arr.shape}).")
  finite = np.isfinite(arr)
  if not finite.all():
    where = ""
    if batched:
      bad = np.nonzero(~finite.reshape(arr.shape[0], -1).all(axis=1))[0]
      where = f" (examples {bad[:10].tolist()})"
    raise CfjaxInputError(f"{name} contain NaN or inf values{where}.")
  lo, hi = value_range
  amin, amax = float(arr.min()), float(arr.max())
  if amin < lo - tol or amax > hi + tol:
    hint = ""
    if lo == 0.0 and hi == 1.0 and amin >= -1 - tol and amin < 0:
      hint = " They look like [-1, 1] images: map them with (x + 1) / 2."
    elif lo == 0.0 and hi == 1.0 and amax > 1.5:
      hint = " They look like [0, 255] images: divide by 255."
    raise CfjaxInputError(f"{name} must lie in [{lo}, {hi}], got values in [{amin:.4g}, {amax:.4g}].{hint}")
  return arr.astype(np.float32, copy=False)
