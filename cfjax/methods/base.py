"""The method interface: every explainer is a NamedTuple of pure per-example functions.

This is optax's idea applied to explainers. A method is built by a factory
(``cfjax.methods.acre(...)``, ``cfjax.methods.cf_attack(...)``, ...), found by name in a registry,
and run by :mod:`cfjax.engine` (or by hand):

* ``init(params, x, target, key) -> state`` for ONE example (x is an HWC image in [0, 1], or a
  latent code for latent methods);
* ``step(params, state) -> state`` one optimisation iteration; a no-op once ``done``;
* ``done(state) -> bool`` (reached the target, ran out of iterations, or hit non-finite values);
* ``result(params, state) -> dict`` the per-example outputs (see :data:`REQUIRED_RESULTS`).

``params`` is the pytree of model parameters the functions need (passed explicitly, never closed
over, so compiled programs take them as arguments instead of baking them in as constants).
Nothing in these functions raises or branches on values in Python: write them per example and
``vmap`` outside. ``validate(inputs, targets)`` runs at the edge, on numpy arrays, before anything
compiles.

Each registered method declares its options in one frozen :class:`MethodConfig` dataclass (each
field made by :func:`option`, with a default, a type and a help text) and the models it needs
(``predictor``, ``diffusion``, ``generator``). The command line and the explain job are generated
from that declaration: adding a method is one file with a config class and a builder, registered
with :func:`register_method`.

Example:
  >>> from cfjax import methods
  >>> [o.name for o in methods.method_spec("acre").options()][:3]
  ['tau', 'respacing', 'iterations']
  >>> methods.method_spec("cf-attack").needs
  ('predictor', 'generator')
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Callable, ClassVar, NamedTuple

import numpy as np

from cfjax._registry import Registry
from cfjax._validate import CfjaxInputError, unknown_name

# The result contract: every method's ``result`` returns these keys (per example) ...
REQUIRED_RESULTS = ("counterfactual", "prediction", "success", "status", "iterations")
# ... and may return these, which figures and summaries use where present. ``latent`` (and the
# ``trajectory`` of it) is what the search optimises; a method that optimises only a leading part of
# its generator's latent returns the rest, held fixed, as ``latent_fixed``, so that
# ``concat(latent, latent_fixed)`` is what the generator decodes.
OPTIONAL_RESULTS = ("mask", "pre_explanation", "pre_prediction", "latent", "latent_original",
                    "latent_fixed", "reconstruction", "trajectory", "trajectory_length")


class Status(enum.IntEnum):
  """Per-example outcome, returned as an int field (never raised inside jit)."""

  SUCCESS = 0       # the counterfactual reaches the target
  NOT_REACHED = 1   # ran out of iterations, or the final image misses the target
  NONFINITE = 2     # a NaN/inf appeared in the loss or gradient; the last finite iterate is kept


def _no_validation(inputs, targets):
  return np.asarray(inputs, np.float32), np.asarray(targets)


class Method(NamedTuple):
  """An explainer as pure per-example functions plus the parameters they take.

  ``validate(inputs, targets) -> (inputs, targets)`` checks and converts a whole batch on the host
  (raising :class:`~cfjax.CfjaxInputError`); the engine and :func:`cfjax.explain` call it before
  compiling anything.

  ``steps_per_call`` is how many steps one compiled engine call runs unless the caller says
  otherwise. The engine unrolls them, so compile time grows with it: a method whose step is a
  whole diffusion chain with its gradient takes 1 (its step costs far more than the host's check
  between calls), a method with cheap steps more.
  """

  init: Callable[..., Any]
  step: Callable[..., Any]
  done: Callable[[Any], Any]
  result: Callable[..., dict]
  params: Any
  max_steps: int
  name: str
  settings: dict
  validate: Callable[[Any, Any], tuple] = _no_validation
  steps_per_call: int = 5


# ---------------------------------------------------------------------------------------------
# Declared options
# ---------------------------------------------------------------------------------------------

def option(default, help: str, *, type: type | None = None, choices: tuple | None = None,  # noqa: A002
           label: str | None = None):
  """A method option: a dataclass field with a default, a type (inferred from the default when
  not given), a help text and optional choices (``label`` names it in errors). The CLI builds
  ``--name-with-dashes`` from it."""
  meta = {"help": help, "type": type or builtins_type(default), "choices": choices, "label": label}
  return dataclasses.field(default=default, metadata=meta)


def builtins_type(default):
  if isinstance(default, bool):
    return bool
  for t in (int, float, str):
    if isinstance(default, t):
      return t
  raise TypeError(f"option default {default!r}: give type=")


class OptionInfo(NamedTuple):
  name: str
  default: Any
  type: type
  help: str
  choices: tuple | None
  label: str | None = None


@dataclasses.dataclass(frozen=True)
class MethodConfig:
  """Base of every method's options. Subclasses set ``needs`` (the models it takes) and ``tasks``
  (the predictor tasks it explains), and declare fields with :func:`option`."""

  needs: ClassVar[tuple[str, ...]] = ("predictor",)
  tasks: ClassVar[tuple[str, ...]] = ("classification", "regression")

  def __post_init__(self):
    for o in type(self).options():
      v = getattr(self, o.name)
      if o.choices is not None and v not in o.choices and not _is_custom(v):
        raise unknown_name(o.label or o.name, v, [c for c in o.choices if c is not None])
      if v is not None and o.type in (int, float) and not _is_custom(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (o.type is int and int(v) != v):
          raise CfjaxInputError(f"option {o.name} must be {o.type.__name__}, got {v!r}")
        object.__setattr__(self, o.name, o.type(v))

  @classmethod
  def options(cls) -> list[OptionInfo]:
    out = []
    for f in dataclasses.fields(cls):
      m = f.metadata
      out.append(OptionInfo(f.name, f.default, m.get("type", str), m.get("help", ""), m.get("choices"),
                            m.get("label")))
    return out

  def settings(self) -> dict:
    """JSON-able settings (custom objects such as an optax transformation become "custom")."""
    return {k: ("custom" if _is_custom(v) else v) for k, v in dataclasses.asdict(self).items()}


def _is_custom(v) -> bool:
  return not isinstance(v, (int, float, str, bool, type(None)))


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

class MethodSpec(NamedTuple):
  """A registered method: its name, its options class and its builder."""

  name: str
  config: type
  build: Callable[..., Method]
  doc: str

  @property
  def needs(self) -> tuple[str, ...]:
    return self.config.needs

  @property
  def tasks(self) -> tuple[str, ...]:
    return self.config.tasks

  def options(self) -> list[OptionInfo]:
    return self.config.options()

  def __call__(self, **kwargs) -> Method:
    """Builds the method from models (``predictor=``, ``diffusion=``, ``generator=``) and options."""
    models = {k: kwargs.pop(k) for k in list(kwargs) if k in ("predictor", "diffusion", "generator")}
    missing = [n for n in self.needs if n not in models]
    if missing:
      raise CfjaxInputError(f"method {self.name!r} needs {', '.join(missing)} "
                            f"(it takes {', '.join(self.needs)})")
    extra = [n for n in models if n not in self.needs]
    if extra:
      raise CfjaxInputError(f"method {self.name!r} takes no {', '.join(extra)} model "
                            f"(it takes {', '.join(self.needs)})")
    known = {o.name for o in self.options()}
    bad = [k for k in kwargs if k not in known]
    if bad:
      raise unknown_name(f"option of method {self.name!r}", bad[0], known)
    return self.build(self.config(**kwargs), **models)


_METHODS = Registry("method")


def register_method(name: str, config: type):
  """Decorator registering ``build(config, **models) -> Method`` under ``name``."""
  return _METHODS.register(name, lambda build: MethodSpec(name, config, build, (build.__doc__ or "").strip()))


def known_methods() -> list[str]:
  return _METHODS.names()


def method_spec(name: str) -> MethodSpec:
  return _METHODS.get(name)


def make(name: str, **kwargs) -> Method:
  """Builds a registered method by name, e.g. ``make("acre", predictor=..., diffusion=..., tau=5)``."""
  return method_spec(name)(**kwargs)


def factory(name: str) -> Callable[..., Method]:
  """The public factory ``cfjax.methods.NAME(**models, **options)`` of a registered method."""
  spec = method_spec(name)

  def build(**kwargs) -> Method:
    return spec(**kwargs)

  build.__name__ = name.replace("-", "_")
  opts = "\n".join(f"    {o.name} ({o.type.__name__}, default {o.default!r}): {o.help}"
                   for o in spec.options())
  build.__doc__ = f"{spec.doc}\n\n  Models: {', '.join(spec.needs)}.\n\n  Options:\n{opts}\n"
  return build
