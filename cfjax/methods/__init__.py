"""Explainers as NamedTuples of pure per-example functions (see :mod:`cfjax.methods.base`).

Example:
  >>> from cfjax import methods
  >>> methods.known_methods()
  ['ace', 'acre']
"""

from cfjax.methods.base import Method, Status, known_methods, make, register_method  # noqa: F401
from cfjax.methods.optim import make_optimizer, sign, sign_pgd  # noqa: F401
from cfjax.methods.ace import (  # noqa: F401
    DiffusionCEState, ace, ace_filter, acre, diffusion_counterfactual, generate_mask, repaint)
from cfjax.methods.targets import make_targets  # noqa: F401
