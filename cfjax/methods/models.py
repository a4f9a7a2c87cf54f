"""What methods take as models, and the edge checks of their inputs and targets.

A predictor is anything with an ``apply(params, x)`` on NHWC batches in [0, 1]: a
:class:`cfjax.nets.Predictor`, a :class:`cfjax.nets.Network` or an ``(apply, params)`` pair. A
diffusion model is a :class:`cfjax.DiffusionModel`; a generator a :class:`cfjax.generators.Generator`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfjax._validate import CfjaxInputError, check_images


class PredictorFn(NamedTuple):
  apply: Callable[..., Any]   # batched: (N, H, W, C) -> (N, *out_shape)
  params: Any
  meta: dict

  def one(self, params, x):
    """The prediction for ONE image (HWC)."""
    return self.apply(params, x[None])[0]


def as_predictor(model) -> PredictorFn:
  if isinstance(model, tuple) and len(model) == 2 and callable(model[0]):
    return PredictorFn(model[0], model[1], {})
  if hasattr(model, "net") and hasattr(model.net, "apply"):  # cfjax.nets.Predictor
    return PredictorFn(model.net.apply, model.net.params, dict(getattr(model, "meta", {}) or {}))
  if hasattr(model, "apply") and hasattr(model, "params"):
    return PredictorFn(model.apply, model.params, {})
  raise CfjaxInputError("predictor must be a cfjax Predictor/Network or an (apply, params) pair")


def as_diffusion(model):
  from cfjax.nets.loading import DiffusionModel
  if not isinstance(model, DiffusionModel):
    raise CfjaxInputError("diffusion must be a cfjax.DiffusionModel (cfjax.load_diffusion(...), or "
                          "DiffusionModel(network, steps, beta_schedule) for a network in hand)")
  return model


def as_generator(model):
  from cfjax.generators import Generator
  if not isinstance(model, Generator):
    raise CfjaxInputError("generator must be a cfjax.generators.Generator (cfjax.load_generator(...))")
  return model


def output_shape(pred: PredictorFn, image_shape: tuple) -> tuple:
  """Per-example output shape of the predictor on images of ``image_shape`` (no compilation)."""
  try:
    out = jax.eval_shape(pred.apply, pred.params, jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32))
  except Exception as e:  # noqa: BLE001 - a shape error of any kind from the user's function
    raise CfjaxInputError(f"the predictor does not take images of shape {tuple(image_shape)}: {e}") from e
  return tuple(out.shape[1:])


class TargetSpec(NamedTuple):
  """What targets a method takes: class indices of a K-class output, or values of the output's shape."""

  task: str               # "classification" or "regression"
  out_shape: tuple        # per-example predictor output
  num_classes: int = 0

  @classmethod
  def of(cls, task: str, out_shape: tuple) -> "TargetSpec":
    if task == "classification":
      if len(out_shape) > 1:
        raise CfjaxInputError(f"a classifier must output one logit or (K,) logits, got shape {out_shape}")
      return cls(task, out_shape, 2 if not out_shape else int(out_shape[0]))
    return cls(task, out_shape)

  def check(self, targets, n: int) -> np.ndarray:
    t = np.asarray(targets)
    if self.task == "classification":
      if t.shape not in ((n,), (n, 1)):
        raise CfjaxInputError(f"class targets must have shape ({n},), got {t.shape}")
      if not np.issubdtype(t.dtype, np.integer):
        raise CfjaxInputError(f"this classifier needs integer class targets, got dtype {t.dtype}")
      t = t.reshape(n)
      bad = np.nonzero((t < 0) | (t >= self.num_classes))[0]
      if bad.size:
        raise CfjaxInputError(f"class target(s) {t[bad[:5]].tolist()} out of range for a "
                              f"{self.num_classes}-class classifier (examples {bad[:10].tolist()})")
      return t.astype(np.int32)
    want = (n,) + self.out_shape
    if t.shape != want and not (t.shape == (n, 1) and not self.out_shape):
      raise CfjaxInputError(f"regression targets must have shape {want} (the predictor's output "
                            f"per example is {self.out_shape or 'a scalar'}), got {t.shape}")
    if not np.issubdtype(t.dtype, np.number) or not np.isfinite(t.astype(np.float64)).all():
      raise CfjaxInputError("regression targets must be finite numbers")
    return t.reshape(want).astype(np.float32)


def image_validator(image_shape: tuple, spec: TargetSpec) -> Callable:
  """``validate(images, targets)`` for methods that take images of ``image_shape`` (HWC)."""
  h, w, c = image_shape

  def validate(images, targets):
    x = check_images(images, name="images", image_size=(h, w), channels=c)
    return x, spec.check(targets, len(x))

  return validate


def task_of(pred: PredictorFn, tasks: tuple[str, ...], requested: str | None = None) -> str:
  """The task a method explains: the requested one, the predictor's recorded one, or the only one."""
  recorded = pred.meta.get("task")
  task = requested or recorded or (tasks[0] if len(tasks) == 1 else None)
  if task is None:
    raise CfjaxInputError("the predictor's task is not recorded: pass task='classification' or 'regression'")
  if task not in tasks:
    other = "a regressor" if task == "classification" else "a classifier"
    raise CfjaxInputError(f"this method explains {' or '.join(tasks)} models: it does not fit a "
                          f"{task} predictor (it needs {other})")
  if recorded and requested and recorded != requested:
    raise CfjaxInputError(f"task {requested!r} does not fit a {recorded} predictor")
  return task
