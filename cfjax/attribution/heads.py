"""Attribute heads: one GLM per named attribute on a generator's latent codes.

The heads are a Flax module (:class:`GLM`: a linear map and the inverse links) whose parameters
are fitted with optax (:func:`cfjax.attribution.fit_heads`). The :class:`Heads` record the
generator they were fitted for (its name, latent shape and a fingerprint of its parameters) and
refuse latents of another generator. Heads from elsewhere (e.g. scikit-learn coefficients) enter
through :func:`heads_from_coefficients`; :meth:`Heads.save` / :func:`cfjax.attribution.load_heads`
store them (:mod:`cfjax.attribution.storage`).

Example:
  >>> import numpy as np
  >>> h = heads_from_coefficients(np.array([[1.0, 0.0], [0.0, 2.0]]), np.zeros(2), ["a", "b"], generator="toy")
  >>> h.names, h.predict(np.zeros((3, 2), np.float32)).shape
  (('a', 'b'), (3, 2))
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cfjax._validate import CfjaxInputError, check_choice, unknown_name
from cfjax.attribution import glm

# -- generator identity ---------------------------------------------------------------------------

def generator_identity(generator, latent_shape: Sequence[int] | None = None) -> dict:
  """What heads record of their generator: its name, latent shape and a sha256 of its parameters.

  ``generator`` is a :class:`~cfjax.generators.Generator` or, for latents whose generator is not
  loaded here, a name (then ``latent_shape`` is taken from the latents and there is no fingerprint).
  """
  if isinstance(generator, str):
    return {"name": generator, "latent_shape": None if latent_shape is None else list(latent_shape),
            "fingerprint": None}
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(generator.params):
    a = np.asarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape};".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return {"name": str(generator.name), "latent_shape": list(generator.latent_shape),
          "fingerprint": h.hexdigest()}


def _same_generator(a: dict, b: dict) -> bool:
  if a["latent_shape"] is not None and b["latent_shape"] is not None and a["latent_shape"] != b["latent_shape"]:
    return False
  if a["fingerprint"] and b["fingerprint"]:
    return a["fingerprint"] == b["fingerprint"]
  return a["name"] == b["name"]


# -- the heads --------------------------------------------------------------------------------------

def glm_predict(params: Mapping[str, Any], families: Sequence[str], z: jax.Array) -> jax.Array:
  """Means of every head at ``z``: (A,) for one flattened latent (D,), (N, A) for (N, D).

  ``params`` is ``{"kernel": (D, A), "bias": (A,)}`` (the layout of ``flax.nnx.Linear``). Pure,
  so it can be used inside ``jit`` / ``grad`` with the parameters passed as arguments.
  """
  kernel = params["kernel"]
  eta = jnp.asarray(z, kernel.dtype) @ kernel + params["bias"]
  cols = [glm.inverse_link(f, eta[..., a]) for a, f in enumerate(families)]
  return jnp.stack(cols, axis=-1)


class GLM(nnx.Module):
  """The heads as a Flax module: a linear map (D -> A) and each head's inverse link.

  Its ``nnx.split`` state is ``{"kernel": (D, A), "bias": (A,)}``, the :attr:`Heads.params` layout,
  so the module composes with Flax code (e.g. a head fine-tuned inside a larger nnx model).
  """

  def __init__(self, kernel, bias, families: Sequence[str]):
    self.kernel = nnx.Param(jnp.asarray(kernel))
    self.bias = nnx.Param(jnp.asarray(bias))
    self.families = tuple(families)

  def __call__(self, z):
    return glm_predict({"kernel": self.kernel[...], "bias": self.bias[...]}, self.families, z)


@dataclasses.dataclass(frozen=True, eq=False)
class Heads:
  """Fitted attribute heads of one generator.

  ``params`` holds ``kernel`` (D, A) and ``bias`` (A,) on the flattened raw latent; ``diam`` is
  the diameter of each attribute's range (1 for probabilities, the observed range of the training
  labels otherwise): the denominator of local importances.
  """

  params: dict
  names: tuple[str, ...]
  families: tuple[str, ...]
  latent_shape: tuple[int, ...]
  generator: dict
  diam: np.ndarray
  strength: np.ndarray
  metrics: dict = dataclasses.field(default_factory=dict)
  info: dict = dataclasses.field(default_factory=dict)

  @property
  def num_attributes(self) -> int:
    return len(self.names)

  def _flat(self, z):
    z = jnp.asarray(z)
    lead = z.shape[: z.ndim - len(self.latent_shape)]
    return z.reshape(lead + (-1,))

  def linear_predictor(self, z) -> jax.Array:
    """``eta = z . beta + b`` of every head: (A,) for one latent, (N, A) for a batch."""
    kernel = self.params["kernel"]
    return jnp.asarray(self._flat(z), kernel.dtype) @ kernel + self.params["bias"]

  def predict(self, z) -> jax.Array:
    """Every head's mean (probability, value or rate) at latents ``z`` of ``latent_shape``.

    Usable inside ``jit``; latents are cast to the heads' dtype (float32, or float64 for imported
    float64 coefficients with x64 enabled).
    """
    return glm_predict(self.params, self.families, self._flat(z))

  def module(self) -> GLM:
    """The heads as a Flax :class:`GLM` module on flattened latents."""
    return GLM(self.params["kernel"], self.params["bias"], self.families)

  def index(self, names: str | Sequence[str]) -> list[int]:
    """Positions of attribute ``names`` (CfjaxInputError for unknown ones)."""
    names = [names] if isinstance(names, str) else list(names)
    for n in names:
      if n not in self.names:
        raise unknown_name("attribute", n, self.names)
    return [self.names.index(n) for n in names]

  def directions(self, names: str | Sequence[str]) -> np.ndarray:
    """The coefficient vectors ``beta`` of the named heads, shaped (k, *latent_shape)."""
    kernel = np.asarray(self.params["kernel"])
    return kernel[:, self.index(names)].T.reshape((-1,) + tuple(self.latent_shape))

  def select(self, names: Sequence[str]) -> "Heads":
    """The heads of ``names`` only, in that order."""
    idx = self.index(names)
    cols = np.asarray(idx, np.int32)
    params = {"kernel": jnp.asarray(self.params["kernel"])[:, cols],
              "bias": jnp.asarray(self.params["bias"])[cols]}
    return dataclasses.replace(
        self, params=params, names=tuple(self.names[i] for i in idx),
        families=tuple(self.families[i] for i in idx), diam=self.diam[idx], strength=self.strength[idx],
        metrics={self.names[i]: self.metrics[self.names[i]] for i in idx if self.names[i] in self.metrics})

  def check_generator(self, generator) -> None:
    """Refuses a generator other than the one the heads were fitted for."""
    ident = generator_identity(generator, self.latent_shape)
    if not _same_generator(self.generator, ident):
      raise CfjaxInputError(
          f"these attribute heads were fitted for generator {self.generator['name']!r} (latent shape "
          f"{tuple(self.generator['latent_shape'] or self.latent_shape)}), not for {ident['name']!r} "
          f"(latent shape {tuple(ident['latent_shape'] or self.latent_shape)}"
          f"{', different parameters' if ident['name'] == self.generator['name'] else ''}); "
          "fit heads on this generator's latents")

  def check_latents(self, z, *, name: str = "latents") -> np.ndarray:
    """Checks a batch (N, *latent_shape) of finite latents on the host; returns it as float32."""
    z = np.asarray(z)
    if z.ndim != 1 + len(self.latent_shape) or z.shape[1:] != tuple(self.latent_shape):
      raise CfjaxInputError(f"{name} must have shape (N, {', '.join(map(str, self.latent_shape))}) for "
                            f"the heads of generator {self.generator['name']!r}, got {z.shape}")
    if not np.issubdtype(z.dtype, np.floating) or not np.isfinite(z).all():
      raise CfjaxInputError(f"{name} must be finite floats")
    return z.astype(np.float32, copy=False)

  def summary(self) -> list[dict]:
    """One row per head: name, family, chosen strength, diameter and held-out metrics."""
    return [{"attribute": n, "family": f, "strength": float(s), "diam": float(d), **self.metrics.get(n, {})}
            for n, f, s, d in zip(self.names, self.families, self.strength, self.diam)]

  def save(self, path, *, overwrite: bool = False) -> Path:
    """Writes the heads to directory ``path`` (orbax arrays + ``cfjax_heads.json``)."""
    from cfjax.attribution.storage import save_heads
    return save_heads(self, path, overwrite=overwrite)


def heads_from_coefficients(coef, intercept, names: Sequence[str], *, generator, family: str | Sequence[str]
                            = "logistic", latent_shape: Sequence[int] | None = None, diam=None) -> Heads:
  """Heads from given coefficients, e.g. scikit-learn's ``coef_`` / ``intercept_`` stacked.

  ``coef`` is (A, D) (kept in its float dtype: float64 coefficients predict in float64 when x64
  is enabled); ``diam`` defaults to 1 for logistic heads and must be given for the others.

  Example:
    >>> h = heads_from_coefficients(np.eye(2), np.zeros(2), ["a", "b"], generator="toy")
    >>> [round(float(p), 3) for p in h.predict(np.array([0.0, 2.0], np.float32))]
    [0.5, 0.881]
  """
  coef = np.asarray(coef)
  if coef.ndim != 2 or len(names) != coef.shape[0] or np.shape(intercept) != (coef.shape[0],):
    raise CfjaxInputError(f"coef must be (A, D) and intercept (A,) for {len(names)} names, got "
                          f"{coef.shape} and {np.shape(intercept)}")
  fams = (family,) * len(names) if isinstance(family, str) else tuple(family)
  for f in fams:
    check_choice("GLM family", f, glm.FAMILIES)
  if diam is None:
    if any(f != "logistic" for f in fams):
      raise CfjaxInputError("diam (the range of each attribute) is needed for linear and Poisson heads")
    diam = np.ones(len(names))
  shape = tuple(latent_shape) if latent_shape is not None else (coef.shape[1],)
  if int(np.prod(shape)) != coef.shape[1]:
    raise CfjaxInputError(f"latent shape {shape} does not hold {coef.shape[1]} coefficients")
  ident = generator_identity(generator, shape)
  params = {"kernel": jnp.asarray(coef.T), "bias": jnp.asarray(np.asarray(intercept, coef.dtype))}
  return Heads(params, tuple(names), fams, shape, ident, np.asarray(diam, np.float64),
               np.full(len(names), np.nan))
