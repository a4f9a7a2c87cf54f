"""One grain pipeline for every dataset: id, shuffle, epochs, preprocess, batch.

Any random-access source (``len`` and ``[i]``, e.g. a ``tfds.data_source`` or a testbed
:class:`~cfjax.data.sources.ChunkedSource`) becomes batches of numpy arrays. The ``id`` of an
example is its index in the source, attached *before* shuffling, so it is stable across
shuffles and epochs: the engine derives per-image keys from it and uses it to resume.
"""

from __future__ import annotations

from typing import Any, Callable

import grain
import numpy as np

from cfjax._validate import CfjaxInputError

Example = dict[str, Any]


def _with_id(index: int, example: Example) -> Example:
  out = dict(example)
  # A source that stores its ids (the tfds testbeds) keeps them.
  out["id"] = np.int64(example.get("id", index))
  return out


def batches(
    src,
    preprocess: Callable[[Example], Example],
    *,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int = 0,
    num_epochs: int | None = 1,
    drop_remainder: bool = False,
) -> grain.MapDataset:
  """Builds the batched grain dataset over ``src``.

  Args:
    src: random-access source of example dicts.
    preprocess: example dict -> example dict of numpy arrays (``image``, ``label``, ...);
      it must not depend on randomness, so a given ``id`` always gives the same arrays.
    batch_size: examples per batch.
    shuffle: shuffle globally, with a different order every epoch.
    seed: shuffle seed.
    num_epochs: passes over the data; None repeats forever.
    drop_remainder: drop a final batch smaller than ``batch_size``.

  Returns:
    A ``grain.MapDataset`` of batches: iterate it, or index it (``ds[k]`` is batch ``k``).

  Example:
    >>> import numpy as np
    >>> src = [{"image": np.zeros((2, 2, 3), np.float32), "label": np.int32(i)} for i in range(5)]
    >>> ds = batches(src, lambda e: e, batch_size=2, shuffle=False)
    >>> [b["id"].tolist() for b in ds]
    [[0, 1], [2, 3], [4]]
  """
  if int(batch_size) < 1:
    raise CfjaxInputError(f"batch_size must be a positive integer, got {batch_size!r}.")
  if num_epochs is not None and int(num_epochs) < 1:
    raise CfjaxInputError(f"num_epochs must be a positive integer or None, got {num_epochs!r}.")
  if len(src) == 0:
    raise CfjaxInputError("the dataset split is empty.")
  ds = grain.MapDataset.source(src).map_with_index(_with_id)
  if shuffle:
    # Shuffle before repeat: grain then shuffles each epoch differently without mixing epochs.
    ds = ds.shuffle(seed=int(seed) % 2**32)
  if num_epochs is None or int(num_epochs) > 1:
    ds = ds.repeat(None if num_epochs is None else int(num_epochs))
  ds = ds.map(preprocess)
  return ds.batch(int(batch_size), drop_remainder=bool(drop_remainder))
