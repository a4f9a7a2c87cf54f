"""A resumable, crash-safe result store: shards of finished CEs plus an atomically written manifest.

Layout of an output directory::

    run/
      manifest.json        {"format": "cfjax-run", "fingerprint": ..., "settings": {...},
                            "shards": ["shards/p0-000000.npz", ...], "done_ids": count}
      shards/p0-000000.npz  one file per flush: ``id`` plus every per-example result array

Every shard is written to a temporary name and renamed into place, then the manifest is rewritten
the same way, so a run killed at any instant (even SIGKILL) leaves a consistent directory: a
shard that was renamed before the manifest caught up is adopted at the next start (its CEs were
finished and are not recomputed); a half-written temporary file is ignored and removed.
Shard files are plain ``.npz`` read with ``allow_pickle=False``.

Example:
  >>> import numpy as np, tempfile
  >>> w = ResultWriter(tempfile.mkdtemp(), settings={"method": "acre"})
  >>> w.write({"id": np.array([3, 5]), "success": np.array([True, False])})
  >>> sorted(w.done_ids())
  [3, 5]
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Mapping

import numpy as np

from cfjax._validate import CfjaxInputError

FORMAT = "cfjax-run"
_SHARD = re.compile(r"^p(\d+)-(\d{6})\.npz$")


def fingerprint(settings: dict) -> str:
  return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_write_bytes(path: Path, write):
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  with open(tmp, "wb") as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class ResultWriter:
  """Appends per-example results to ``out_dir`` and remembers which ids are finished.

  Args:
    out_dir: the run directory (created if missing).
    settings: everything that defines the run (method, its settings, models, data, seed); a
      directory holding a run with different settings is refused.
    process_index: writer id for multi-process runs (each process writes its own shards and
      manifest, ``manifest-p{i}.json`` for i > 0).
  """

  def __init__(self, out_dir, settings: dict, *, process_index: int = 0):
    self.dir = Path(out_dir)
    self.settings = json.loads(json.dumps(settings, default=str))
    self.fp = fingerprint(self.settings)
    self.process_index = process_index
    self.shard_dir = self.dir / "shards"
    name = "manifest.json" if process_index == 0 else f"manifest-p{process_index}.json"
    self.manifest_path = self.dir / name
    self.shard_dir.mkdir(parents=True, exist_ok=True)
    for tmp in self.shard_dir.glob(".*.tmp*"):
      tmp.unlink(missing_ok=True)
    self.shards: list[str] = []
    self._ids: set[int] = set()
    self._load_or_create()

  # -- manifest ------------------------------------------------------------------------------
  def _load_or_create(self):
    for other in self.dir.glob("manifest*.json"):
      try:
        rec = json.loads(other.read_text())
      except json.JSONDecodeError as e:
        raise CfjaxInputError(f"{other} is corrupted ({e}); move the directory away or delete it") from e
      if rec.get("format") != FORMAT:
        raise CfjaxInputError(f"{self.dir} holds something that is not a cfjax run ({other.name})")
      if rec.get("fingerprint") != self.fp:
        diff = sorted(k for k in set(rec.get("settings", {})) | set(self.settings)
                      if rec.get("settings", {}).get(k) != self.settings.get(k))
        raise CfjaxInputError(
            f"{self.dir} holds a different run (settings differ in: {', '.join(diff) or '?'}); "
            "use a new --out directory, or the same settings to resume")
    if self.manifest_path.exists():
      rec = json.loads(self.manifest_path.read_text())
      self.shards = list(rec["shards"])
    mine = re.compile(rf"^p{self.process_index}-(\d{{6}})\.npz$")
    on_disk = sorted(p.name for p in self.shard_dir.iterdir() if mine.match(p.name))
    listed = {Path(s).name for s in self.shards}
    for name in on_disk:  # renamed into place before the manifest caught up: adopt it
      if name not in listed:
        self.shards.append(f"shards/{name}")
    for s in self.shards:
      with np.load(self.dir / s, allow_pickle=False) as z:
        self._ids.update(int(i) for i in z["id"])
    self._save_manifest()

  def _save_manifest(self):
    rec = {"format": FORMAT, "fingerprint": self.fp, "settings": self.settings,
           "shards": self.shards, "num_done": len(self._ids)}
    data = json.dumps(rec, indent=1).encode()
    _atomic_write_bytes(self.manifest_path, lambda f: f.write(data))

  # -- API -----------------------------------------------------------------------------------
  def done_ids(self) -> set[int]:
    return set(self._ids)

  def write(self, results: dict[str, np.ndarray]) -> None:
    """Writes one shard of finished examples (``results["id"]`` names them) and commits it."""
    ids = np.asarray(results["id"]).astype(np.int64)
    if ids.size == 0:
      return
    dup = set(ids.tolist()) & self._ids
    if dup:
      raise RuntimeError(f"ids {sorted(dup)[:5]} written twice")  # an engine bug, not user input
    index = len(self.shards)
    while (self.shard_dir / f"p{self.process_index}-{index:06d}.npz").exists():
      index += 1
    name = f"p{self.process_index}-{index:06d}.npz"
    arrays = {k: np.asarray(v) for k, v in results.items()}
    _atomic_write_bytes(self.shard_dir / name, lambda f: np.savez(f, **arrays))
    self.shards.append(f"shards/{name}")
    self._ids.update(ids.tolist())
    self._save_manifest()


def read_results(out_dir) -> dict[str, np.ndarray]:
  """All results of a run directory (every process's shards), sorted by id."""
  out_dir = Path(out_dir)
  shards = []
  for m in sorted(out_dir.glob("manifest*.json")):
    shards += json.loads(m.read_text())["shards"]
  if not shards:
    return {}
  parts = []
  for s in shards:
    with np.load(out_dir / s, allow_pickle=False) as z:
      parts.append({k: z[k] for k in z.files})
  keys = set.intersection(*(set(p) for p in parts))
  out = {k: np.concatenate([p[k] for p in parts]) for k in keys}
  order = np.argsort(out["id"], kind="stable")
  return {k: v[order] for k, v in out.items()}


def load_results(results) -> dict[str, np.ndarray]:
  """Results of a method as arrays, from what a user has in hand: a dict, a ``results.npz`` file,
  a job directory holding one, or an engine run directory (``manifest.json`` + shards)."""
  if isinstance(results, Mapping):
    return {k: np.asarray(v) for k, v in results.items()}
  path = Path(results)
  if path.is_dir() and (path / "results.npz").is_file():
    path = path / "results.npz"
  if path.is_file():
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  if path.is_dir() and any(path.glob("manifest*.json")):
    return read_results(path)
  raise CfjaxInputError(f"{results} is neither a results.npz file, a job directory nor a run directory.")
