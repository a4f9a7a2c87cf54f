"""Counterfactual Attacks (Goldwasser & Hooker 2025): an adversarial attack on a generator's latent.

From the code z0 of an image (the generator's ``encode``; the paper's VAE uses the *sampled*
code) or a given latent, the attack takes optax steps (Adam as torch computes it, lr 0.1 by
default: :func:`cfjax.methods.optim.torch_adam`) on the
predictor's objective through ``decode`` and stops per example as soon as the target is reached:

* classification: objective ``-p(target)``, the softmax (or sigmoid, for one logit) probability,
  not its log (``loss="log_probability"`` takes ``-log p(target)`` instead: for a confident
  classifier that gives the target class ~1e-9, the probability's gradient is too small for
  Adam's epsilon and the attack stalls); stop once ``p(target) > threshold`` (strict). This is the paper's notebook
  (``generate_counterfactual``): evaluate, check, and only then step, so the returned latent is
  the one at which the threshold was crossed, after ``iterations`` Adam steps; without success
  all ``steps`` updates are taken and the last latent is returned.
* regression: objective ``sum (f(G(z)) - target)^2``; stop once every output is within
  ``tolerance`` of its target.

An optional ``lam * |z - z0|_1`` keeps the latent close (0 in the original). The predictor sees
the raw decoder output, as in the paper; the returned counterfactual is clipped to [0, 1] and
judged again. The latent is recorded every ``trajectory_every`` steps (a fixed-size buffer), so a
figure can show the path from the original to the counterfactual.

Attribute-restricted attacks: with attribute ``heads`` (:func:`cfjax.attribution.fit_heads`,
``cfjax fit-heads``), ``only="a,b"`` keeps every latent step in the span of those heads'
directions ("change the decision by changing only these attributes") and ``without="c"`` projects
their directions out of every step, so their heads' outputs stay where they started ("... without
changing that one"): the optimiser is wrapped by :func:`cfjax.attribution.restricted`. Results
then carry ``attribute_change``, the change ``phi`` of every head (its local importance).

Differences from the notebook: the notebook attacks one image at a time (batch element 0); here
every example has its own Adam state and stop, vmapped and continuously batched. Its
``converged`` flag is ``i != max_n_iter - 1`` (a crossing at the very last evaluation counts as
not converged); cfjax's ``success`` is the crossing itself.

Example:
  >>> import cfjax
  >>> attack = cfjax.methods.cf_attack(predictor=cfjax.load_predictor("shapes_classifier"),
  ...                                  generator=cfjax.load_generator("shapes_vae"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cfjax._validate import CfjaxInputError, check_images
from cfjax.attribution.importance import local_importance
from cfjax.methods import objectives as obj
from cfjax.methods.base import Method, MethodConfig, option, register_method
from cfjax.methods.models import TargetSpec, as_generator, as_predictor, output_shape, task_of
from cfjax.methods.optim import OPTIMIZERS, make_optimizer
from cfjax.methods.search import Search, init_search, recorded, search_step, status


CLASS_LOSSES = ("probability", "log_probability")


@dataclasses.dataclass(frozen=True)
class CfAttackConfig(MethodConfig):
  """Options of Counterfactual Attacks."""

  needs = ("predictor", "generator")
  tasks = ("classification", "regression")

  task: str | None = option(None, "classification or regression (default: the predictor's recorded task)",
                            type=str, choices=(None, "classification", "regression"))
  steps: int = option(1000, "optimiser steps at most (the original's max_n_iter)")
  lr: float = option(0.1, "learning rate")
  optimizer: str = option("torch_adam", "torch_adam (the original's Adam, in torch's float order), adam "
                          "(optax's), sgd, sign, or (Python) any optax transformation",
                          choices=tuple(OPTIMIZERS))
  loss: str = option("probability", "classification objective: probability (-p(target), the original's) "
                     "or log_probability (-log p(target), whose gradient does not vanish where a "
                     "confident classifier gives the target almost no probability)",
                     choices=CLASS_LOSSES)
  threshold: float = option(0.5, "classification: stop once p(target) > threshold")
  tolerance: float = option(0.05, "regression: stop once |f - target| <= tolerance")
  lam: float = option(0.0, "weight of |z - z0|_1 in the objective (0: the original's)")
  trajectory_every: int = option(10, "record the latent every k steps (0: no trajectory)")
  heads: Any = option(None, "attribute heads directory (cfjax fit-heads), or (Python) a Heads object: results "
                      "then carry every head's change attribute_change (phi)", type=str)
  only: str | None = option(None, "comma-separated attributes of --heads: every step stays in the span of "
                            "their directions (change the decision by changing only these)", type=str)
  without: str | None = option(None, "comma-separated attributes of --heads: their directions are "
                               "projected out of every step (their head outputs stay put)", type=str)


@register_method("cf-attack", CfAttackConfig)
def cf_attack(cfg: CfAttackConfig, *, predictor, generator) -> Method:
  """Counterfactual Attacks: optax steps on a generator's latent until the predictor reaches the
  target (a class beyond ``threshold``, or a value within ``tolerance``)."""
  pred_fn, gen = as_predictor(predictor), as_generator(generator)
  task = task_of(pred_fn, cfg.tasks, cfg.task)
  if cfg.steps < 1:
    raise CfjaxInputError(f"steps must be >= 1, got {cfg.steps}")
  if cfg.trajectory_every < 0:
    raise CfjaxInputError(f"trajectory_every must be >= 0, got {cfg.trajectory_every}")
  if task == "classification" and not 0.0 < cfg.threshold < 1.0:
    raise CfjaxInputError(f"threshold must be in (0, 1), got {cfg.threshold}")
  image_shape, latent_shape = tuple(gen.image_shape), tuple(gen.latent_shape)
  out = jax.eval_shape(lambda p, z: gen.decode(p, z, jax.random.key(0)), gen.params,
                       jax.ShapeDtypeStruct(latent_shape, jnp.float32))
  if tuple(out.shape) != image_shape:
    raise CfjaxInputError(f"the generator decodes to {tuple(out.shape)}, not its declared {image_shape}")
  spec = TargetSpec.of(task, output_shape(pred_fn, image_shape))
  f, classification = pred_fn.one, task == "classification"
  heads, optimizer = _restricted_optimizer(cfg, gen)
  params = {"predictor": pred_fn.params, "generator": gen.params}
  if heads is not None:
    params["heads"] = {"kernel": heads.params["kernel"], "bias": heads.params["bias"]}

  def judge(pred, target):
    return obj.target_reached(pred, target, classification=classification, threshold=cfg.threshold,
                              tolerance=cfg.tolerance)

  def objective(p, z, ctx, it):
    pred = f(p["predictor"], gen.decode(p["generator"], z, ctx["decode_key"]))
    t = ctx["target"]
    if not classification:
      loss = jnp.sum(obj.regression_loss(pred, t))
    elif cfg.loss == "probability":
      loss = -obj.class_probs(pred)[t]
    else:
      loss = obj.classification_loss(pred, t)
    if cfg.lam:
      loss = loss + cfg.lam * jnp.abs(z - ctx["z0"]).sum()
    return loss, {"pred": pred}

  search = Search(objective, lambda p, z, ctx, aux: (judge(aux["pred"], ctx["target"]), aux),
                  optimizer, cfg.steps, early_stop=True,
                  record_every=cfg.trajectory_every)

  def init(p, x, target, key):
    k_enc, k_dec = jax.random.split(key)
    # Static: a latent is taken as the start code, an image is encoded.
    z0 = x if tuple(x.shape) == latent_shape else gen.encode(p["generator"], x, k_enc)
    ctx = {"z0": z0, "target": target, "decode_key": k_dec}
    return init_search(search, z0, ctx, aux={"pred": jnp.zeros(spec.out_shape, jnp.float32)})

  def result(p, s) -> dict:
    g = p["generator"]
    ce = jnp.clip(gen.decode(g, s.z, s.ctx["decode_key"]), 0.0, 1.0)
    pred = f(p["predictor"], ce)
    success = judge(pred, s.ctx["target"]) & ~s.nonfinite
    out = {"counterfactual": ce, "prediction": pred, "success": success, "iterations": s.it,
           "status": status(success, s.nonfinite), "latent": s.z, "latent_original": s.ctx["z0"],
           "reconstruction": jnp.clip(gen.decode(g, s.ctx["z0"], s.ctx["decode_key"]), 0.0, 1.0)}
    if cfg.trajectory_every:
      out.update(trajectory=s.trajectory, trajectory_length=recorded(search, s))
    if heads is not None:
      h = dataclasses.replace(heads, params=p["heads"])
      out["attribute_change"] = local_importance(h, s.ctx["z0"], s.z)
    return out

  def validate(inputs, targets):
    x = np.asarray(inputs)
    if x.ndim >= 1 and x.shape[1:] == latent_shape:
      x = gen.check_latents(x, name="start latents")
    elif gen.encode is None:
      raise CfjaxInputError(f"generator {gen.name!r} has no encoder: give start latents of shape "
                            f"(N, {', '.join(map(str, latent_shape))}) instead of images")
    elif x.ndim == 1 + len(latent_shape) and x.ndim != 4:
      raise CfjaxInputError(f"start latents must have shape (N, {', '.join(map(str, latent_shape))}) "
                            f"for generator {gen.name!r}, got {x.shape}")
    else:
      x = check_images(x, name="images", image_size=image_shape[:2], channels=image_shape[2])
    return x, spec.check(targets, len(x))

  settings = {**cfg.settings(), "task": task, "generator": gen.name,
              "latent_shape": list(latent_shape)}
  if heads is not None:
    settings["head_names"] = list(heads.names)
  return Method(init=init, step=lambda p, s: search_step(search, p, s), done=lambda s: s.done,
                result=result, params=params, max_steps=cfg.steps, name="cf-attack",
                settings=settings, validate=validate)


def _restricted_optimizer(cfg: CfAttackConfig, gen):
  """The attack's heads (or None) and its optimiser, restricted to the ``only`` / ``without`` span."""
  from cfjax.attribution import attribute_restriction, load_heads, restricted
  optimizer = make_optimizer(cfg.optimizer, cfg.lr)
  heads = cfg.heads
  if isinstance(heads, str):
    heads = load_heads(heads)
  if heads is not None:
    heads.check_generator(gen)
  r = attribute_restriction(heads, only=cfg.only, without=cfg.without)
  return heads, optimizer if r is None else restricted(optimizer, r.space, r.mode)

