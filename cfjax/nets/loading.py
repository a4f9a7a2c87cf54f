"""The one place that finds and loads models: predictors, diffusion models (generators are loaded
by :func:`cfjax.generators.load_generator` on top of :func:`resolve_checkpoint`).

Every loader accepts what a user has in hand: a bundled name (``"squares_ddpm"``), a cfjax
checkpoint directory (``cfjax.json`` + ``params/``, as ``cfjax convert-checkpoint`` writes), or the
run directory of ``cfjax train-*`` (whose final model is ``RUN/model``).

Example:
  >>> import cfjax
  >>> ddpm = cfjax.load_diffusion("squares_ddpm")
  >>> ddpm.steps, ddpm.beta_schedule, ddpm.schedule("50").num_timesteps
  (1000, 'linear', 50)
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from cfjax._validate import CfjaxInputError


def resolve_checkpoint(name_or_path) -> Path:
  """The checkpoint directory meant by a bundled name, a checkpoint directory or a run directory."""
  from cfjax.assets import model_path
  p = Path(name_or_path)
  if p.exists():
    if not (p / "cfjax.json").is_file() and (p / "model" / "cfjax.json").is_file():
      return p / "model"  # a `cfjax train-*` run directory
    return p
  if "/" not in str(name_or_path) and not str(name_or_path).startswith("."):
    return model_path(str(name_or_path))
  raise CfjaxInputError(f"checkpoint {name_or_path} does not exist")


def load_network(name_or_path, *, kind: str | None = None, expect: dict | None = None):
  """``(Network, meta)`` of a checkpoint; ``kind`` checks ``meta["kind"]`` where it is recorded."""
  from cfjax import checkpoint
  path = resolve_checkpoint(name_or_path)
  net, meta = checkpoint.load(path, expect=expect)
  if kind is not None and meta.get("kind", kind) != kind:
    raise CfjaxInputError(f"{name_or_path} holds a {meta['kind']} model, not a {kind}")
  return net, meta


def load_predictor(name_or_path):
  """A :class:`cfjax.nets.Predictor` from a bundled name, checkpoint or training run directory.

  Example:
    >>> import cfjax
    >>> f = cfjax.load_predictor("squares_regressor_rho0")
    >>> f.task
    'regression'
  """
  from cfjax.nets.predictors import Predictor
  net, meta = load_network(name_or_path, kind="predictor")
  return Predictor(net, meta)


class DiffusionModel(NamedTuple):
  """An epsilon-predicting network with the noise schedule it was trained with.

  ``net.apply(params, x, t)`` takes images in [-1, 1]; ``schedule(respacing)`` gives the
  (re-spaced) :class:`cfjax.diffusion.Schedule`.
  """

  net: object            # cfjax.nets.Network
  steps: int             # diffusion steps of training
  beta_schedule: str     # "linear" or "cosine"
  meta: dict = {}

  @property
  def image_size(self) -> int | None:
    return self.net.config.get("image_size")

  @property
  def variance(self) -> str:
    """"learned_range" for a 6-channel output (guided-diffusion's learn_sigma), else "fixed_small"."""
    return "fixed_small" if self.net.config.get("out_channels") == 3 else "learned_range"

  def respacing(self, respacing: str | None = None) -> str:
    """``respacing``, or the default: 50 steps for a 1000-step model, else 25."""
    return str(respacing) if respacing is not None else str(50 if self.steps >= 1000 else 25)

  def schedule(self, respacing: str | None = None):
    """The schedule re-spaced as ``respacing`` (default: see :meth:`respacing`)."""
    from cfjax.diffusion import make_schedule
    return make_schedule(self.steps, self.beta_schedule, self.respacing(respacing))


def load_diffusion(name_or_path) -> DiffusionModel:
  """A bundled, converted or trained diffusion model (``cfjax train-diffusion`` run dirs too)."""
  net, meta = load_network(name_or_path, kind="diffusion", expect={"arch": "adm_unet"})
  if "diffusion" not in meta:
    raise CfjaxInputError(f"{name_or_path} has no diffusion settings in its metadata (steps, schedule)")
  d = meta["diffusion"]
  return DiffusionModel(net, int(d["steps"]), d.get("schedule", "linear"), meta)
