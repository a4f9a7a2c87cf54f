"""InterFaceGAN-style counterfactuals: one closed-form step along the normal of a linear latent head.

For a head with coefficients ``beta`` and linear predictor ``eta(z) = z . beta + b`` on the
latent, ``z' = z + delta beta`` with ``delta = (link(p') - eta(z)) / ||beta||^2`` moves the head's
mean from ``p`` to exactly ``p'`` (for a logistic head ``link`` is the logit, so
``delta = (logit(p') - logit(p)) / ||beta||^2``). The direction comes from either

* ``direction="classifier"``: the decision head of the target class, fitted to the predictor's
  own decisions on latents (:mod:`cfjax.attribution.decisions`): from heads written by
  ``cfjax fit-heads --predictor`` (``heads``), or fitted when the method is built from
  ``fit_size`` training images of ``fit_dataset``. The step raises the head's probability of the
  target class to ``level`` (default: 0.75, or 0.9 when the head is already at 0.75 or above,
  the paper's rule). For a regressor the linear head of its output is moved to the target value.
* ``direction="attribute"``: the head of ``attribute``, raised or lowered (``attribute_sign``;
  "auto": the way that lowers the predictor's loss, the sign of its derivative along ``beta`` at
  the start code) to ``level`` (default: the same rule, 0.25 / 0.1 when lowering).

Either way the predictor judges the decoded counterfactual as Counterfactual Attacks does
(``threshold`` / ``tolerance``): the step reaches the head's level exactly, and ``success`` says
whether the predictor followed. Results carry ``head_original`` / ``head_counterfactual`` (the
head's mean at the start code and after the step).

Example:
  >>> import cfjax
  >>> m = cfjax.methods.interfacegan(predictor=cfjax.load_predictor("shapes_classifier"),
  ...     generator=cfjax.load_generator("shapes_vae"), fit_dataset="shapes", fit_size=512)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfjax._validate import CfjaxInputError, check_images
from cfjax.attribution import glm
from cfjax.attribution.directions import interfacegan_step, interfacegan_target
from cfjax.methods import objectives as obj
from cfjax.methods.base import Method, MethodConfig, option, register_method
from cfjax.methods.models import TargetSpec, as_generator, as_predictor, output_shape, task_of
from cfjax.methods.search import status

DIRECTIONS = ("classifier", "attribute")
SIGNS = ("auto", "up", "down")


@dataclasses.dataclass(frozen=True)
class InterFaceGANConfig(MethodConfig):
  """Options of InterFaceGAN-style counterfactuals."""

  needs = ("predictor", "generator")
  tasks = ("classification", "regression")

  task: str | None = option(None, "classification or regression (default: the predictor's recorded task)",
                            type=str, choices=(None, "classification", "regression"))
  direction: str = option("classifier", "classifier: the normal of a head fitted to the predictor's decisions "
                          "on latents; attribute: the normal of the head --attribute", choices=DIRECTIONS)
  heads: Any = option(None, "heads directory (cfjax fit-heads): attribute heads, or decision heads "
                      "(--predictor) for the classifier direction; (Python) a Heads object", type=str)
  attribute: str | None = option(None, "the head to move along (attribute direction)", type=str)
  attribute_sign: str = option("auto", "attribute direction: up / down raise / lower the attribute; auto: "
                               "the way that lowers the predictor's loss", choices=SIGNS)
  level: float | None = option(None, "head mean to reach (default: 0.75 / 0.9 raising, 0.25 / 0.1 lowering; "
                               "a regressor's decision head: the target)", type=float)
  fit_dataset: str | None = option(None, "classifier direction without --heads: the dataset whose training "
                                   "images are encoded to fit the decision heads", type=str)
  fit_split: str = option("train", "split of --fit-dataset")
  fit_size: int = option(2000, "images of --fit-dataset to fit the decision heads on")
  fit_strength: float = option(1e-3, "L2 strength of the decision heads fitted here")
  threshold: float = option(0.5, "classification: success once p(target) > threshold")
  tolerance: float = option(0.05, "regression: success once |f - target| <= tolerance")


class StepState(NamedTuple):
  z: jax.Array
  z0: jax.Array
  target: jax.Array
  decode_key: jax.Array
  it: jax.Array
  done: jax.Array
  nonfinite: jax.Array


def _load_heads(cfg: InterFaceGANConfig, gen):
  from cfjax.attribution import Heads, load_heads
  if cfg.heads is None:
    return None
  heads = cfg.heads if isinstance(cfg.heads, Heads) else load_heads(cfg.heads)
  heads.check_generator(gen)
  return heads


def _fitted_decision_heads(cfg: InterFaceGANConfig, pred, gen, task: str):
  from cfjax import data
  from cfjax.attribution import HeadsConfig, fit_decision_heads
  if cfg.fit_dataset is None:
    raise CfjaxInputError("the classifier direction needs decision heads: give heads (cfjax fit-heads "
                          "--predictor ...) or fit_dataset to fit them here")
  if cfg.fit_size < 10:
    raise CfjaxInputError(f"fit_size must be >= 10, got {cfg.fit_size}")
  h, w, _ = gen.image_shape
  ds = data.load(cfg.fit_dataset, split=cfg.fit_split, batch_size=cfg.fit_size, shuffle=False, image_size=h)
  images = next(iter(ds))["image"]
  return fit_decision_heads(pred, gen, images, HeadsConfig(strength=cfg.fit_strength, holdout=0.1),
                            key=jax.random.key(0), task=task)


def _head_of(cfg, heads, task: str, spec: TargetSpec):
  """(heads, columns (T,) indexed by target class or (1,), family) of the direction."""
  from cfjax.attribution.decisions import decision_names
  if cfg.direction == "attribute":
    if heads is None or cfg.attribute is None:
      raise CfjaxInputError("the attribute direction needs heads (a cfjax fit-heads directory) and attribute")
    i = heads.index(cfg.attribute)[0]
    if heads.families[i] != "logistic" and cfg.level is None:
      raise CfjaxInputError(f"give level for the {heads.families[i]} head {cfg.attribute!r} "
                            "(default levels are probabilities)")
    return np.array([i]), heads.families[i]
  names = decision_names(task, spec.num_classes)
  missing = [n for n in names if n not in heads.names]
  if missing:
    raise CfjaxInputError(f"these heads have no decision heads {', '.join(missing)} for a {task} predictor "
                          f"(they hold {', '.join(heads.names)}); fit them with cfjax fit-heads --predictor")
  return np.asarray(heads.index(names)), heads.families[heads.index(names[0])[0]]


def _check(cfg: InterFaceGANConfig, task: str):
  if task == "classification" and not 0.0 < cfg.threshold < 1.0:
    raise CfjaxInputError(f"threshold must be in (0, 1), got {cfg.threshold}")
  if cfg.direction == "classifier" and task == "regression" and cfg.level is not None:
    raise CfjaxInputError("a regressor's decision head is moved to the target: level does not apply")


@register_method("interfacegan", InterFaceGANConfig)
def interfacegan(cfg: InterFaceGANConfig, *, predictor, generator) -> Method:
  """InterFaceGAN-style counterfactuals: one closed-form latent step along the normal of a linear head
  (the predictor's decision head, or an attribute head) to a chosen head level."""
  pred_fn, gen = as_predictor(predictor), as_generator(generator)
  task = task_of(pred_fn, cfg.tasks, cfg.task)
  _check(cfg, task)
  image_shape, latent_shape = tuple(gen.image_shape), tuple(gen.latent_shape)
  spec = TargetSpec.of(task, output_shape(pred_fn, image_shape))
  heads = _load_heads(cfg, gen)
  if heads is None and cfg.direction == "classifier":
    heads = _fitted_decision_heads(cfg, pred_fn, gen, task)
  cols, family = _head_of(cfg, heads, task, spec)
  f, classification = pred_fn.one, task == "classification"
  params = {"predictor": pred_fn.params, "generator": gen.params,
            "heads": {"kernel": jnp.asarray(heads.params["kernel"])[:, cols],
                      "bias": jnp.asarray(heads.params["bias"])[cols]}}

  def loss_of(p, z, target, key):
    pred = f(p["predictor"], gen.decode(p["generator"], z, key))
    return obj.classification_loss(pred, target) if classification else jnp.sum(obj.regression_loss(pred, target))

  def head(p, target):
    j = target if cfg.direction == "classifier" and classification else 0
    return p["heads"]["kernel"][:, j], p["heads"]["bias"][j]

  def level_of(p, s: StepState, beta, b):
    if cfg.direction == "classifier" and not classification:
      return jnp.reshape(s.target, ()).astype(beta.dtype)
    if cfg.level is not None:
      return jnp.asarray(cfg.level, beta.dtype)
    mean = glm.inverse_link(family, jnp.sum(s.z0.reshape(-1) * beta) + b)
    if cfg.direction == "classifier" or cfg.attribute_sign == "up":
      return interfacegan_target(mean, direction=1.0)
    if cfg.attribute_sign == "down":
      return interfacegan_target(mean, direction=-1.0)
    d = beta.reshape(latent_shape)
    _, slope = jax.jvp(lambda t: loss_of(p, s.z0 + t * d, s.target, s.decode_key), (0.0,), (1.0,))
    return interfacegan_target(mean, direction=jnp.where(slope <= 0, 1.0, -1.0))

  def init(p, x, target, key):
    k_enc, k_dec = jax.random.split(key)
    z0 = x if tuple(x.shape) == latent_shape else gen.encode(p["generator"], x, k_enc)
    return StepState(z0, z0, target, k_dec, jnp.int32(0), jnp.bool_(False), jnp.bool_(False))

  def step(p, s: StepState) -> StepState:
    beta, b = head(p, s.target)
    flat = interfacegan_step(s.z0.reshape(-1), beta, b, level_of(p, s, beta, b), family=family)
    z1 = flat.reshape(latent_shape)
    finite = jnp.all(jnp.isfinite(z1))
    z = jnp.where(s.done | ~finite, s.z, z1)
    return s._replace(z=z, it=jnp.where(s.done, s.it, jnp.int32(1)), done=jnp.bool_(True),
                      nonfinite=s.nonfinite | (~s.done & ~finite))

  def judge(pred, target):
    return obj.target_reached(pred, target, classification=classification, threshold=cfg.threshold,
                              tolerance=cfg.tolerance)

  def result(p, s: StepState) -> dict:
    g = p["generator"]
    ce = jnp.clip(gen.decode(g, s.z, s.decode_key), 0.0, 1.0)
    pred = f(p["predictor"], ce)
    success = judge(pred, s.target) & ~s.nonfinite
    beta, b = head(p, s.target)
    mean = lambda z: glm.inverse_link(family, jnp.sum(z.reshape(-1) * beta) + b)  # noqa: E731
    return {"counterfactual": ce, "prediction": pred, "success": success, "iterations": s.it,
            "status": status(success, s.nonfinite), "latent": s.z, "latent_original": s.z0,
            "reconstruction": jnp.clip(gen.decode(g, s.z0, s.decode_key), 0.0, 1.0),
            "head_original": mean(s.z0), "head_counterfactual": mean(s.z)}

  def validate(inputs, targets):
    x = np.asarray(inputs)
    if x.ndim >= 1 and x.shape[1:] == latent_shape:
      x = gen.check_latents(x, name="start latents")
    elif gen.encode is None:
      raise CfjaxInputError(f"generator {gen.name!r} has no encoder: give start latents of shape "
                            f"(N, {', '.join(map(str, latent_shape))}) instead of images")
    else:
      x = check_images(x, name="images", image_size=image_shape[:2], channels=image_shape[2])
    return x, spec.check(targets, len(x))

  settings = {**cfg.settings(), "task": task, "generator": gen.name, "latent_shape": list(latent_shape),
              "direction_heads": [heads.names[int(c)] for c in cols], "family": family}
  return Method(init=init, step=step, done=lambda s: s.done, result=result, params=params, max_steps=1,
                name="interfacegan", settings=settings, validate=validate)
