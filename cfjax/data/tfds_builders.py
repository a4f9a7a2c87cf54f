"""The testbeds as tfds datasets, generated locally (no download, no TensorFlow).

Importing this module registers ``cfjax_squares`` and ``cfjax_shapes``. Building one writes
array_record files into ``data_dir``; ``tfds.data_source`` reads them back. Two constraints make
this work without TensorFlow: ``_info`` passes ``builder=self`` to ``DatasetInfo``, and images are
``tfds.features.Tensor`` (uint8), since the ``Image`` feature needs TF to encode PNGs.

Configs are named ``rho<rho>_s<image_size>`` (e.g. ``rho0.5_s32``); any other combination can be
passed as ``config=SquaresConfig(...)``. Squares splits: ``train``, ``test``, ``grid_lower``,
``grid_upper``; shapes splits: ``train``, ``test``. Every example stores its ``id`` (its index
in the split) and its factors.

Example:
  >>> import tempfile, tensorflow_datasets as tfds
  >>> from cfjax.data import tfds_builders
  >>> d = tempfile.mkdtemp()
  >>> b = tfds_builders.build("squares", data_dir=d, rho=0.5, image_size=32, n_train=32, n_test=16)
  >>> b.builder_config.name
  'rho0.5_s32_n_test16_n_train32'
  >>> src = tfds.data_source("cfjax_squares/rho0.5_s32_n_test16_n_train32", split="test",
  ...                        data_dir=d, download=False)
  >>> len(src), src[0]["image"].shape, int(src[3]["id"])
  (16, (32, 32, 3), 3)
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from cfjax._validate import check_choice
# cfjax.data re-exports the functions squares() and shapes() under the module names, so the
# modules are fetched by their dotted path.
shapes_mod = importlib.import_module("cfjax.data.shapes")
squares_mod = importlib.import_module("cfjax.data.squares")


@dataclasses.dataclass(eq=False)
class SquaresConfig(tfds.core.BuilderConfig):
  rho: float = 0.0
  image_size: int = 64
  n_train: int = squares_mod.DEFAULT_SIZES["train"]
  n_test: int = squares_mod.DEFAULT_SIZES["test"]
  seed: int = 0


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  rho: float = 0.0
  image_size: int = 32
  num_classes: int = 2
  n_train: int = shapes_mod.DEFAULT_SIZES["train"]
  n_test: int = shapes_mod.DEFAULT_SIZES["test"]
  seed: int = 0


def config_name(rho: float, image_size: int) -> str:
  return f"rho{float(rho):g}_s{int(image_size)}"


def _squares_configs():
  return [SquaresConfig(name=config_name(r, s), rho=r, image_size=s)
          for s in (64, 32) for r in (0.0, 0.5, 0.9, 1.0)]


def _shapes_configs():
  return [ShapesConfig(name=config_name(r, s), rho=r, image_size=s)
          for s in (32, 64) for r in (0.0, 0.5, 0.9, 1.0)]


def _scalar(dtype):
  return tfds.features.Tensor(shape=(), dtype=dtype)


def _rows(arrays: dict[str, np.ndarray], keys):
  """Yields (key, example) with the example's index as both tfds key and ``id``."""
  n = len(arrays["image"])
  for i in range(n):
    ex = {k: arrays[k][i] for k in keys}
    ex["id"] = np.int64(i)
    yield i, ex


def _from_source(src, keys):
  for i in range(len(src)):
    ex = src[i]
    out = {k: ex[k] for k in keys}
    out["id"] = np.int64(i)
    yield i, out


