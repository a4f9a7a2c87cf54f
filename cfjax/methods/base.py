"""The method interface: every explainer is a NamedTuple of pure per-example functions.

This is optax's idea applied to explainers. A method is built by a factory (``ace(...)``,
``acre(...)``, ...), found by name in a registry, and run by :mod:`cfjax.engine` (or by hand):

* ``init(params, x, target, key) -> state`` for ONE example (x is HWC in [0, 1]);
* ``step(params, state) -> state`` one optimisation iteration; a no-op once ``done``;
* ``done(state) -> bool`` (reached the target, ran out of iterations, or hit non-finite values);
* ``result(params, state) -> dict`` the per-example outputs (counterfactual, mask, ...).

``params`` is the pytree of model parameters the functions need (passed explicitly, never closed
over, so compiled programs take them as arguments instead of baking them in as constants).
Nothing in these functions raises or branches on values in Python: write them per example and
``vmap`` outside.

Example:
  >>> import jax, jax.numpy as jnp
  >>> def run(method, x, target, key):  # the whole loop, by hand, for one batch
  ...   init = jax.vmap(method.init, in_axes=(None, 0, 0, 0))
  ...   step = jax.jit(jax.vmap(method.step, in_axes=(None, 0)))
  ...   s = init(method.params, x, target, jax.random.split(key, len(x)))
  ...   for _ in range(method.max_steps):
  ...     s = step(method.params, s)
  ...   return jax.vmap(method.result, in_axes=(None, 0))(method.params, s)
"""

from __future__ import annotations

import enum
from typing import Any, Callable, NamedTuple

from cfjax._validate import unknown_name


class Status(enum.IntEnum):
  """Per-example outcome, returned as an int field (never raised inside jit)."""

  SUCCESS = 0       # the counterfactual reaches the target
  NOT_REACHED = 1   # ran out of iterations, or the final image misses the target
  NONFINITE = 2     # a NaN/inf appeared in the loss or gradient; the last finite iterate is kept


class Method(NamedTuple):
  """An explainer as pure per-example functions plus the parameters they take."""

  init: Callable[..., Any]
  step: Callable[..., Any]
  done: Callable[[Any], Any]
  result: Callable[..., dict]
  params: Any
  max_steps: int
  name: str
  settings: dict
  target_kind: str  # "class" (int32 targets) or "value" (float32 targets)


_METHODS: dict[str, Callable[..., Method]] = {}


def register_method(name: str):
  """Decorator registering a method factory under ``name``."""

  def deco(factory):
    if name in _METHODS:
      raise ValueError(f"method {name!r} registered twice")
    _METHODS[name] = factory
    return factory

  return deco


def known_methods() -> list[str]:
  return sorted(_METHODS)


def make(name: str, **kwargs) -> Method:
  """Builds a registered method by name, e.g. ``make("acre", predictor=..., diffusion=...)``."""
  if name not in _METHODS:
    raise unknown_name("method", name, _METHODS)
  return _METHODS[name](**kwargs)
