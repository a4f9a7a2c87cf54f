"""ACE (Jeanneret et al., CVPR 2023) and its regression variant AC-RE (Ha & Bender 2025).

Both optimise a pre-explanation x' through the DDPM filter F_tau: noise x' to re-spaced step
tau - 1 (``q_sample`` of the re-spaced process), then tau ancestral denoising steps with fresh
noise every iteration; the gradient of ``loss(f(F_tau(x'))) + lambda * d(x', x)`` flows through
the whole chain (UNet, clamp of x0, posterior mean and the learned noise scale). Then a mask of
what changed (channel-summed |x - x'|, normalised by its max, max-pool dilated, threshold) and a
RePaint-style refinement over the same tau steps that keeps the original outside the mask.

Per-example objective (cfjax) versus the original: ACE's ``main.py`` averages the class loss over
the batch but sums the distance over the batch (``dist_l1 * |x - x'|.sum()``), so with sign-PGD
its per-image trade-off is ``(1/B) * class + dist_l1 * d``. cfjax's loss is per example,
``class + lambda * d``: the original run at batch size B with ``dist_l1 = l`` is cfjax's
``lambda = B * l``, and cfjax's results do not depend on the batch size.

Refinement noise (``refine_noise``). The attack judges the pre-explanation on one noisy sample
F_tau(x') and the original code refines with *fresh* noise, i.e. on another sample of the same
distribution. On the bundled testbeds that second sample often loses the target (the prediction
of F_tau(x') varies with the noise by about the tolerance, and the stop selects a lucky draw):
measured on 16 lower squares grid images with AC-RE, 31% of refined CEs within 0.05 with fresh
noise, 88% with the attack's noise (100% with ``margin=0.02``); ACE on 16 shapes with early stop,
6/16 flips with fresh noise, 16/16 with the attack's. cfjax therefore refines by default with
the noise draws of the attack's last evaluation (``"attack"``): where the mask regenerates the
image, the refinement reproduces the sample that was judged, and the original pixels are kept
outside the mask as before. ``refine_noise="fresh"`` gives the original behaviour.

Defaults. AC-RE's defaults are the settings whose validity the project reports (README,
``benchmarks/validity.py``): the paper's squares setting (tau 5 of 50 re-spaced steps, step 2/255,
100 iterations, tolerance 0.05, mask dilation 5), with the early stop judging the refined CE
(``stop_check="refined"``) and the l1 weight 0.003. ACE's are the original's (tau 5, 50 iterations
of step 1/255, l1 weight 0.001 per example, no early stop, mask dilation 15).

Example:
  >>> import cfjax
  >>> acre = cfjax.methods.acre(predictor=cfjax.load_predictor("squares_regressor_rho0"),
  ...                           diffusion=cfjax.load_diffusion("squares_ddpm"))
  >>> acre.settings["stop_check"], acre.settings["lam"]
  ('refined', 0.003)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cfjax._validate import CfjaxInputError
from cfjax.diffusion.gaussian import q_sample
from cfjax.diffusion.samplers import MODES as CHAIN_MODES, ddpm_chain, ddpm_step, run_chain
from cfjax.diffusion.schedules import Schedule
from cfjax.methods import objectives as obj
from cfjax.methods.base import Method, MethodConfig, option, register_method
from cfjax.methods.models import TargetSpec, as_diffusion, as_predictor, image_validator, output_shape, task_of
from cfjax.methods.optim import OPTIMIZERS, make_optimizer
from cfjax.methods.search import Search, init_search, search_step, status

REFINE_NOISE = ("fresh", "attack")
STOP_CHECKS = ("filter", "refined")

# ---------------------------------------------------------------------------------------------
# The filter F_tau and the refinement, with explicit noise (what the fixtures check).
# ---------------------------------------------------------------------------------------------

def ace_filter(sched: Schedule, model_fn, x, tau: int, noise_q, noise_steps, *, mode="unrolled",
               variance: str = "learned_range"):
  """F_tau in the diffusion range [-1, 1]: q_sample to re-spaced step tau - 1, then tau steps.

  Args:
    x: image(s) in [-1, 1], (..., H, W, C).
    noise_q: noise of the ``q_sample``.
    noise_steps: (tau, ..., H, W, C); ``noise_steps[k]`` is added after denoising at step k
      (``noise_steps[0]`` is never used).
  """
  k0 = jnp.full(x.shape[:-3], tau - 1, jnp.int32)
  xt = q_sample(sched, x, k0, noise_q)
  return ddpm_chain(sched, model_fn, xt, tau - 1, noise_steps, mode=mode, variance=variance)


def generate_mask(x, pe, dilation: int, threshold: float):
  """ACE's ``generate_mask`` on [0, 1] images (..., H, W, C).

  Returns ``(mask, dil_mask, boolmask)`` of shape (..., H, W): the channel-summed |x - pe| over
  its per-image max (identical images give 0, not NaN as upstream), its max-pool dilation
  (kernel ``dilation``, stride 1, padding (dilation - 1) // 2) and ``dil_mask < threshold``
  (1 = pixel stays original).
  """
  m = jnp.abs(x - pe).sum(-1)
  mx = m.max(axis=(-2, -1), keepdims=True)
  m = jnp.where(mx > 0, m / jnp.where(mx > 0, mx, 1.0), 0.0)
  pad = (dilation - 1) // 2
  lead = m.ndim - 2
  dil = jax.lax.reduce_window(
      m, -jnp.inf, jax.lax.max, (1,) * lead + (dilation, dilation), (1,) * (lead + 2),
      [(0, 0)] * lead + [(pad, dilation - 1 - pad)] * 2)
  return m, dil, (dil < threshold).astype(x.dtype)


def repaint(sched: Schedule, model_fn, x, pe, boolmask, tau: int, noise_q, noise_orig, noise_steps, *,
            mode="unrolled", variance: str = "learned_range"):
  """ACE's refinement (``main.py: filter_fn``) on [0, 1] images; returns the CE in [0, 1].

  The kept region (``boolmask == 1``) is overwritten with ``q_sample(orig, k)`` at the level k that
  is about to be denoised, at every step including the first; the exact original is pasted at the
  end. ``noise_orig[k]`` and ``noise_steps[k]`` are indexed by re-spaced step.
  """
  orig, ce = x * 2 - 1, pe * 2 - 1
  keep = boolmask[..., None]
  k0 = jnp.full(x.shape[:-3], tau - 1, jnp.int32)
  ce = q_sample(sched, ce, k0, noise_q)

  def body(h, k, noises):
    n_orig, n_step = noises
    h = h * (1 - keep) + keep * q_sample(sched, orig, k, n_orig)
    return ddpm_step(sched, model_fn, h, k, n_step, variance=variance).sample

  ks = np.arange(tau - 1, -1, -1)
  ce = run_chain(body, ce, ks, (noise_orig[ks], noise_steps[ks]), mode=mode)
  ce = ce * (1 - keep) + keep * orig
  return jnp.clip(ce * 0.5 + 0.5, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# The method: pure per-example init / step / done / result.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AceConfig(MethodConfig):
  """Options of ACE (classifiers)."""

  needs = ("predictor", "diffusion")
  tasks = ("classification",)

  tau: int = option(5, "denoising steps of the filter F_tau (ACE: int(0.2 * 25) = 5)")
  respacing: str | None = option(None, "re-spacing of the DDPM (default 50 steps for 1000, else 25)", type=str)
  iterations: int = option(50, "PGD iterations (updates) at most")
  step_size: float = option(1 / 255, "update step in [0, 1] units (2/255 = 0.00784)")
  optimizer: str = option("sign", "sign (sign-PGD), sgd, adam, or (Python) any optax transformation",
                          choices=tuple(OPTIMIZERS))
  dist: str = option("l1", "proximity: l1 (sum |x' - x|) or l2 (Euclidean norm), per example",
                     choices=obj.DISTANCES, label="distance")
  lam: float | None = option(None, "proximity weight (default 0.001 for l1, 0.1 for l2)", type=float)
  early_stop: bool = option(False, "stop an image once its judged prediction meets the target")
  margin: float = option(0.0, "early-stop margin: p(target) lead (ace) or tolerance - margin (acre)")
  mask_dilation: int = option(15, "max-pool dilation of the refinement mask (odd)")
  mask_threshold: float = option(0.15, "threshold of the dilated, normalised change")
  chain_mode: str = option("unrolled", "unrolled (fast on CPU) or rolled (memory flat in tau)",
                           choices=CHAIN_MODES, label="chain mode")
  refine_noise: str = option("attack", "refinement noise: the attack's last draws or fresh (original)",
                             choices=REFINE_NOISE)
  stop_check: str = option("filter", "early stop judges the filtered sample or the refined CE",
                           choices=STOP_CHECKS)


@dataclasses.dataclass(frozen=True)
class AcreConfig(AceConfig):
  """Options of AC-RE (regressors); defaults are the settings the project's validity figures use."""

  tasks = ("regression",)

  iterations: int = option(100, "PGD iterations (updates) at most")
  step_size: float = option(2 / 255, "update step in [0, 1] units (2/255 = 0.00784)")
  lam: float | None = option(0.003, "proximity weight (0.003 keeps the squares background in place)",
                             type=float)
  early_stop: bool = option(True, "stop an image once |f - target| <= tolerance - margin")
  mask_dilation: int = option(5, "max-pool dilation of the refinement mask (odd)")
  stop_check: str = option("refined", "early stop judges the refined CE (default) or the filtered sample",
                           choices=STOP_CHECKS)
  tolerance: float = option(0.05, "success: |f(x') - target| <= tolerance")


def _check(cfg: AceConfig, n_steps: int, task: str) -> None:
  if not 1 <= cfg.tau <= n_steps:
    raise CfjaxInputError(f"tau={cfg.tau} must be in [1, {n_steps}], the length of the re-spaced chain")
  if cfg.iterations < 1:
    raise CfjaxInputError(f"iterations must be >= 1, got {cfg.iterations}")
  if cfg.mask_dilation < 1 or cfg.mask_dilation % 2 == 0:
    raise CfjaxInputError(f"mask_dilation must be a positive odd number, got {cfg.mask_dilation}")
  tolerance = getattr(cfg, "tolerance", 0.05)
  if task == "regression" and not 0.0 <= cfg.margin < tolerance:
    raise CfjaxInputError(f"margin={cfg.margin} must be in [0, tolerance={tolerance}) for regression")


def diffusion_counterfactual(cfg: AceConfig, *, predictor, diffusion, name: str) -> Method:
  """The shared builder of ACE and AC-RE (the task is the config's only task)."""
  (task,) = type(cfg).tasks
  pred_fn = as_predictor(predictor)
  task_of(pred_fn, (task,))
  ddpm = as_diffusion(diffusion)
  schedule = ddpm.schedule(cfg.respacing)
  _check(cfg, schedule.num_timesteps, task)
  tau, dist, chain_mode, variance = cfg.tau, cfg.dist, cfg.chain_mode, ddpm.variance
  lam = cfg.lam if cfg.lam is not None else {"l1": 0.001, "l2": 0.1}[dist]
  tolerance, margin = getattr(cfg, "tolerance", 0.05), cfg.margin
  size = ddpm.image_size or pred_fn.meta.get("image_size")
  image_shape = (int(size), int(size), 3)
  spec = TargetSpec.of(task, output_shape(pred_fn, image_shape))
  u_apply, f = ddpm.net.apply, pred_fn.one
  classification = task == "classification"
  params = {"predictor": pred_fn.params, "unet": ddpm.net.params, "schedule": schedule}

  def criterion(pred, target, margin=margin):
    # Early stopping may ask for a margin; success of the final CE is the decision itself
    # (classification) or |f - target| <= tolerance (regression).
    if classification:
      return obj.class_margin(pred, target) > margin
    return jnp.all(jnp.abs(pred - target) <= tolerance - margin)

  def noises(key, shape):
    kq, ks = jax.random.split(key)
    return jax.random.normal(kq, shape), jax.random.normal(ks, (tau,) + shape)

  def model_fn(p):
    # The UNet is a batched NHWC function; one example goes through as a batch of one (under vmap
    # the batch axis of the vmapped convolution becomes the real batch).
    return lambda x, t: u_apply(p["unet"], x[None], t[None])[0]

  def filtered(p, x, key):
    nq, ns = noises(key, x.shape)
    y = ace_filter(p["schedule"], model_fn(p), x * 2 - 1, tau, nq, ns, mode=chain_mode, variance=variance)
    return y * 0.5 + 0.5

  def refine(p, x0, pe, eval_key, refine_key):
    # The mask and RePaint; the noise is the evaluation's ("attack") or the image's own ("fresh").
    _, _, boolmask = generate_mask(x0, pe, cfg.mask_dilation, cfg.mask_threshold)
    kn, ko = jax.random.split(refine_key)
    nq, ns = noises(eval_key if cfg.refine_noise == "attack" else kn, x0.shape)
    ce = repaint(p["schedule"], model_fn(p), x0, pe, boolmask, tau, nq,
                 jax.random.normal(ko, (tau,) + x0.shape), ns, mode=chain_mode, variance=variance)
    return ce, boolmask

  def objective(p, x, ctx, it):
    key = jax.random.fold_in(ctx["key"], it)
    pred = f(p["predictor"], filtered(p, x, key))
    t = ctx["target"]
    loss = obj.classification_loss(pred, t) if classification else jnp.sum(obj.regression_loss(pred, t))
    return loss + lam * obj.distance(dist, x, ctx["x0"]), {"pred": pred, "eval_key": key}

  def reached(p, x, ctx, aux):
    if cfg.stop_check == "refined":
      # Judge the CE that result() would return for this x' (same mask, same noise).
      aux = {**aux, "pred": f(p["predictor"], refine(p, ctx["x0"], x, aux["eval_key"], ctx["refine_key"])[0])}
    return criterion(aux["pred"], ctx["target"]), aux

  search = Search(objective, reached, make_optimizer(cfg.optimizer, cfg.step_size), cfg.iterations,
                  early_stop=cfg.early_stop, project=lambda x: jnp.clip(x, 0.0, 1.0))

  def init(p, x, target, key):
    k_attack, k_refine = jax.random.split(key)
    ctx = {"x0": x, "target": target, "key": k_attack, "refine_key": k_refine}
    aux = {"pred": f(p["predictor"], x), "eval_key": jax.random.fold_in(k_attack, 0)}
    return init_search(search, x, ctx, aux=aux)

  def result(p, s) -> dict:
    ce, boolmask = refine(p, s.ctx["x0"], s.z, s.aux["eval_key"], s.ctx["refine_key"])
    pred = f(p["predictor"], ce)
    success = criterion(pred, s.ctx["target"], 0.0) & ~s.nonfinite
    return {"counterfactual": ce, "pre_explanation": s.z, "mask": 1.0 - boolmask,
            "prediction": pred, "pre_prediction": s.aux["pred"], "success": success,
            "iterations": s.it, "status": status(success, s.nonfinite)}

  settings = {**cfg.settings(), "task": task, "lam": lam, "tolerance": tolerance,
              "respacing": ddpm.respacing(cfg.respacing),
              "schedule_steps": schedule.num_timesteps, "variance": variance}
  return Method(init=init, step=lambda p, s: search_step(search, p, s), done=lambda s: s.done,
                result=result, params=params, max_steps=cfg.iterations, name=name,
                settings=settings, validate=image_validator(image_shape, spec), steps_per_call=1)


@register_method("ace", AceConfig)
def ace(cfg: AceConfig, *, predictor, diffusion) -> Method:
  """ACE (Jeanneret et al. 2023) for classifiers: class loss towards a target class through the
  DDPM filter, l1/l2 proximity, sign-PGD, then the mask and RePaint refinement.

  ``predictor`` maps (N, H, W, 3) images in [0, 1] to one logit (N,) (binary) or logits (N, K);
  ``diffusion`` is a :class:`cfjax.DiffusionModel`. The proximity weight is per example (see the
  module docstring for how it relates to the original's batch-summed distance).
  """
  return diffusion_counterfactual(cfg, predictor=predictor, diffusion=diffusion, name="ace")


@register_method("acre", AcreConfig)
def acre(cfg: AcreConfig, *, predictor, diffusion) -> Method:
  """AC-RE (Ha & Bender 2025) for regressors: MSE to a target value through the DDPM filter,
  per-image early stop at ``|f - target| <= tolerance - margin``, then ACE's refinement.

  The proximity term (l1, ``lam = 0.003`` per pixel by default): with sign-PGD it is what keeps
  pixels whose loss gradient is weaker than ``lam`` oscillating around the original, so the
  refinement mask stays on what matters (with ``lam = 0`` every pixel drifts and the mask covers
  the whole image). ``stop_check="refined"`` judges the refined CE, so every CE that stopped
  meets the target; ``margin`` tightens the stop; ``refine_noise`` is described in the module
  docstring. Targets may be vectors for a multi-output regressor (all outputs within tolerance).
  """
  return diffusion_counterfactual(cfg, predictor=predictor, diffusion=diffusion, name="acre")