class CfjaxSquares(tfds.core.GeneratorBasedBuilder):
  """Ha & Bender's squares (see :mod:`cfjax.data.squares`), generated locally."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = _squares_configs()
  # tfds derives this from the package's resources, which fails for an editable install
  # without the importlib_resources backport; nothing is downloaded, so the file is enough.
  code_path = epath.Path(__file__)
  _KEYS = ("image", "mask", "label", "color_a", "color_b", "x", "y")

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        # Keep examples in generation order, so data_source index == stored id.
        disable_shuffling=True,
        description="Squares regression testbed (Ha & Bender), label = color_a / 255.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8),
            "mask": tfds.features.Tensor(shape=(s, s), dtype=np.bool_),
            "label": _scalar(np.float32),
            "color_a": _scalar(np.int32),
            "color_b": _scalar(np.int32),
            "x": _scalar(np.int32),
            "y": _scalar(np.int32),
            "id": _scalar(np.int64),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    c = self.builder_config
    return {
        "train": self._generate_examples(split="train", n=c.n_train),
        "test": self._generate_examples(split="test", n=c.n_test),
        "grid_lower": self._generate_examples(split="grid_lower"),
        "grid_upper": self._generate_examples(split="grid_upper"),
    }

  def _generate_examples(self, split: str, n: int = 0):
    c = self.builder_config
    if split.startswith("grid_"):
      arrays = squares_mod.grid_arrays(split[5:], seed=c.seed, image_size=c.image_size)
      arrays["label"] = (arrays["color_a"] / 255.0).astype(np.float32)
      yield from _rows(arrays, self._KEYS)
      return
    src = squares_mod.source(split, n=n, seed=c.seed, image_size=c.image_size, rho=c.rho)
    for key, ex in _from_source(_LabelledSquares(src), self._KEYS):
      yield key, ex


class _LabelledSquares:
  """Adds the float label to uint8 squares examples."""

  def __init__(self, src):
    self._src = src

  def __len__(self):
    return len(self._src)

  def __getitem__(self, i):
    ex = dict(self._src[i])
    ex["label"] = np.float32(ex["color_a"] / 255.0)
    return ex


class CfjaxShapes(tfds.core.GeneratorBasedBuilder):
  """The shapes classification testbed (see :mod:`cfjax.data.shapes`), generated locally."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = _shapes_configs()
  # tfds derives this from the package's resources, which fails for an editable install
  # without the importlib_resources backport; nothing is downloaded, so the file is enough.
  code_path = epath.Path(__file__)
  _KEYS = ("image", "mask", "label", "shape", "background", "x", "y", "size", "color")

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        # Keep examples in generation order, so data_source index == stored id.
        disable_shuffling=True,
        description="Shapes classification testbed: shape is causal, background spurious.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8),
            "mask": tfds.features.Tensor(shape=(s, s), dtype=np.bool_),
            "label": _scalar(np.int32),
            "shape": _scalar(np.int32),
            "background": _scalar(np.int32),
            "x": _scalar(np.int32),
            "y": _scalar(np.int32),
            "size": _scalar(np.int32),
            "color": tfds.features.Tensor(shape=(3,), dtype=np.float32),
            "id": _scalar(np.int64),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    return {"train": self._generate_examples(split="train", n=c.n_train),
            "test": self._generate_examples(split="test", n=c.n_test)}

  def _generate_examples(self, split: str, n: int):
    c = self.builder_config
    src = shapes_mod.source(split, n=n, seed=c.seed, image_size=c.image_size, rho=c.rho,
                            num_classes=c.num_classes)
    yield from _from_source(src, self._KEYS)


_BUILDERS = {"squares": (CfjaxSquares, SquaresConfig), "shapes": (CfjaxShapes, ShapesConfig)}


def build(testbed: str, *, data_dir: str, rho: float = 0.0, image_size: int | None = None,
          **config_kwargs) -> tfds.core.DatasetBuilder:
  """Generates a testbed as a tfds dataset in ``data_dir`` (array_record) and returns its builder.

  A non-default ``n_train``/``n_test``/``seed``/``num_classes`` gets its own config name
  (suffixed with those values) so it never collides with a default-sized build.

  Args:
    testbed: "squares" or "shapes".
    data_dir: where to write.
    rho: shortcut strength.
    image_size: 64 or 32 for squares (default 64); shapes default 32.
    **config_kwargs: other fields of :class:`SquaresConfig` / :class:`ShapesConfig`.
  """
  check_choice("tfds testbed", testbed, _BUILDERS)
  cls, cfg_cls = _BUILDERS[testbed]
  image_size = image_size or cfg_cls.image_size
  if testbed == "squares":
    squares_mod.geometry(image_size)
  name = config_name(rho, image_size)
  extra = "_".join(f"{k}{v}" for k, v in sorted(config_kwargs.items()))
  cfg = cfg_cls(name=f"{name}_{extra}" if extra else name, rho=float(rho),
                image_size=int(image_size), **config_kwargs)
  builder = cls(config=cfg, data_dir=data_dir, file_format="array_record")
  # tfds prints "Downloading and preparing ..." although nothing is downloaded.
  with contextlib.redirect_stdout(io.StringIO()):
    builder.download_and_prepare()
  return builder


def data_source(testbed: str, split: str, *, data_dir: str, rho: float = 0.0,
                image_size: int | None = None, **config_kwargs):
  """A ``tfds`` data source of a testbed split, built into ``data_dir`` first if missing."""
  return build(testbed, data_dir=data_dir, rho=rho, image_size=image_size,
               **config_kwargs).as_data_source(split=split)
