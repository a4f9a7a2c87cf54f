"""The metric protocol: a streaming metric is three pure functions over an explicit state.

* ``init() -> state``
* ``update(state, batch) -> state``: ``batch`` is a dict of arrays that share their leading
  (example) axis, e.g. ``original`` and ``counterfactual`` (N, H, W, C) images in [0, 1],
  ``prediction``, ``target``, ``success``. An optional ``valid`` (N,) bool entry marks padding
  rows, which count for nothing, so a driver can pad batches to a few fixed sizes and compile once.
* ``finalize(state) -> dict[str, float]``.

Feeding the data in any split into batches gives the same result as one batch (up to float
round-off). Metrics with ``jittable=True`` have states that are pytrees of float32 arrays and
an ``update`` that can be wrapped in ``jax.jit``; their sums are Kahan-compensated float32
sums (x64 stays off in cfjax), so long runs do not drift: the running error stays at a few
float32 ulps of the total instead of growing with the number of batches. FID and sFID keep
float64 accumulators on the host and have ``jittable=False`` (their feature functions are jitted).

Most metrics are means of per-example quantities: :func:`mean_metric` builds those.

Example:
  >>> import numpy as np
  >>> m = mean_metric("half", lambda b: {"half": b["v"] / 2}, requires=("v",), outputs=("half",))
  >>> s = m.update(m.init(), {"v": np.array([2.0, 4.0], np.float32)})
  >>> m.finalize(s)
  {'half': 1.5}
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfjax._validate import CfjaxInputError, check_images

Batch = dict[str, Any]


class Metric(NamedTuple):
  """A streaming metric (see the module docstring).

  Attributes:
    name: what errors call it.
    init, update, finalize: the three pure functions.
    requires: batch keys every batch must carry.
    accepts: batch keys used where present (e.g. FID's real and fake image sets).
    check: host-side validation of a batch (numpy arrays), run before anything is traced.
    jittable: whether ``update`` may be wrapped in ``jax.jit``.
    min_counts: ``{key: n}``, the fewest examples carrying ``key`` that ``finalize`` can use
      (e.g. 2 for a covariance); drivers that know the totals up front check them first.
  """
  name: str
  init: Callable[[], Any]
  update: Callable[[Any, Batch], Any]
  finalize: Callable[[Any], dict[str, float]]
  requires: tuple[str, ...] = ()
  accepts: tuple[str, ...] = ()
  check: Callable[[Batch], None] | None = None
  jittable: bool = True
  min_counts: dict[str, int] | None = None


# -- Kahan-compensated float32 sums ----------------------------------------------------------
def kahan_init(shape: tuple[int, ...] = ()) -> tuple[jax.Array, jax.Array]:
  """A compensated sum: (running sum, running compensation), both float32 zeros."""
  return jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)


def kahan_add(acc: tuple[jax.Array, jax.Array], x) -> tuple[jax.Array, jax.Array]:
  """Adds ``x`` to a compensated sum (Kahan's algorithm; jittable).

  Example:
    >>> acc = kahan_init()
    >>> for _ in range(1000):
    ...   acc = kahan_add(acc, jnp.float32(0.1))
    >>> round(float(kahan_value(acc)), 4)
    100.0
  """
  s, c = acc
  y = jnp.asarray(x, jnp.float32) - c
  t = s + y
  return t, (t - s) - y


def kahan_value(acc) -> np.ndarray:
  """The value of a compensated sum, as float64 numpy."""
  s, c = acc
  return np.asarray(s, np.float64) - np.asarray(c, np.float64)


def valid_weights(batch: Batch, n: int) -> jax.Array:
  """(n,) float32 weights: 1 for real rows, 0 for padding rows (``batch["valid"]`` False)."""
  if "valid" in batch:
    return jnp.asarray(batch["valid"]).astype(jnp.float32)
  return jnp.ones((n,), jnp.float32)


# -- means of per-example quantities ---------------------------------------------------------
def mean_metric(name: str, per_example: Callable[[Batch], dict[str, jax.Array]], *,
                requires: tuple[str, ...], outputs: tuple[str, ...] | dict[str, tuple[int, ...]],
                spread: tuple[str, ...] = (),
                finalize: Callable[[dict[str, np.ndarray], float], dict[str, float]] | None = None,
                check: Callable[[Batch], None] | None = None) -> Metric:
  """A jittable metric that averages per-example quantities over every valid example.

  Args:
    name: the metric's name.
    per_example: ``batch -> {key: (N, *shape) array}``; jittable, one value per example.
    requires: the batch keys ``per_example`` reads.
    outputs: the keys ``per_example`` returns (scalars per example), or ``{key: trailing shape}``.
    spread: scalar keys whose standard deviation over examples is reported too, as ``{key}_std``.
      Their centred sums of squares are merged batch by batch (Chan et al.), so a small spread
      around a large mean is not lost to cancellation as E[v^2] - E[v]^2 would lose it.
    finalize: ``(means, count) -> dict of floats`` from the float64 means (with the ``{key}_std``
      entries; default: report them all).
    check: host-side batch validation.

  Returns:
    A :class:`Metric`; its state holds the example count, the Kahan sums of each key and the
    centred sums of squares of the ``spread`` keys.

  Example:
    >>> m = mean_metric("sq", lambda b: {"sq": b["v"] ** 2}, requires=("v",), outputs=("sq",), spread=("sq",))
    >>> m.finalize(m.update(m.init(), {"v": np.array([1.0, 3.0], np.float32)}))
    {'sq': 5.0, 'sq_std': 4.0}
  """
  shapes = dict(outputs) if isinstance(outputs, dict) else {k: () for k in outputs}
  spread = tuple(spread)

  def init():
    return {"count": kahan_init(), "sums": {k: kahan_init(s) for k, s in shapes.items()},
            "m2": {k: jnp.zeros((), jnp.float32) for k in spread}}

  def update(state, batch):
    values = per_example(batch)
    n = next(iter(values.values())).shape[0]
    keep = valid_weights(batch, n) > 0
    nb = jnp.sum(keep.astype(jnp.float32))
    na = state["count"][0] - state["count"][1]
    sums, m2 = {}, {}
    for k, acc in state["sums"].items():
      v = values[k].astype(jnp.float32)
      v = jnp.where(keep.reshape((n,) + (1,) * (v.ndim - 1)), v, jnp.float32(0.0))
      sums[k] = kahan_add(acc, jnp.sum(v, axis=0))
      if k in spread:
        m2[k] = _merge_m2(state["m2"][k], acc, na, v, keep, nb)
    return {"count": kahan_add(state["count"], nb), "sums": sums, "m2": m2}

  def final(state):
    count = float(kahan_value(state["count"]))
    if count <= 0:
      raise CfjaxInputError(f"metric {name!r} saw no examples: nothing to average.")
    means = {k: kahan_value(v) / count for k, v in state["sums"].items()}
    means.update({f"{k}_std": np.sqrt(max(float(v), 0.0) / count) for k, v in state["m2"].items()})
    if finalize is not None:
      return finalize(means, count)
    return {k: float(v) for k, v in means.items()}

  return Metric(name, init, update, final, requires=tuple(requires), check=check)


def _merge_m2(m2, acc, na, v, keep, nb):
  """Chan et al.'s merge of a batch's centred sum of squares into the running one (float32)."""
  mb = jnp.sum(v) / jnp.maximum(nb, 1.0)
  m2b = jnp.sum(jnp.where(keep, (v - mb) ** 2, jnp.float32(0.0)))
  ma = (acc[0] - acc[1]) / jnp.maximum(na, 1.0)
  delta = mb - ma
  return m2 + m2b + delta * delta * na * nb / jnp.maximum(na + nb, 1.0)


# -- host-side checks (before any tracing) ---------------------------------------------------
def check_pair(batch: Batch, a: str = "original", b: str = "counterfactual") -> None:
  """Checks two image sets of one batch: NHWC floats in [0, 1] of the same shape."""
  xa = check_images(batch[a], name=a, channels=None, tol=1e-4)
  xb = check_images(batch[b], name=b, channels=None, tol=1e-4)
  if xa.shape != xb.shape:
    raise CfjaxInputError(f"{a} and {b} must have the same shape, got {xa.shape} and {xb.shape}.")


def check_output(fn: Callable, x, *, what: str, name: str, trailing_rank: int | tuple[int, ...],
                 ) -> tuple[int, ...]:
  """Shape-evaluates ``fn(x)`` (tracing only, no compilation) and checks its rank and batch axis.

  Returns:
    The output shape.
  """
  x = np.asarray(x)
  try:
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
  except Exception as e:  # noqa: BLE001  (any failure of a user's function is reported as such)
    raise CfjaxInputError(f"{name}: the {what} fails on inputs of shape {x.shape}: {e}") from e
  if not hasattr(out, "shape"):
    raise CfjaxInputError(f"{name}: the {what} must return one array, got {type(out).__name__}.")
  ranks = (trailing_rank,) if isinstance(trailing_rank, int) else trailing_rank
  if out.ndim - 1 not in ranks or out.shape[0] != x.shape[0]:
    want = " or ".join({0: "(N,)", 1: "(N, D)"}.get(r, f"(N{', ...' * r})") for r in ranks)
    raise CfjaxInputError(f"{name}: the {what} must map {x.shape[0]} inputs of shape {x.shape} "
                          f"to shape {want} with N = {x.shape[0]}, got {tuple(out.shape)}.")
  return tuple(out.shape)
