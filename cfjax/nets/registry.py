"""One registry for every network family: a name maps to a Flax NNX module class.

cfjax uses NNX functionally: a network is described by a JSON-able ``config`` (``{"arch": name,
**constructor kwargs}``), its parameters are a plain nested dict of arrays (``State.to_pure_dict()``),
and ``apply(params, *args)`` merges them into the module's graph inside whatever transformation
the caller uses (jit, grad, vmap, scan, checkpoint). Methods only ever see ``apply`` and ``params``.

Example:
  >>> import jax.numpy as jnp
  >>> from cfjax import nets
  >>> net = nets.build({"arch": "small_cnn", "num_outputs": 1, "image_size": 32})
  >>> net.apply(net.params, jnp.zeros((2, 32, 32, 3))).shape
  (2,)
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from flax import nnx

from cfjax._registry import Registry
from cfjax._validate import CfjaxInputError

_REGISTRY = Registry("network architecture")


class Network(NamedTuple):
  """A network as cfjax methods see it: a pure function, its parameters and its config."""

  apply: Callable[..., Any]
  params: Any
  config: dict


def register(arch: str):
  """Class decorator: registers an NNX module under ``arch``; its kwargs are the config."""
  return _REGISTRY.register(arch)


def known_archs() -> list[str]:
  return _REGISTRY.names()


def _split_config(config: dict) -> tuple[type, dict]:
  if not isinstance(config, dict) or "arch" not in config:
    raise CfjaxInputError(f"a network config must be a dict with an 'arch' entry, got {config!r}")
  kwargs = {k: v for k, v in config.items() if k != "arch"}
  return _REGISTRY.get(config["arch"]), kwargs


@functools.lru_cache(maxsize=64)
def _graph_and_abstract(config_key: str):
  import json
  config = json.loads(config_key)
  cls, kwargs = _split_config(config)
  try:
    abstract_model = nnx.eval_shape(lambda: cls(**kwargs, rngs=nnx.Rngs(0)))
  except TypeError as e:
    raise CfjaxInputError(f"bad options for network {config['arch']!r}: {e}") from e
  graphdef, abstract_state = nnx.split(abstract_model)
  return graphdef, abstract_state


def _key(config: dict) -> str:
  import json
  return json.dumps(config, sort_keys=True)


# Keyword arguments of network calls that select what is computed rather than carry arrays.
_STATIC_KWARGS = ("return_activations",)


def make_apply(config: dict, method: str | None = None) -> Callable[..., Any]:
  """Pure ``apply(params, *args, **kwargs)`` for a config; params are a pure dict.

  ``method`` names another method of the module to call instead of ``__call__`` (e.g. a VAE's
  ``"encode"`` and ``"decode"``).
  """
  graphdef, abstract_state = _graph_and_abstract(_key(config))

  def apply(params, *args, **kwargs):
    state = jax.tree.map(lambda a: a, abstract_state)  # fresh container, same structure
    nnx.replace_by_pure_dict(state, params)
    module = nnx.merge(graphdef, state)
    return (module if method is None else getattr(module, method))(*args, **kwargs)

  # A jitted function is traced once per input shape and reused wherever it is called inside
  # other transformations: an unrolled diffusion chain of K network calls (and its gradient)
  # traces the network once, not K times. XLA inlines the call, so the program is unchanged.
  return jax.jit(apply, static_argnames=_STATIC_KWARGS)


def abstract_params(config: dict):
  """Parameter tree of ShapeDtypeStructs for ``config`` (no computation, no compilation)."""
  _, abstract_state = _graph_and_abstract(_key(config))
  return nnx.to_pure_dict(abstract_state)


def init_params(config: dict, seed: int = 0):
  """Initialises parameters with a single jitted call (eager NNX init compiles op by op)."""
  cls, kwargs = _split_config(config)

  @jax.jit
  def _init():
    return nnx.to_pure_dict(nnx.split(cls(**kwargs, rngs=nnx.Rngs(seed)))[1])

  return _init()


def build(config: dict, *, seed: int = 0, params=None) -> Network:
  """Builds a registered network: ``Network(apply, params, config)``.

  Args:
    config: ``{"arch": name, **kwargs}``.
    seed: initialisation seed when ``params`` is None.
    params: existing parameters (checked against the config's shapes).
  """
  config = copy.deepcopy(config)
  if params is None:
    params = init_params(config, seed)
  else:
    check_params(config, params)
  return Network(make_apply(config), params, config)


def check_params(config: dict, params, *, source: str = "parameters") -> None:
  """Raises a CfjaxInputError listing every missing, extra or mis-shaped entry."""
  expected = abstract_params(config)
  exp = {jax.tree_util.keystr(p): l for p, l in jax.tree_util.tree_leaves_with_path(expected)}
  got = {jax.tree_util.keystr(p): l for p, l in jax.tree_util.tree_leaves_with_path(params)}
  problems = []
  for k in sorted(set(exp) - set(got)):
    problems.append(f"missing {k} {tuple(exp[k].shape)}")
  for k in sorted(set(got) - set(exp)):
    problems.append(f"unexpected {k} {tuple(np.shape(got[k]))}")
  for k in sorted(set(exp) & set(got)):
    if tuple(np.shape(got[k])) != tuple(exp[k].shape):
      problems.append(f"{k}: expected shape {tuple(exp[k].shape)}, got {tuple(np.shape(got[k]))}")
  if problems:
    shown = "\n  ".join(problems[:30])
    more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
    raise CfjaxInputError(
        f"{source} do not match architecture {config.get('arch')!r} "
        f"({len(problems)} problems):\n  {shown}{more}")
