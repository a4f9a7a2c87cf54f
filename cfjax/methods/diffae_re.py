"""Diff-AE-RE (Ha & Bender 2025): counterfactuals in the semantic latent space of a diffusion autoencoder.

The latent-space counterpart of AC-RE. Per example, once at init: the semantic code
``z0 = encoder(x)`` and the stochastic code ``x_T`` (DDIM inversion of x conditioned on z0). Then
only z_sem is optimised (Adam, lr 0.002), from z0; each step decodes ``x' = render(x_T, z)`` with
conditional DDIM (``decode_steps`` = 10, eta 0), differentiating through every decoding step,
clips x' to [0, 1] with a straight-through gradient and takes the per-example loss

* regression: ``mean (f(x') - target)^2 + lam * |z - z0|_1`` (lam 1e-5), stop once every output
  is within ``tolerance`` (0.05) of its target;
* classification: the cross-entropy of the target class ``+ lam * |z - z0|_1``, stop once
  ``p(target) > threshold``.

At most ``steps`` (200) updates. ``mode="rolled"`` decodes with ``lax.scan`` and ``jax.checkpoint``
per step, so the memory of the backward pass stays flat in ``decode_steps``; ``"unrolled"``
(default) is a Python loop, faster to run and slower to compile. Results carry the Diff-AE's own
reconstruction ``render(x_T, z0)``: the counterfactual minus it is what the edit changed, apart
from the autoencoder's reconstruction error. ``latent`` is z_sem and ``latent_fixed`` the flattened
x_T, so ``concat(latent, latent_fixed)`` is the Diff-AE generator's latent of the counterfactual.

Example:
  >>> import cfjax
  >>> m = cfjax.methods.diffae_re(predictor=cfjax.load_predictor("squares_regressor_rho0"),
  ...                             generator=cfjax.load_generator("squares_diffae"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from cfjax._validate import CfjaxInputError, check_images
from cfjax.generators.diffae import diffae_schedule
from cfjax.methods import objectives as obj
from cfjax.methods.base import Method, MethodConfig, option, register_method
from cfjax.methods.models import TargetSpec, as_generator, as_predictor, output_shape, task_of
from cfjax.methods.optim import OPTIMIZERS, make_optimizer
from cfjax.methods.search import Search, init_search, recorded, search_step, status

MODES = ("unrolled", "rolled")


@dataclasses.dataclass(frozen=True)
class DiffaeReConfig(MethodConfig):
  """Options of Diff-AE-RE."""

  needs = ("predictor", "generator")
  tasks = ("regression", "classification")

  task: str | None = option(None, "regression or classification (default: the predictor's recorded task)",
                            type=str, choices=(None, "regression", "classification"))
  steps: int = option(200, "optimiser steps at most")
  lr: float = option(0.002, "learning rate")
  optimizer: str = option("adam", "adam (optax's), torch_adam, sgd, sign, or (Python) any optax "
                          "transformation", choices=tuple(OPTIMIZERS))
  lam: float = option(1e-5, "weight of |z_sem - z_sem0|_1 in the loss")
  tolerance: float = option(0.05, "regression: stop once |f - target| <= tolerance")
  threshold: float = option(0.5, "classification: stop once p(target) > threshold")
  decode_steps: int = option(10, "DDIM steps of the decoder, differentiated through")
  encode_steps: int | None = option(None, "DDIM inversion steps at init (default: decode_steps)", type=int)
  mode: str = option("unrolled", "decoder chain: unrolled (fast) or rolled (lax.scan + jax.checkpoint, "
                     "memory flat in decode_steps)", choices=MODES)
  trajectory_every: int = option(10, "record z_sem every k steps (0: no trajectory)")


def _diffae_of(gen):
  """The :class:`cfjax.generators.diffae.DiffAE` functions behind a Diff-AE generator."""
  model = gen.meta.get("diffae")
  if model is None:
    raise CfjaxInputError(f"diffae-re needs a diffusion autoencoder (e.g. cfjax.load_generator("
                          f"'squares_diffae')); generator {gen.name!r} is not one")
  return model


def _check(cfg: DiffaeReConfig, task: str) -> None:
  for name in ("steps", "decode_steps"):
    if getattr(cfg, name) < 1:
      raise CfjaxInputError(f"{name} must be >= 1, got {getattr(cfg, name)}")
  if cfg.encode_steps is not None and cfg.encode_steps < 1:
    raise CfjaxInputError(f"encode_steps must be >= 1, got {cfg.encode_steps}")
  if cfg.trajectory_every < 0:
    raise CfjaxInputError(f"trajectory_every must be >= 0, got {cfg.trajectory_every}")
  if task == "classification" and not 0.0 < cfg.threshold < 1.0:
    raise CfjaxInputError(f"threshold must be in (0, 1), got {cfg.threshold}")


def _straight_through_clip(x):
  return x + jax.lax.stop_gradient(jnp.clip(x, 0.0, 1.0) - x)


@register_method("diffae-re", DiffaeReConfig)
def diffae_re(cfg: DiffaeReConfig, *, predictor, generator) -> Method:
  """Diff-AE-RE: Adam on the semantic code z_sem of a diffusion autoencoder, decoded by DDIM from
  the image's own inverted x_T, until the predictor reaches the target."""
  pred_fn, gen = as_predictor(predictor), as_generator(generator)
  dae = _diffae_of(gen)
  task = task_of(pred_fn, cfg.tasks, cfg.task)
  _check(cfg, task)
  image_shape = tuple(gen.image_shape)
  enc_steps = cfg.encode_steps or cfg.decode_steps
  for n in (enc_steps, cfg.decode_steps):  # a step count the schedule cannot give fails here
    diffae_schedule(n, int(dae.diffusion["steps"]), str(dae.diffusion["schedule"]))
  spec = TargetSpec.of(task, output_shape(pred_fn, image_shape))
  f, classification = pred_fn.one, task == "classification"
  params = {"predictor": pred_fn.params, "generator": gen.params}

  def render(p, x_T, z):
    return _straight_through_clip(dae.render(p["generator"], x_T, z, cfg.decode_steps, mode=cfg.mode))

  def judge(pred, target):
    return obj.target_reached(pred, target, classification=classification, threshold=cfg.threshold,
                              tolerance=cfg.tolerance)

  def objective(p, z, ctx, it):
    pred = f(p["predictor"], render(p, ctx["x_T"], z))
    t = ctx["target"]
    loss = obj.classification_loss(pred, t) if classification else jnp.mean(obj.regression_loss(pred, t))
    return loss + cfg.lam * jnp.abs(z - ctx["z0"]).sum(), {"pred": pred}

  search = Search(objective, lambda p, z, ctx, aux: (judge(aux["pred"], ctx["target"]), aux),
                  make_optimizer(cfg.optimizer, cfg.lr), cfg.steps, early_stop=True,
                  record_every=cfg.trajectory_every)

  def init(p, x, target, key):
    g = p["generator"]
    z0 = dae.semantic_encode(g, x)
    x_T = dae.stochastic_encode(g, x, z0, enc_steps, mode=cfg.mode)
    ctx = {"z0": z0, "x_T": x_T, "target": target}
    return init_search(search, z0, ctx, aux={"pred": jnp.zeros(spec.out_shape, jnp.float32)})

  def result(p, s) -> dict:
    ce = render(p, s.ctx["x_T"], s.z)
    pred = f(p["predictor"], ce)
    success = judge(pred, s.ctx["target"]) & ~s.nonfinite
    out = {"counterfactual": ce, "prediction": pred, "success": success, "iterations": s.it,
           "status": status(success, s.nonfinite), "latent": s.z, "latent_original": s.ctx["z0"],
           "latent_fixed": s.ctx["x_T"].reshape(-1), "reconstruction": render(p, s.ctx["x_T"], s.ctx["z0"])}
    if cfg.trajectory_every:
      out.update(trajectory=s.trajectory, trajectory_length=recorded(search, s))
    return out

  def validate(inputs, targets):
    x = check_images(np.asarray(inputs), name="images", image_size=image_shape[:2], channels=image_shape[2])
    return x, spec.check(targets, len(x))

  settings = {**cfg.settings(), "task": task, "generator": gen.name, "encode_steps": enc_steps}
  return Method(init=init, step=lambda p, s: search_step(search, p, s), done=lambda s: s.done,
                result=result, params=params, max_steps=cfg.steps, name="diffae-re",
                settings=settings, validate=validate, steps_per_call=1)
