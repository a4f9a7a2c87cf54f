"""Data: synthetic testbeds with known factors, and tfds datasets, behind one loader.

``load(name, ...)`` gives batches (dicts of numpy arrays: ``image`` (B, H, W, 3) float32 in
[0, 1], ``label`` (B,), ``id`` (B,) int64, plus the ground-truth factors for testbeds);
``dataset_info(name)`` says what the task is. Names: "squares", "squares_grid_lower",
"squares_grid_upper", "shapes", "mnist", "celeb_a", "celeb_a_hq".

Example:
  >>> import cfjax.data as data
  >>> batch = next(iter(data.load("squares", image_size=32, n=64, batch_size=8)))
  >>> batch["image"].shape, batch["label"].dtype, batch["id"].dtype
  ((8, 32, 32, 3), dtype('float32'), dtype('int64'))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cfjax._validate import CfjaxInputError, check_choice, unknown_name
from cfjax.data import real
from cfjax.data import shapes as _shapes_mod
from cfjax.data import squares as _squares_mod
from cfjax.data.pipeline import batches
from cfjax.data.shapes import shapes  # noqa: F401
from cfjax.data.sources import ArraySource
from cfjax.data.squares import squares, squares_grid  # noqa: F401

TESTBEDS = ("squares", "squares_grid_lower", "squares_grid_upper", "shapes")
DATASETS = TESTBEDS + tuple(real.LOADERS)
_TESTBED_SPLITS = ("train", "test")
# The grids are one fixed set of 315 images; every split name returns it.
_GRID_SPLITS = ("train", "validation", "test")


def _check_name(name: str) -> str:
  if name not in DATASETS:
    raise unknown_name("dataset", name, DATASETS)
  return name


def _check_kwargs(name: str, kwargs: dict, allowed: tuple[str, ...]) -> None:
  for k in kwargs:
    if k not in allowed:
      raise unknown_name(f"option for dataset {name!r}", k, allowed)


def _split_n(split: str, n) -> int | None:
  """``n`` is an int (size of the requested split) or a dict split -> size."""
  if isinstance(n, dict):
    return n.get(split)
  return n


_INT_FACTORS = ("label", "color_a", "color_b", "x", "y", "shape", "background", "size")


def _testbed_pre(ex):
  out = dict(ex)
  # tfds hands back its int32 scalars as int64; the in-memory source gives int32.
  for k in _INT_FACTORS:
    if k in out:
      out[k] = np.int32(out[k])
  out["image"] = np.asarray(ex["image"]).astype(np.float32) / np.float32(255.0)
  return out


def _squares_pre(ex):
  out = _testbed_pre(ex)
  out["label"] = np.float32(out["color_a"] / 255.0)
  return out


_shapes_pre = _testbed_pre


def _testbed(name: str, split: str, image_size, attribute, kw: dict):
  if attribute is not None:
    raise CfjaxInputError(f"dataset {name!r} has no attributes; got attribute={attribute!r}.")
  if name == "squares":
    _check_kwargs(name, kw, ("n", "seed", "rho"))
    check_choice("split of 'squares'", split, _TESTBED_SPLITS)
    src = _squares_mod.source(split, n=_split_n(split, kw.get("n")), seed=kw.get("seed", 0),
                              image_size=image_size or 64, rho=kw.get("rho", 0.0))
    return src, _squares_pre
  if name.startswith("squares_grid_"):
    _check_kwargs(name, kw, ("seed",))
    check_choice(f"split of {name!r}", split, _GRID_SPLITS)
    arrays = _squares_mod.grid_arrays(name.rsplit("_", 1)[1], seed=kw.get("seed", 0),
                                      image_size=image_size or 64)
    return ArraySource(arrays), _squares_pre
  _check_kwargs(name, kw, ("n", "seed", "rho", "num_classes"))
  check_choice("split of 'shapes'", split, _TESTBED_SPLITS)
  src = _shapes_mod.source(split, n=_split_n(split, kw.get("n")), seed=kw.get("seed", 0),
                           image_size=image_size or 32, rho=kw.get("rho", 0.0),
                           num_classes=kw.get("num_classes", 2))
  return src, _shapes_pre


def _tfds_testbed(name, split, image_size, attribute, data_dir, kw):
  """A testbed written to ``data_dir`` as a tfds dataset (built once) and read back."""
  from cfjax.data import tfds_builders  # deferred: registers the builders, imports tfds
  _testbed(name, split if not name.startswith("squares_grid_") else "test", image_size,
           attribute, dict(kw))  # validates the options
  cfg = {}
  n = kw.pop("n", None)
  if isinstance(n, dict):
    cfg.update({f"n_{s}": v for s, v in n.items()})
  elif n is not None:
    cfg[f"n_{split}"] = int(n)
  if "seed" in kw:
    cfg["seed"] = int(kw.pop("seed"))
  if "num_classes" in kw:
    cfg["num_classes"] = int(kw.pop("num_classes"))
  testbed = "shapes" if name == "shapes" else "squares"
  if name.startswith("squares_grid_"):
    split = "grid_" + name.rsplit("_", 1)[1]
  src = tfds_builders.data_source(testbed, split, data_dir=str(data_dir), rho=kw.get("rho", 0.0),
                                  image_size=image_size, **cfg)
  return src, (_squares_pre if testbed == "squares" else _shapes_pre)


def load(
    name: str,
    *,
    split: str = "train",
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int = 0,
    attribute: str | None = None,
    image_size: int | None = None,
    num_epochs: int | None = 1,
    drop_remainder: bool = False,
    data_dir: str | None = None,
    **testbed_kwargs: Any,
):
  """Batches of a dataset as dicts of numpy arrays.

  Args:
    name: one of :data:`DATASETS`.
    split: "train" or "test" for testbeds ("validation" too for celeb_a; the squares grids
      ignore it). tfds datasets accept tfds slicing such as "train[:1000]".
    batch_size: examples per batch.
    shuffle: shuffle globally (a new order each epoch).
    seed: shuffle seed only. Testbeds are generated from ``data_seed`` (default 0), so a new
      shuffle order never changes the data itself.
    attribute: CelebA / CelebA-HQ target attribute by name (default "Smiling").
    image_size: output side; testbeds: squares 64 or 32, shapes any >= 16; real data is resized
      (CelebA with DiME's resize + centre crop). None: the dataset's native/default size.
    num_epochs: passes over the data; None repeats forever.
    drop_remainder: drop a final short batch.
    data_dir: tfds data directory. Real datasets are read from it (never downloaded);
      testbeds given a data_dir are written there once as tfds datasets (array_record, see
      :mod:`cfjax.data.tfds_builders`) and read back through ``tfds`` data sources.
    **testbed_kwargs: squares: ``n`` (int or {split: n}), ``data_seed``, ``rho``; shapes: the
      same plus ``num_classes``; grids: ``data_seed``; celeb_a_hq: ``attributes_file``,
      ``resolution``.

  Returns:
    A ``grain.MapDataset`` of batches (iterable; ``len`` and ``[k]`` work for finite epochs).
    Each batch has ``image`` (B, H, W, 3) float32 in [0, 1], ``label`` (B,) float32
    (regression) or int32 (classification), ``id`` (B,) int64 (the example's index in its
    split, stable under shuffling), and for testbeds the factors and ``mask``.

  Raises:
    CfjaxInputError: unknown dataset, attribute, split or option; data not prepared.

  Example:
    >>> ds = load("shapes", n=10, batch_size=4, shuffle=False)
    >>> [b["id"].tolist() for b in ds]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  """
  src, pre = _source(name, split, attribute, image_size, data_dir, testbed_kwargs)
  return batches(src, pre, batch_size=batch_size, shuffle=shuffle, seed=seed,
                 num_epochs=num_epochs, drop_remainder=drop_remainder)


def _source(name, split, attribute, image_size, data_dir, kw):
  _check_name(name)
  kw = dict(kw)
  if "data_seed" in kw:
    kw["seed"] = kw.pop("data_seed")
  if name in TESTBEDS:
    if data_dir is not None:
      return _tfds_testbed(name, split, image_size, attribute, data_dir, kw)
    return _testbed(name, split, image_size, attribute, kw)
  allowed = ("attributes_file", "resolution") if name == "celeb_a_hq" else ()
  _check_kwargs(name, kw, allowed)
  if name == "mnist" and attribute is not None:
    raise CfjaxInputError(f"dataset 'mnist' has no attributes; got attribute={attribute!r}.")
  return real.LOADERS[name](split, data_dir=data_dir, image_size=image_size, attribute=attribute,
                            **kw)


def dataset_info(name: str, attribute: str | None = None, **kwargs: Any) -> dict[str, Any]:
  """What a dataset is: task, classes, image size, split sizes, label range.

  Args:
    name: one of :data:`DATASETS`.
    attribute: CelebA target attribute (checked; default "Smiling").
    **kwargs: the options of :func:`load` that change the answer (``image_size``, ``n``,
      ``num_classes``, ``rho``, ...); others are ignored.

  Returns:
    dict with ``task`` ("regression" or "classification"), ``num_classes`` (None for
    regression), ``image_size``, ``num_examples`` ({split: n}), ``label_range`` ((0, 1) for
    regression, None otherwise), ``factors`` (testbeds) and ``attribute``/``attribute_names``
    (CelebA).

  Example:
    >>> dataset_info("squares", image_size=32)["task"]
    'regression'
  """
  _check_name(name)
  size = kwargs.get("image_size")
  if name == "squares" or name.startswith("squares_grid_"):
    size = size or 64
    _squares_mod.geometry(size)
    if name == "squares":
      n = kwargs.get("n")
      counts = {s: _split_n(s, n) or _squares_mod.DEFAULT_SIZES[s] for s in _TESTBED_SPLITS}
    else:
      counts = {s: 315 for s in _GRID_SPLITS}
    return dict(task="regression", num_classes=None, image_size=size, num_examples=counts,
                label_range=(0.0, 1.0), factors=("color_a", "color_b", "x", "y", "mask"))
  if name == "shapes":
    n = kwargs.get("n")
    k = kwargs.get("num_classes", 2)
    return dict(task="classification", num_classes=k, image_size=size or 32,
                num_examples={s: _split_n(s, n) or _shapes_mod.DEFAULT_SIZES[s]
                              for s in _TESTBED_SPLITS},
                label_range=None, class_names=_shapes_mod.SHAPE_NAMES[:k],
                factors=("shape", "background", "x", "y", "size", "color", "mask"))
  info = dict(task="classification", image_size=size or real.DEFAULT_SIZE[name],
              num_examples=dict(real.NUM_EXAMPLES[name]), label_range=None)
  if name == "mnist":
    info.update(num_classes=10)
  else:
    info.update(num_classes=2, attribute=real.check_attribute(attribute),
                attribute_names=tuple(real.CELEBA_ATTRIBUTES))
  return info


# Batch entries that are not attributes (the label repeats a factor: squares' color_a, shapes' shape).
_NOT_ATTRIBUTES = ("mask", "color", "image", "id", "label")


def attribute_names(batch: dict) -> list[str]:
  """The attributes a batch of :func:`load` carries: a testbed's scalar factors or CelebA's 40.

  Example:
    >>> attribute_names(next(iter(load("squares", image_size=32, n=8, batch_size=8))))
    ['color_a', 'color_b', 'x', 'y']
  """
  if "attributes" in batch:
    return list(real.CELEBA_ATTRIBUTES)
  return [k for k, v in batch.items() if k not in _NOT_ATTRIBUTES and getattr(v, "ndim", 0) == 1]


def attribute_columns(batch: dict, names) -> dict[str, np.ndarray]:
  """``name -> (B,)`` float32 values of the named attributes (CelebA's -1, unknown, becomes NaN)."""
  out = {}
  for n in names:
    if "attributes" in batch and n in real.CELEBA_ATTRIBUTES:
      v = batch["attributes"][:, real.CELEBA_ATTRIBUTES.index(n)].astype(np.float32)
      out[n] = np.where(v < 0, np.nan, v)
    else:
      out[n] = np.asarray(batch[n], np.float32)
  return out


__all__ = ["DATASETS", "attribute_columns", "attribute_names", "dataset_info", "load", "shapes", "squares",
           "squares_grid"]
