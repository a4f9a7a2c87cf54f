"""cfjax: counterfactual explanations of image models in JAX.

The public API is flat::

    import cfjax
    f = cfjax.load_predictor("squares_regressor_rho0")     # bundled name, checkpoint or run dir
    ddpm = cfjax.load_diffusion("squares_ddpm")
    method = cfjax.methods.acre(predictor=f, diffusion=ddpm)
    res = cfjax.explain(method, images, targets, key=jax.random.key(0))

Layers (bottom to top): ``diffusion`` (network-free DDPM maths), ``nets`` (Flax networks, their
loading and PyTorch importers), ``generators`` (the latent interface), ``methods`` (explainers as
pure per-example functions), ``engine`` (compiled, continuously batched, sharded runs),
``pipeline`` (validation, writer, jobs, figures), ``metrics`` (streaming counterfactual metrics), ``attribution`` (latent attribute heads,
importance, InterFaceGAN directions), ``data`` (testbeds and tfds loaders), ``training``.
Submodules load on first use, so ``import cfjax`` (and ``cfjax --help``) stays fast.
"""

from __future__ import annotations

import importlib

from cfjax._validate import CfjaxInputError  # noqa: F401

__version__ = "0.1.0"

_LAZY = {
    "load_predictor": ("cfjax.nets.loading", "load_predictor"),
    "load_diffusion": ("cfjax.nets.loading", "load_diffusion"),
    "DiffusionModel": ("cfjax.nets.loading", "DiffusionModel"),
    "load_generator": ("cfjax.generators", "load_generator"),
    "Generator": ("cfjax.generators", "Generator"),
    "explain": ("cfjax.pipeline.explain", "explain"),
    "make_targets": ("cfjax.methods.targets", "make_targets"),
    "fit_heads": ("cfjax.attribution", "fit_heads"),
    "load_heads": ("cfjax.attribution", "load_heads"),
}
_SUBMODULES = ("attribution", "data", "diffusion", "engine", "generators", "methods", "metrics", "nets",
               "pipeline", "training", "checkpoint", "viz")

__all__ = ["CfjaxInputError", *_LAZY, *_SUBMODULES]


def __getattr__(name):
  if name in _LAZY:
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
  elif name in _SUBMODULES:
    value = importlib.import_module(f"cfjax.{name}")
  else:
    raise AttributeError(f"module 'cfjax' has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__():
  return sorted(__all__)
