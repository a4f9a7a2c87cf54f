"""Random-access sources over procedurally generated examples.

A testbed split is generated in fixed-size chunks, each from its own seed sequence
``(seed, split_code, chunk_index)``. Example ``i`` therefore depends only on the seed, the
split and ``i``: ``squares(100)`` is a prefix of ``squares(16000)``, and a loader can read any
example without generating those before it. grain reads a source element by element, so a
generated chunk is cached (as uint8 images, which is what the published PNG datasets store).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

CHUNK = 256

ChunkFn = Callable[[int], dict[str, np.ndarray]]


def chunk_rng(seed: int, split_code: int, chunk: int) -> np.random.Generator:
  """The generator for one chunk; independent streams per (seed, split, chunk)."""
  return np.random.default_rng([int(seed), int(split_code), int(chunk)])


def gather(make_chunk: ChunkFn, n: int, chunk_size: int = CHUNK) -> dict[str, np.ndarray]:
  """Concatenates the first ``n`` examples of a chunked generator into arrays."""
  if n <= 0:
    raise ValueError(f"n must be positive, got {n}")
  parts = [make_chunk(c) for c in range((n + chunk_size - 1) // chunk_size)]
  return {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}


class ChunkedSource:
  """A grain/tfds-style random-access source (``len`` and ``[i]``) over generated chunks.

  Args:
    make_chunk: ``chunk_index -> dict of arrays`` with ``chunk_size`` leading rows.
    n: number of examples in the split.
    chunk_size: rows per chunk.

  Example:
    >>> import numpy as np
    >>> src = ChunkedSource(lambda c: {"v": np.arange(4) + 4 * c}, n=6, chunk_size=4)
    >>> len(src), int(src[5]["v"])
    (6, 5)
  """

  def __init__(self, make_chunk: ChunkFn, n: int, chunk_size: int = CHUNK):
    self._make_chunk = make_chunk
    self._n = int(n)
    self._chunk_size = chunk_size
    self._cache: dict[int, dict[str, np.ndarray]] = {}

  def __len__(self) -> int:
    return self._n

  def _chunk(self, c: int) -> dict[str, np.ndarray]:
    if c not in self._cache:
      self._cache[c] = self._make_chunk(c)
    return self._cache[c]

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    i = int(i)
    if i < 0:
      i += self._n
    if not 0 <= i < self._n:
      raise IndexError(f"index {i} out of range for a source of {self._n} examples")
    chunk = self._chunk(i // self._chunk_size)
    j = i % self._chunk_size
    return {k: v[j] for k, v in chunk.items()}

  def __repr__(self) -> str:
    return f"ChunkedSource(n={self._n}, chunk_size={self._chunk_size})"


class ArraySource:
  """A random-access source over a dict of equal-length arrays (e.g. a validation grid)."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self._arrays = arrays
    self._n = len(next(iter(arrays.values())))

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {k: v[int(i)] for k, v in self._arrays.items()}
