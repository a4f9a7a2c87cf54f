"""Latent directions of attribute heads: InterFaceGAN steps and attribute-restricted updates.

* **InterFaceGAN step** (closed form). For a head with coefficients ``beta`` and linear predictor
  ``eta(z) = z . beta + b``, moving along ``beta`` changes ``eta`` by ``delta ||beta||^2``; so
  ``z' = z + delta beta`` with ``delta = (link(p') - eta(z)) / ||beta||^2`` reaches the mean ``p'``
  exactly (``link`` = logit for a logistic head: Goldwasser & Hooker's ``get_interfacegan_cf``
  writes ``logit(p)`` for ``eta(z)``, the same number). :func:`interfacegan_target` gives the
  target levels of the paper's notebook.
* **Attribute-projected attacks**. :func:`subspace` makes an orthonormal basis of chosen
  directions; :func:`project` keeps only the part of a vector within their span
  (``mode="within"``) or removes it (``mode="without"``); :func:`project_updates` is the same as an
  optax transformation. Chained last after the optimiser
  (``optax.chain(adam(lr), project_updates(basis, "without"))``), every latent step leaves the
  latent's components along the forbidden directions exactly as they were; chained first, it
  projects the gradient that the optimiser then rescales.

Example:
  >>> import jax.numpy as jnp
  >>> beta = jnp.array([3.0, 4.0])
  >>> z1 = interfacegan_step(jnp.zeros(2), beta, jnp.float32(0.0), jnp.float32(0.75))
  >>> round(float(jax.nn.sigmoid(z1 @ beta)), 6)
  0.75
  >>> b = subspace(jnp.array([[1.0, 0.0]]))
  >>> project(jnp.array([2.0, 5.0]), b, "without").tolist()
  [0.0, 5.0]
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cfjax._validate import CfjaxInputError, check_choice
from cfjax.attribution import glm

MODES = ("within", "without")


# -- InterFaceGAN ----------------------------------------------------------------------------------

def interfacegan_delta(eta: jax.Array, beta: jax.Array, target_eta: jax.Array) -> jax.Array:
  """The step length along ``beta`` that moves linear predictor ``eta`` to ``target_eta``."""
  return (target_eta - eta) / jnp.sum(beta * beta)


def interfacegan_step(z: jax.Array, beta: jax.Array, intercept: jax.Array, target: jax.Array, *,
                      family: str = "logistic") -> jax.Array:
  """``z + delta * beta`` whose head mean (a probability for logistic heads) is exactly ``target``.

  Per example (vmap outside); ``beta`` has the shape of ``z``. The arithmetic runs in the dtype of
  ``beta`` and the result has the dtype of ``z``.
  """
  zb = z.astype(beta.dtype)
  eta = jnp.sum(zb * beta) + intercept
  target_eta = glm.link(family, jnp.asarray(target, beta.dtype))
  return (zb + interfacegan_delta(eta, beta, target_eta) * beta).astype(z.dtype)


def interfacegan_target(p: jax.Array, *, direction: jax.Array | None = None, low: float = 0.25,
                        high: float = 0.75, far_low: float = 0.1, far_high: float = 0.9) -> jax.Array:
  """Target probability of an InterFaceGAN step from the head's probability ``p``.

  ``direction`` > 0 raises the probability, < 0 lowers it; by default it is ``+1`` where
  ``p < 0.5`` (``get_interfacegan_cf``'s rule: 0.75 below 0.5, else 0.25). Raising goes to ``high``,
  or to ``far_high`` when ``p`` is already at or above ``high``; lowering mirrors it (the notebook's
  cell 42, with the direction taken from the image predictor).
  """
  p = jnp.asarray(p)
  up = p < 0.5 if direction is None else jnp.asarray(direction) > 0
  raise_to = jnp.where(p < high, jnp.asarray(high, p.dtype), jnp.asarray(far_high, p.dtype))
  lower_to = jnp.where(p > low, jnp.asarray(low, p.dtype), jnp.asarray(far_low, p.dtype))
  return jnp.where(up, raise_to, lower_to)


def interfacegan_counterfactuals(heads, name: str, latents, targets=None, *, direction=None):
  """InterFaceGAN counterfactual latents for attribute ``name`` of ``heads``: (N, *latent_shape).

  ``targets`` (N,) are head means to reach; by default :func:`interfacegan_target` of the head's
  own prediction (``direction`` as there). Works for every family (the link of the head is used).

  Example:
    >>> import numpy as np
    >>> from cfjax.attribution import heads_from_coefficients
    >>> h = heads_from_coefficients(np.array([[1.0, 2.0]]), np.array([0.5]), ["smiling"], generator="toy")
    >>> z1 = interfacegan_counterfactuals(h, "smiling", np.zeros((1, 2), np.float32))
    >>> np.round(np.asarray(h.predict(z1)[:, 0]), 6).tolist()
    [0.25]
  """
  i = heads.index(name)[0]
  z = heads.check_latents(latents)
  family = heads.families[i]
  if targets is None:
    if family != "logistic":
      raise CfjaxInputError(f"give targets for the {family} head {name!r} (default targets are probabilities)")
    targets = interfacegan_target(heads.predict(z)[:, i], direction=direction)
  targets = np.asarray(targets)
  if targets.shape != (z.shape[0],):
    raise CfjaxInputError(f"targets must have shape ({z.shape[0]},), got {targets.shape}")
  if family == "logistic" and not ((targets > 0) & (targets < 1)).all():
    raise CfjaxInputError("target probabilities must lie strictly between 0 and 1")
  if family == "poisson" and not (targets > 0).all():
    raise CfjaxInputError("target rates of a Poisson head must be > 0")
  kernel, bias = heads.params["kernel"], heads.params["bias"]
  beta = kernel[:, i]
  flat = jnp.asarray(z.reshape(z.shape[0], -1))
  step = jax.vmap(lambda zz, t: interfacegan_step(zz, beta, bias[i], t, family=family))
  return step(flat, jnp.asarray(targets, kernel.dtype)).reshape(z.shape)


# -- subspaces -------------------------------------------------------------------------------------

class Subspace(NamedTuple):
  """An orthonormal basis (k, *latent_shape) of attribute directions."""

  basis: jax.Array


def subspace(directions, *, rtol: float = 1e-6) -> Subspace:
  """Orthonormal basis of the span of ``directions`` (k, *latent_shape), checked on the host.

  Raises CfjaxInputError for zero or linearly dependent directions (rank below k).
  """
  d = np.asarray(directions, np.float64)
  if d.ndim < 2 or d.shape[0] == 0:
    raise CfjaxInputError(f"directions must be (k, *latent_shape) with k >= 1, got shape {d.shape}")
  flat = d.reshape(d.shape[0], -1)
  if not np.isfinite(flat).all():
    raise CfjaxInputError("directions must be finite")
  q, r = np.linalg.qr(flat.T)
  diag = np.abs(np.diag(r))
  if diag.size < flat.shape[0] or (diag <= rtol * max(diag.max(), 1e-300)).any():
    raise CfjaxInputError(f"the {flat.shape[0]} directions are zero or linearly dependent")
  return Subspace(jnp.asarray(q.T.reshape(d.shape).astype(np.float32)))


def project(v: jax.Array, space: Subspace, mode: str = "within") -> jax.Array:
  """The part of ``v`` (shape ``latent_shape``) within the span (``"within"``) or orthogonal to it."""
  check_choice("projection mode", mode, MODES)
  q = space.basis.reshape(space.basis.shape[0], -1).astype(v.dtype)
  inside = (q.T @ (q @ v.reshape(-1))).reshape(v.shape)
  return inside if mode == "within" else v - inside


def project_updates(space: Subspace, mode: str = "within") -> optax.GradientTransformation:
  """optax transformation projecting every update (a latent or a pytree of them) with :func:`project`."""
  check_choice("projection mode", mode, MODES)

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: project(u, space, mode), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def restricted(optimizer: optax.GradientTransformation, space: Subspace, mode: str = "within"
               ) -> optax.GradientTransformation:
  """``optimizer`` whose steps stay within (or orthogonal to) the span: it projects the final update.

  Example:
    >>> tx = restricted(optax.sgd(0.1), subspace(jnp.eye(3)[:1]), "without")
    >>> u, _ = tx.update(jnp.ones(3), tx.init(jnp.zeros(3)))
    >>> float(u[0])
    0.0
  """
  return optax.chain(optimizer, project_updates(space, mode))


# -- attribute-restricted attacks ------------------------------------------------------------------

class Restriction(NamedTuple):
  """Heads, the span of the chosen attributes' directions and how steps are projected onto it."""

  heads: object            # cfjax.attribution.Heads
  names: tuple[str, ...]   # the chosen attributes
  space: Subspace
  mode: str                # "within" (only these attributes) or "without" (not these)


def _names(v) -> tuple[str, ...]:
  if v is None:
    return ()
  items = v.split(",") if isinstance(v, str) else list(v)
  return tuple(s.strip() for s in items if s.strip())


def attribute_restriction(heads, *, only=None, without=None, generator=None) -> Restriction | None:
  """The subspace of latent steps that change only the ``only`` attributes, or none of ``without``.

  ``only`` / ``without`` are attribute names (a sequence or one comma-separated string) of
  ``heads`` (a :class:`~cfjax.attribution.Heads` or a directory written by :meth:`Heads.save`);
  with ``generator``, heads of another generator are refused. Returns None when neither is given.
  ``"within"`` keeps every step in the span of the ``only`` heads' directions; ``"without"``
  removes the ``without`` heads' directions from every step, so their linear predictors (and so
  their outputs) stay exactly where they started.

  Example:
    >>> import numpy as np
    >>> from cfjax.attribution import heads_from_coefficients
    >>> h = heads_from_coefficients(np.eye(3)[:2], np.zeros(2), ["a", "b"], generator="toy")
    >>> r = attribute_restriction(h, without="b")
    >>> r.mode, project(jnp.ones(3), r.space, r.mode).tolist()
    ('without', [1.0, 0.0, 1.0])
  """
  only, without = _names(only), _names(without)
  if only and without:
    raise CfjaxInputError("give either only= (steps within these attributes' directions) or without= "
                          "(steps free of them), not both")
  if not (only or without):
    return None
  if heads is None:
    raise CfjaxInputError("only= / without= need attribute heads (a cfjax fit-heads directory)")
  if isinstance(heads, (str, bytes)) or hasattr(heads, "__fspath__"):
    from cfjax.attribution.storage import load_heads
    heads = load_heads(heads)
  if generator is not None:
    heads.check_generator(generator)
  names = only or without
  return Restriction(heads, names, subspace(heads.directions(names)), "within" if only else "without")
