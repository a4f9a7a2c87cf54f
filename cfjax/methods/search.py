"""The one search loop of every method: an optax update with a per-example done mask.

A method describes its search by an objective and a stopping criterion; this module turns them
into the per-example state and step that the engine vmaps. Pixel-space methods (ACE, AC-RE)
search over the image, latent methods (Counterfactual Attacks, Diff-AE-RE) over a latent code:
the step is the same.

One step evaluates ``objective(params, z, ctx, it) -> (loss, aux)`` and its gradient, judges
``reached(params, z, ctx, aux) -> (bool, aux)`` (which may refine the aux it keeps, e.g. a
prediction judged on another image), and then either stops (the criterion holds and early stopping
is on, or the loss or gradient is not finite: the last finite iterate is kept) or takes the
optax update (followed by ``project``, e.g. a clip to [0, 1]). The check comes before the update,
so an example that already meets its target is returned as evaluated. ``it`` counts updates;
the search ends after ``max_steps`` of them. Optionally the iterate is recorded every
``record_every`` updates (a fixed-size buffer, so shapes stay static).

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> s = Search(objective=lambda p, z, c, it: (jnp.sum((z - c) ** 2), {}),
  ...            reached=lambda p, z, c, aux: (jnp.sum((z - c) ** 2) < 1e-4, aux),
  ...            optimizer=optax.sgd(0.25), max_steps=50)
  >>> st = init_search(s, jnp.zeros(2), jnp.array([1.0, 2.0]), aux={})
  >>> for _ in range(50):
  ...   st = search_step(s, None, st)
  >>> bool(st.done & st.reached), int(st.it) < 50
  (True, True)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class Search(NamedTuple):
  """What a method searches: its objective, stop criterion, optimiser and constraints."""

  objective: Callable[..., tuple]          # (params, z, ctx, it) -> (loss, aux)
  reached: Callable[..., tuple]            # (params, z, ctx, aux) -> (bool, aux)
  optimizer: optax.GradientTransformation
  max_steps: int
  early_stop: bool = True
  project: Callable[[Any], Any] | None = None   # applied after every update
  record_every: int = 0                          # 0: no trajectory


class SearchState(NamedTuple):
  z: Any                 # the searched variable (image or latent)
  ctx: Any               # per-example constants (original, target, keys, ...)
  opt_state: Any
  it: jax.Array          # updates applied
  aux: Any               # the objective's aux at the last evaluation
  reached: jax.Array     # the last evaluation met the criterion
  done: jax.Array
  nonfinite: jax.Array
  trajectory: Any        # (max_steps // record_every + 1, *z.shape), or an empty array


def trajectory_length(search: Search) -> int:
  return search.max_steps // search.record_every + 1 if search.record_every else 0


def init_search(search: Search, z0, ctx, *, aux) -> SearchState:
  """The state before the first evaluation; ``aux`` is a template of the objective's aux."""
  n = trajectory_length(search)
  traj = jax.tree.map(lambda a: jnp.zeros((n,) + jnp.shape(a), jnp.result_type(a)), z0)
  return SearchState(z=z0, ctx=ctx, opt_state=search.optimizer.init(z0), it=jnp.int32(0), aux=aux,
                     reached=jnp.bool_(False), done=jnp.bool_(False), nonfinite=jnp.bool_(False),
                     trajectory=traj)


def _select(pred, a, b):
  return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def search_step(search: Search, params, s: SearchState) -> SearchState:
  """One evaluation and (unless stopping) one optax update of one example; a no-op once done."""
  (loss, aux), g = jax.value_and_grad(search.objective, argnums=1, has_aux=True)(
      params, s.z, s.ctx, s.it)
  reached, aux = search.reached(params, s.z, s.ctx, aux)
  finite = jnp.isfinite(loss) & _all_finite(g)
  if search.record_every:
    k = search.record_every
    slot = jnp.minimum(s.it // k, trajectory_length(search) - 1)
    record = ~s.done & (s.it % k == 0)
    traj = jax.tree.map(lambda t, z: t.at[slot].set(jnp.where(record, z, t[slot])), s.trajectory, s.z)
  else:
    traj = s.trajectory
  updates, opt_state = search.optimizer.update(g, s.opt_state, s.z)
  z_new = optax.apply_updates(s.z, updates)
  if search.project is not None:
    z_new = search.project(z_new)
  stop_now = (reached & search.early_stop) | ~finite
  move = ~s.done & ~stop_now
  it = s.it + move.astype(jnp.int32)
  return SearchState(
      z=_select(move, z_new, s.z), ctx=s.ctx, opt_state=_select(move, opt_state, s.opt_state),
      it=it, aux=_select(s.done, s.aux, aux), reached=jnp.where(s.done, s.reached, reached),
      done=s.done | stop_now | (it >= search.max_steps),
      nonfinite=s.nonfinite | (~s.done & ~finite), trajectory=traj)


def recorded(search: Search, s: SearchState) -> jax.Array:
  """How many trajectory entries a finished search holds (the last evaluated iterate included)."""
  if not search.record_every:
    return jnp.int32(0)
  stopped = (s.reached & search.early_stop) | s.nonfinite  # stopped at an evaluation, no update
  last = jnp.where(stopped, s.it, s.it - 1)
  return jnp.maximum(last, 0) // search.record_every + 1


def status(success, nonfinite) -> jax.Array:
  """The :class:`~cfjax.methods.Status` code of a finished example."""
  from cfjax.methods.base import Status
  return jnp.where(nonfinite, Status.NONFINITE,
                   jnp.where(success, Status.SUCCESS, Status.NOT_REACHED)).astype(jnp.int32)
