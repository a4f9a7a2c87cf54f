"""Explainers as NamedTuples of pure per-example functions (see :mod:`cfjax.methods.base`).

Each registered method has a factory here, ``cfjax.methods.NAME(**models, **options)``:
``ace``, ``acre`` (pixel space, with a diffusion model), ``cf_attack``, ``diffae_re`` and ``interfacegan``
(latent space, with a generator). ``make(name, ...)`` builds one by its registered name.

Example:
  >>> from cfjax import methods
  >>> methods.known_methods()
  ['ace', 'acre', 'cf-attack', 'diffae-re', 'interfacegan']
"""

from cfjax.methods.base import (  # noqa: F401
    OPTIONAL_RESULTS, REQUIRED_RESULTS, Method, MethodConfig, Status, factory, known_methods, make,
    method_spec, option, register_method)
from cfjax.methods.optim import make_optimizer, sign, sign_pgd  # noqa: F401
from cfjax.methods.search import Search, SearchState, init_search, search_step  # noqa: F401
from cfjax.methods import ace as _ace, cf_attack as _cf_attack, diffae_re as _diffae_re  # noqa: F401  (registration)
from cfjax.methods import interfacegan as _interfacegan  # noqa: F401  (registration)
from cfjax.methods.ace import ace_filter, generate_mask, repaint  # noqa: F401
from cfjax.methods.targets import make_targets  # noqa: F401

ace = factory("ace")
acre = factory("acre")
cf_attack = factory("cf-attack")
interfacegan = factory("interfacegan")
diffae_re = factory("diffae-re")
