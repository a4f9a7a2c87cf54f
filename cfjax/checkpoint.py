"""Network checkpoints: orbax for the arrays, a small JSON beside them for what they are.

A cfjax checkpoint is a directory::

    ckpt/
      cfjax.json    {"format": "cfjax-network", "version": 1, "config": {...}, "meta": {...},
                     "files": {relative path: sha256}}
      params/       an orbax StandardCheckpointer directory

``config`` is the network config of :mod:`cfjax.nets.registry` (so loading rebuilds the
architecture and checks every array against it), ``meta`` is free-form (training command, task,
diffusion settings, metrics). The sha256 of every orbax file is recorded so that a truncated or
corrupted checkpoint is reported as such instead of failing somewhere inside tensorstore.

Example:
  >>> from cfjax import checkpoint, nets
  >>> net = nets.build({"arch": "small_cnn", "num_outputs": 1, "image_size": 32})
  >>> checkpoint.save("/tmp/cfjax_doc_ckpt", net.config, net.params, meta={"task": "regression"}, overwrite=True)
  >>> net2, meta = checkpoint.load("/tmp/cfjax_doc_ckpt")
  >>> meta["task"]
  'regression'
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from cfjax._validate import CfjaxInputError
from cfjax.nets import registry

FORMAT = "cfjax-network"
VERSION = 1


class CheckpointError(CfjaxInputError):
  """A checkpoint is missing, corrupted, or does not match the requested architecture."""


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _file_hashes(root: Path) -> dict[str, str]:
  return {str(p.relative_to(root)): _sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _str_keys(tree):
  if isinstance(tree, dict):
    return {str(k): _str_keys(v) for k, v in tree.items()}
  return tree


def _like(restored, template):
  """Rebuilds ``restored`` (string keys) with the key types of ``template`` (e.g. int list indices)."""
  if isinstance(template, dict):
    return {k: _like(restored[str(k)], v) for k, v in template.items()}
  return restored


def _checkpointer():
  import orbax.checkpoint as ocp
  return ocp.StandardCheckpointer()


def save(path: str | os.PathLike, config: dict, params: Any, *, meta: dict | None = None,
         overwrite: bool = False) -> Path:
  """Saves ``params`` of the network ``config`` (and JSON-able ``meta``) to directory ``path``.

  The directory is written next to its final place and renamed into it, so an interrupted save
  never leaves a half-written checkpoint under the final name.
  """
  registry.check_params(config, params, source="parameters to save")
  host = jax.tree.map(lambda a: np.asarray(a), _str_keys(params))
  record = {"format": FORMAT, "version": VERSION, "config": config, "meta": meta or {}}
  return write_directory(path, host, record, arrays_dir="params", record_file="cfjax.json", overwrite=overwrite)


def write_directory(path, arrays, record: dict, *, arrays_dir: str, record_file: str, overwrite: bool = False,
                    json_default=None) -> Path:
  """Writes orbax ``arrays`` to ``path/arrays_dir`` and ``record`` (with the sha256 of every
  array file under ``"files"``) to ``path/record_file``, the one way cfjax writes a checkpoint.

  The directory is written next to its final place and renamed into it, so an interrupted save
  never leaves a half-written checkpoint under the final name.
  """
  path = Path(path).absolute()
  if path.exists() and not overwrite:
    raise CheckpointError(f"{path} exists; pass overwrite=True to replace it")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  try:
    ckptr = _checkpointer()
    ckptr.save(tmp / arrays_dir, arrays)
    ckptr.wait_until_finished()
    record = {**record, "files": _file_hashes(tmp / arrays_dir)}
    (tmp / record_file).write_text(json.dumps(record, indent=1, sort_keys=True, default=json_default))
    if path.exists():
      shutil.rmtree(path)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return path


def read_record(path: str | os.PathLike) -> dict:
  """Reads and checks ``cfjax.json`` of a checkpoint without touching the arrays."""
  path = Path(path).absolute()
  if not path.exists():
    raise CheckpointError(f"checkpoint {path} does not exist")
  rec_path = path / "cfjax.json"
  if not rec_path.is_file():
    hint = ""
    if path.is_file() and path.suffix in (".pt", ".pth"):
      hint = " It looks like a PyTorch file: convert it with `cfjax convert-checkpoint` first."
    raise CheckpointError(f"{path} is not a cfjax checkpoint (no cfjax.json).{hint}")
  try:
    record = json.loads(rec_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{rec_path} is corrupted: {e}") from e
  if record.get("format") != FORMAT or "config" not in record:
    raise CheckpointError(f"{rec_path} is not a {FORMAT} record")
  if record.get("version", 0) > VERSION:
    raise CheckpointError(f"{path} was written by a newer cfjax (format version {record['version']})")
  return record


def verify(path: str | os.PathLike) -> dict:
  """Checks every orbax file against its recorded sha256; returns the record."""
  path = Path(path).absolute()
  record = read_record(path)
  files = record.get("files", {})
  root = path / "params"
  missing = [f for f in files if not (root / f).is_file()]
  if missing:
    raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing[:5])}")
  bad = [f for f, h in files.items() if _sha256(root / f) != h]
  if bad:
    raise CheckpointError(
        f"checkpoint {path} is corrupted or truncated: checksum mismatch in {', '.join(bad[:5])}")
  return record


def load(path: str | os.PathLike, *, expect: dict | None = None):
  """Loads a checkpoint written by :func:`save`.

  Args:
    path: checkpoint directory.
    expect: optional subset of the config the caller needs (e.g. ``{"arch": "adm_unet"}``); a
      differing entry raises a CheckpointError naming it.

  Returns:
    ``(Network, meta)``.
  """
  path = Path(path).absolute()
  record = verify(path)
  config = record["config"]
  if expect:
    diff = {k: (v, config.get(k)) for k, v in expect.items() if config.get(k) != v}
    if diff:
      desc = ", ".join(f"{k}: expected {v!r}, checkpoint has {c!r}" for k, (v, c) in diff.items())
      raise CheckpointError(f"checkpoint {path} does not match: {desc}")
  template = registry.abstract_params(config)
  ckptr = _checkpointer()
  try:
    meta_tree = ckptr.metadata(path / "params")
    tree_meta = getattr(meta_tree, "item_metadata", meta_tree)
    tree_meta = getattr(tree_meta, "tree", tree_meta)
    stored = {jax.tree_util.keystr(p): tuple(getattr(l, "shape", ()))
              for p, l in jax.tree_util.tree_leaves_with_path(tree_meta)}
  except Exception as e:  # noqa: BLE001 - tensorstore raises many types
    raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
  expected = {jax.tree_util.keystr(p): tuple(l.shape)
              for p, l in jax.tree_util.tree_leaves_with_path(_str_keys(template))}
  if stored != expected:
    problems = [f"missing {k}" for k in sorted(set(expected) - set(stored))]
    problems += [f"unexpected {k}" for k in sorted(set(stored) - set(expected))]
    problems += [f"{k}: expected {expected[k]}, stored {stored[k]}"
                 for k in sorted(set(stored) & set(expected)) if stored[k] != expected[k]]
    raise CheckpointError(
        f"checkpoint {path} does not match architecture {config.get('arch')!r}:\n  "
        + "\n  ".join(problems[:30]))
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), _str_keys(template))
  try:
    restored = ckptr.restore(path / "params", abstract)
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"cannot restore checkpoint {path}: {e}") from e
  params = _like(restored, template)
  return registry.build(config, params=params), record.get("meta", {})
