"""Saving and loading attribute heads: orbax arrays beside a JSON record (names, families,
generator, ranges, metrics), written atomically and checked by hash when read back.

Example:
  >>> import numpy as np
  >>> from cfjax.attribution import heads_from_coefficients
  >>> h = heads_from_coefficients(np.eye(2), np.zeros(2), ["a", "b"], generator="toy")
  >>> p = save_heads(h, "/tmp/cfjax_doc_storage_heads", overwrite=True)
  >>> load_heads(p).names
  ('a', 'b')
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cfjax.attribution.heads import Heads

FORMAT = "cfjax-heads"
VERSION = 1

def save_heads(heads: Heads, path, *, overwrite: bool = False) -> Path:
  """Writes ``heads`` to directory ``path``: orbax arrays in ``arrays/`` and ``cfjax_heads.json``.

  The directory is written beside its final place and renamed into it (never half-written).
  """
  from cfjax.checkpoint import write_directory
  arrays = {"kernel": np.asarray(heads.params["kernel"]), "bias": np.asarray(heads.params["bias"]),
            "diam": np.asarray(heads.diam), "strength": np.asarray(heads.strength)}
  record = {"format": FORMAT, "version": VERSION, "names": list(heads.names),
            "families": list(heads.families), "latent_shape": list(heads.latent_shape),
            "generator": heads.generator, "metrics": heads.metrics, "info": heads.info,
            "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()}}
  return write_directory(path, arrays, record, arrays_dir="arrays", record_file="cfjax_heads.json",
                         overwrite=overwrite, json_default=_json_default)


def _json_default(v):
  if isinstance(v, (np.floating, np.integer, np.bool_)):
    return v.item()
  raise TypeError(f"not JSON serialisable: {type(v)}")


def load_heads(path, *, generator=None) -> Heads:
  """Reads heads written by :meth:`Heads.save`; with ``generator``, refuses heads of another one.

  Example:
    >>> from cfjax.attribution import heads_from_coefficients
    >>> h = heads_from_coefficients(np.eye(2), np.zeros(2), ["a", "b"], generator="toy")
    >>> _ = h.save("/tmp/cfjax_doc_heads", overwrite=True)
    >>> load_heads("/tmp/cfjax_doc_heads", generator="toy").names
    ('a', 'b')
  """
  from cfjax.checkpoint import CheckpointError, _checkpointer, _sha256
  path = Path(path).absolute()
  rec_path = path / "cfjax_heads.json"
  if not rec_path.is_file():
    raise CheckpointError(f"{path} holds no attribute heads (no cfjax_heads.json)")
  try:
    rec = json.loads(rec_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{rec_path} is corrupted: {e}") from e
  if rec.get("format") != FORMAT or rec.get("version", 0) > VERSION:
    raise CheckpointError(f"{rec_path} is not a {FORMAT} record of version <= {VERSION}")
  bad = [f for f, h in rec["files"].items()
         if not (path / "arrays" / f).is_file() or _sha256(path / "arrays" / f) != h]
  if bad:
    raise CheckpointError(f"heads {path} are corrupted or incomplete: {', '.join(bad[:5])}")
  abstract = {k: jax.ShapeDtypeStruct(tuple(s), np.dtype(d)) for k, (s, d) in rec["arrays"].items()}
  try:
    arr = _checkpointer().restore(path / "arrays", abstract)
  except Exception as e:  # noqa: BLE001 - tensorstore raises many types
    raise CheckpointError(f"cannot restore heads {path}: {e}") from e
  heads = Heads({"kernel": jnp.asarray(arr["kernel"]), "bias": jnp.asarray(arr["bias"])},
                tuple(rec["names"]), tuple(rec["families"]), tuple(rec["latent_shape"]), rec["generator"],
                np.asarray(arr["diam"]), np.asarray(arr["strength"]), rec.get("metrics", {}), rec.get("info", {}))
  if generator is not None:
    heads.check_generator(generator)
  return heads
