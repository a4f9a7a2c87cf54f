"""Real datasets through ``tfds.data_source`` (array_record; no TensorFlow needed to read).

Nothing here downloads: the datasets must already be prepared in ``data_dir`` (``tfds build
mnist`` / ``celeb_a`` / ``celeb_a_hq`` once, on a machine with TensorFlow, since tfds needs it
to *encode* images; reading them back needs only Pillow).

CelebA preprocessing follows DiME / ACE (``CelebADataset`` in DiME's ``core/image_datasets.py``):
resize the shorter side to ``image_size`` (bilinear, antialiased) then centre-crop
``image_size`` x ``image_size``, no flips (evaluation). For the 178x218 aligned crops at 128 px
that is a 128x156 resize and a crop starting at row 14, i.e. about the central 178x178 square.
Labels are the 40 binary attributes (-1/1 mapped to 0/1); ``attribute`` picks the target.

CelebA-HQ: tfds' ``celeb_a_hq/<resolution>`` (manual download of the ``data<r>x<r>.tar``
files) holds images and file names only. Attributes come from CelebAMask-HQ's
``CelebAMask-HQ-attribute-anno.txt`` (pass ``attributes_file=``), matched through the number
in each file name; without it the label is -1.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import numpy as np
from PIL import Image

from cfjax._validate import CfjaxInputError, unknown_name

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes "
    "No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling "
    "Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young").split()

# Published split sizes (cheap to report without opening the data).
NUM_EXAMPLES = {
    "mnist": {"train": 60000, "test": 10000},
    "celeb_a": {"train": 162770, "validation": 19867, "test": 19962},
    "celeb_a_hq": {"train": 30000},
}
DEFAULT_SIZE = {"mnist": 28, "celeb_a": 128, "celeb_a_hq": 256}
HQ_RESOLUTIONS = tuple(2**k for k in range(11))


def check_attribute(attribute: str | None) -> str:
  """The CelebA attribute name, "Smiling" by default; unknown names raise with suggestions."""
  attribute = "Smiling" if attribute is None else attribute
  if attribute not in CELEBA_ATTRIBUTES:
    raise unknown_name("CelebA attribute", attribute, CELEBA_ATTRIBUTES)
  return attribute


def _open(name: str, split: str, data_dir: str | None, **kwargs):
  import tensorflow_datasets as tfds  # deferred: importing tfds costs about a second
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False, **kwargs)
  except Exception as e:  # tfds raises several types for "not prepared" and bad splits
    raise CfjaxInputError(
        f"could not open tfds dataset {name!r} split {split!r} in data_dir={data_dir!r}: {e}. "
        f"cfjax never downloads: prepare it once with `tfds build {name.split('/')[0]}` "
        "(TensorFlow needed for that step only) and pass its data_dir.") from e


def resize_center_crop(img: np.ndarray, size: int) -> np.ndarray:
  """DiME's CelebA transform: shorter side -> ``size`` (bilinear), centre crop; uint8 HWC."""
  h, w = img.shape[:2]
  if (h, w) == (size, size):
    return img
  # torchvision's Resize(int) truncates the long side and CenterCrop rounds the offsets.
  if h <= w:
    nh, nw = size, int(size * w / h)
  else:
    nh, nw = int(size * h / w), size
  pil = Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img)
  out = np.asarray(pil.resize((nw, nh), Image.BILINEAR))
  if out.ndim == 2:
    out = out[..., None]
  top = int(round((nh - size) / 2.0))
  left = int(round((nw - size) / 2.0))
  return out[top:top + size, left:left + size]


def _float_rgb(img: np.ndarray) -> np.ndarray:
  img = np.asarray(img)
  if img.ndim == 2:
    img = img[..., None]
  if img.shape[-1] == 1:
    img = np.repeat(img, 3, axis=-1)
  return img.astype(np.float32) / np.float32(255.0)


def mnist(split: str, *, data_dir=None, image_size=None, **_) -> tuple[Any, Callable]:
  """(source, preprocess) for MNIST: grey digits repeated to RGB, label int32 0..9."""
  size = image_size or DEFAULT_SIZE["mnist"]
  src = _open("mnist", split, data_dir)

  def preprocess(ex):
    img = np.asarray(ex["image"])
    if img.shape[0] != size:
      img = np.asarray(Image.fromarray(img.squeeze(-1)).resize((size, size), Image.BILINEAR))
    return {"image": _float_rgb(img), "label": np.int32(ex["label"]), "id": ex["id"]}

  return src, preprocess


def _attribute_vector(attrs: dict) -> np.ndarray:
  return np.array([int(bool(attrs[a])) for a in CELEBA_ATTRIBUTES], np.int32)


def celeb_a(split: str, *, data_dir=None, image_size=None, attribute=None, **_):
  """(source, preprocess) for CelebA: DiME crop, label = the chosen attribute as int32 0/1."""
  size = image_size or DEFAULT_SIZE["celeb_a"]
  target = CELEBA_ATTRIBUTES.index(check_attribute(attribute))
  src = _open("celeb_a", split, data_dir)

  def preprocess(ex):
    attrs = _attribute_vector(ex["attributes"])
    img = resize_center_crop(np.asarray(ex["image"]), size)
    return {"image": _float_rgb(img), "label": attrs[target], "attributes": attrs, "id": ex["id"]}

  return src, preprocess


def read_celebamask_attributes(path: str | os.PathLike) -> dict[int, np.ndarray]:
  """Parses CelebAMask-HQ-attribute-anno.txt: image number -> (40,) int32 0/1 in CELEBA order."""
  with open(path) as f:
    lines = f.read().split("\n")
  names = lines[1].split()
  order = [names.index(a) for a in CELEBA_ATTRIBUTES]
  table = {}
  for line in lines[2:]:
    parts = line.split()
    if not parts:
      continue
    values = np.array([int(v) for v in parts[1:]], np.int32)
    table[int(re.sub(r"\D", "", parts[0]))] = (values[order] > 0).astype(np.int32)
  return table


def celeb_a_hq(split: str, *, data_dir=None, image_size=None, attribute=None,
               attributes_file=None, resolution=None, **_):
  """(source, preprocess) for CelebA-HQ at ``resolution`` (default: image_size, else 256)."""
  size = image_size or DEFAULT_SIZE["celeb_a_hq"]
  resolution = int(resolution or (size if size in HQ_RESOLUTIONS else 256))
  if resolution not in HQ_RESOLUTIONS:
    raise CfjaxInputError(f"celeb_a_hq resolution must be a power of 2 up to 1024, got {resolution}.")
  target = CELEBA_ATTRIBUTES.index(check_attribute(attribute))
  table = read_celebamask_attributes(attributes_file) if attributes_file else None
  src = _open(f"celeb_a_hq/{resolution}", split, data_dir)
  missing = np.full(len(CELEBA_ATTRIBUTES), -1, np.int32)

  def preprocess(ex):
    attrs = missing
    if table is not None:
      fname = ex["image/filename"]
      fname = fname.decode() if isinstance(fname, bytes) else str(fname)
      digits = re.sub(r"\D", "", os.path.basename(fname))
      attrs = table.get(int(digits), missing) if digits else missing
    img = resize_center_crop(np.asarray(ex["image"]), size)
    return {"image": _float_rgb(img), "label": attrs[target], "attributes": attrs, "id": ex["id"]}

  return src, preprocess


LOADERS = {"mnist": mnist, "celeb_a": celeb_a, "celeb_a_hq": celeb_a_hq}
