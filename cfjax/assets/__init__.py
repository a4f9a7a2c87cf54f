"""Bundled default models (small checkpoints produced by cfjax's own training commands)."""

from pathlib import Path

MODELS = Path(__file__).resolve().parent / "models"


def model_path(name: str) -> Path:
  """Path of a bundled checkpoint, e.g. ``model_path("squares_regressor_rho0")``."""
  from cfjax._validate import unknown_name
  p = MODELS / name
  if not (p / "cfjax.json").is_file():
    known = [d.name for d in MODELS.iterdir() if (d / "cfjax.json").is_file()] if MODELS.is_dir() else []
    raise unknown_name("bundled model", name, known)
  return p
