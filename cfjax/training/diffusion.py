"""DDPM training with guided-diffusion's objective, resumable, with EMA weights and sample grids.

The objective is guided-diffusion's ``training_losses`` (epsilon MSE plus the variational-bound
term that trains the learned-range variance), with timesteps drawn uniformly from the full
process. The state is ``{"params", "ema", "opt_state", "step", "rng"}``; one jitted step does
the update and the EMA. The run directory is that of :mod:`cfjax.training.loop` (``run.json``,
``log.jsonl``, ``checkpoints/``) plus ``samples/step_XXXXXXX.png`` grids, the final EMA model
``model/`` (a :func:`cfjax.checkpoint.save` directory with ``meta["kind"] == "diffusion"``) and
``metrics.json``.

Images enter as cfjax images in [0, 1]; :func:`to_model_range` is the one place they are mapped
to the diffusion range [-1, 1], and :func:`from_model_range` maps samples back.

Example:
  >>> import tempfile
  >>> from cfjax import nets
  >>> from cfjax.training import diffusion
  >>> cfg = nets.unet_config("squares32", channel_mult=[1, 2], attention_resolutions=[])
  >>> r = diffusion.train(dataset="squares", net=cfg, out=tempfile.mkdtemp(), steps=2,
  ...                     batch_size=4, sample_every=0, filter_images=0, progress=False)
  >>> sorted(r["metrics"])
  ['final_loss']
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cfjax import checkpoint
from cfjax import diffusion as dd
from cfjax._validate import CfjaxInputError, check_choice
from cfjax.nets import registry
from cfjax.training import loop

SAMPLERS = ("ddpm", "ddim")


def to_model_range(images: jax.Array) -> jax.Array:
  """cfjax images in [0, 1] -> the diffusion range [-1, 1] (the only place this map happens)."""
  return images * 2.0 - 1.0


def from_model_range(x: jax.Array) -> jax.Array:
  """Diffusion-range images -> [0, 1], clipped."""
  return jnp.clip((x + 1.0) * 0.5, 0.0, 1.0)


def optimizer(lr: float, *, weight_decay: float = 0.0, grad_clip: float | None = 1.0):
  """AdamW at a constant learning rate (guided-diffusion's), with optional global-norm clipping."""
  parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
  return optax.chain(*parts, optax.adamw(lr, weight_decay=weight_decay))


def init_state(config: dict, tx: optax.GradientTransformation, seed: int, *, params=None, step: int = 0) -> dict:
  """Training state: params (initialised from ``seed`` unless given), their EMA (starts equal),
  optimiser state, step, RNG key data."""
  if params is None:
    params = registry.init_params(config, seed)
  return {"params": params, "ema": jax.tree.map(jnp.copy, params), "opt_state": tx.init(params),
          "step": jnp.asarray(step, jnp.int32), "rng": jax.random.key_data(jax.random.key(seed + 1))}


def ema_decay(step: jax.Array, decay: float) -> jax.Array:
  """EMA decay at ``step``: ``min(decay, (1 + step) / (10 + step))``.

  The warm-up (as in timm / diffusers) lets a short CPU run have a useful EMA: a constant 0.9999
  would keep mostly the random initialisation for the first ten thousand steps.
  """
  s = step.astype(jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + s) / (10.0 + s))


def make_train_step(apply: Callable, tx: optax.GradientTransformation, sched: dd.Schedule, *,
                    ema: float = 0.9999, condition: Callable | None = None,
                    p2_gamma: float = 0.0, jit: bool = True) -> Callable:
  """``step(state, batch) -> (state, {"loss", "mse", "vb"})`` for batches ``{"image": [0, 1]}``.

  ``condition(params, x0) -> dict`` gives extra keyword arguments of ``apply`` computed from the
  clean batch in [-1, 1] (a diffusion autoencoder's ``{"cond": encode(params, x0)}``, trained
  jointly); without it the model is unconditional. ``p2_gamma > 0`` weights the epsilon MSE of
  each example by :func:`cfjax.diffusion.p2_weight` (``k = 1``) in the loss; the logged ``mse``
  stays unweighted.

  The timesteps and noise of step s come from ``fold_in(key(state["rng"]), s)``, so a resumed
  run draws exactly what an uninterrupted one would.

  Example:
    >>> import jax.numpy as jnp
    >>> from cfjax import nets, diffusion as dd
    >>> cfg = nets.unet_config("squares32", channel_mult=[1, 2], attention_resolutions=[])
    >>> tx = optimizer(1e-4)
    >>> step = make_train_step(nets.registry.make_apply(cfg), tx, dd.make_schedule(1000))
    >>> state, m = step(init_state(cfg, tx, 0), {"image": jnp.zeros((2, 32, 32, 3))})
    >>> int(state["step"]), sorted(m)
    (1, ['loss', 'mse', 'vb'])
  """
  num_t = int(sched.num_timesteps)

  def step(state, batch):
    x0 = to_model_range(jnp.asarray(batch["image"], jnp.float32))
    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    kt, kn = jax.random.split(key)
    t = jax.random.randint(kt, x0.shape[:1], 0, num_t, dtype=jnp.int32)
    noise = jax.random.normal(kn, x0.shape, jnp.float32)

    def objective(params):
      extra = condition(params, x0) if condition is not None else {}
      terms = dd.training_losses(sched, lambda x, tt: apply(params, x, tt, **extra), x0, t, noise)
      if p2_gamma:
        terms["loss"] = dd.p2_weight(sched, t, gamma=p2_gamma) * terms["mse"] + terms.get("vb", 0.0)
      terms = {k: jnp.mean(v) for k, v in terms.items()}
      return terms["loss"], terms

    (_, terms), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
    # optax's Adam bias correction computes float ** int32 count, which strict promotion rejects.
    with jax.numpy_dtype_promotion("standard"):
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    d = ema_decay(state["step"], ema)
    new_ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state["ema"], params)
    new = {"params": params, "ema": new_ema, "opt_state": opt_state, "step": state["step"] + 1,
           "rng": state["rng"]}
    return new, {k: terms[k] for k in ("loss", "mse", "vb") if k in terms}

  return jax.jit(step) if jit else step


def make_sampler(apply: Callable, *, steps: int, schedule: str, respacing: str = "50",
                 sampler: str = "ddpm", num: int = 16, image_size: int = 32,
                 channels: int = 3) -> Callable:
  """Jitted ``sample(params, key) -> (num, H, W, C)`` images in [0, 1], drawn from pure noise.

  ``sampler="ddpm"`` is ancestral sampling with the learned variance on the re-spaced process
  (what the ACE filter uses), ``"ddim"`` is DDIM with eta = 0 (``respacing`` e.g. "ddim50").

  Example:
    >>> import jax
    >>> from cfjax import nets
    >>> net = nets.build(nets.unet_config("squares32", channel_mult=[1, 2], attention_resolutions=[]))
    >>> sample = make_sampler(net.apply, steps=1000, schedule="linear", respacing="5", num=2)
    >>> sample(net.params, jax.random.key(0)).shape
    (2, 32, 32, 3)
  """
  check_choice("sampler", sampler, SAMPLERS)
  sched = dd.make_schedule(steps, schedule, respacing)
  shape = (num, image_size, image_size, channels)

  def sample(params, key):
    model_fn = lambda x, t: apply(params, x, t)  # noqa: E731
    if sampler == "ddpm":
      x = dd.ddpm_sample_loop(sched, model_fn, key, shape)
    else:
      x = dd.ddim_sample_loop(sched, model_fn, jax.random.normal(key, shape, jnp.float32),
                              mode="rolled")
    return from_model_range(x)

  return jax.jit(sample)


def image_grid(images: np.ndarray, *, ncol: int | None = None, pad: int = 2) -> np.ndarray:
  """Tiles (N, H, W, C) images in [0, 1] into one uint8 (rows, cols, C) image with white gaps.

  Example:
    >>> image_grid(np.zeros((6, 8, 8, 3)), ncol=3).shape
    (22, 32, 3)
  """
  images = np.asarray(images)
  n, h, w, c = images.shape
  ncol = ncol or int(np.ceil(np.sqrt(n)))
  nrow = int(np.ceil(n / ncol))
  grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
  u8 = (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)
  for i in range(n):
    r, q = divmod(i, ncol)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = u8[i]
  return grid


def save_grid(images: np.ndarray, path: str | os.PathLike, *, scale: int = 4, **kwargs) -> Path:
  """Writes :func:`image_grid` of ``images`` as a PNG, upscaled ``scale`` times (nearest)."""
  from PIL import Image
  grid = image_grid(images, **kwargs)
  grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
  return path


def image_stream(dataset: str, *, batch_size: int, seed: int, image_size: int,
                 **testbed_kwargs) -> Callable[[int], Iterator[dict]]:
  """``start_step -> iterator`` of ``{"image"}`` batches, deterministic given ``seed``.

  The predictor's stream (epoch e shuffled with seed + e; resuming replays to the start step),
  keeping only the images.
  """
  from cfjax.training.predictor import train_stream
  stream = train_stream(dataset, batch_size=batch_size, seed=seed, image_size=image_size,
                        **testbed_kwargs)
  return lambda start: ({"image": b["image"]} for b in stream(start))


def train(
    *,
    dataset: str,
    net: dict,
    out: str | os.PathLike,
    steps: int = 10000,
    batch_size: int = 32,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    ema: float = 0.9999,
    diffusion_steps: int = 1000,
    schedule: str = "linear",
    seed: int = 0,
    image_size: int = 32,
    testbed_kwargs: dict | None = None,
    sample_every: int = 0,
    sampler: str = "ddpm",
    sample_respacing: str = "50",
    num_samples: int = 16,
    checkpoint_every: int = 200,
    log_every: int = 50,
    filter_images: int | None = None,
    command: str | None = None,
    batches: Callable[[int], Iterator[dict]] | None = None,
    hooks: Sequence[Callable] = (),
    progress: bool = True,
) -> dict:
  """Trains (or resumes training) an epsilon/learned-variance DDPM and saves its EMA to ``out/model``.

  Args:
    dataset: any name of :func:`cfjax.data.load` (testbed options in ``testbed_kwargs``).
    net: UNet config (e.g. ``cfjax.nets.unet_config("squares32")``) with 6 output channels.
    out: run directory; re-running with the same settings resumes, other settings are an error
      (except ``steps``: the learning rate is constant, so a run can be extended).
    steps, batch_size, lr, weight_decay, grad_clip, seed: optimisation (AdamW, constant lr).
    ema: EMA decay (with the warm-up of :func:`ema_decay`); the saved model is the EMA.
    diffusion_steps, schedule: the diffusion process (T and "linear" / "cosine").
    sample_every: write a sample grid every this many steps (0: only the final one).
    sampler, sample_respacing, num_samples: how the grids are drawn (see :func:`make_sampler`).
    checkpoint_every, log_every: training-state checkpoints and log records.
    filter_images: squares only: how many validation-grid images the final filter measurement
      uses (None: all 630; 0: skip it).
    command: command line recorded in the model's meta.
    batches: override the data (``start_step -> iterator`` of ``{"image"}``).
    hooks: ``hook(step, state)`` after every step (e.g. to stop the run).

  Returns:
    ``{"model": path, "metrics": {...}, "state": final state, "step_fn": the jitted step}``.
  """
  check_choice("sampler", sampler, SAMPLERS)
  check_choice("beta schedule", schedule, dd.BETA_SCHEDULES)
  if steps < 1 or batch_size < 1:
    raise CfjaxInputError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
  if not 0.0 <= ema < 1.0:
    raise CfjaxInputError(f"ema must be in [0, 1), got {ema}")
  if net.get("out_channels") != 2 * net.get("in_channels", 3):
    raise CfjaxInputError("the UNet must predict epsilon and the variance (out_channels = 2 * in_channels)")
  testbed_kwargs = dict(testbed_kwargs or {})
  run = {"dataset": dataset, "net": net, "testbed": testbed_kwargs, "image_size": image_size,
         "steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
         "grad_clip": grad_clip, "ema": ema, "diffusion": {"steps": diffusion_steps, "schedule": schedule},
         "seed": seed}
  out = Path(out)
  # The learning rate is constant, so a run may be extended or cut short by changing ``steps``.
  loop.check_run_config(out, run, ignore=("steps",))
  if batches is None:
    batches = image_stream(dataset, batch_size=batch_size, seed=seed, image_size=image_size,
                           **testbed_kwargs)
  apply = registry.make_apply(net)
  sched = dd.make_schedule(diffusion_steps, schedule)
  tx = optimizer(lr, weight_decay=weight_decay, grad_clip=grad_clip)
  state = init_state(net, tx, seed)
  step_fn = make_train_step(apply, tx, sched, ema=ema)
  sample = make_sampler(apply, steps=diffusion_steps, schedule=schedule, respacing=sample_respacing,
                        sampler=sampler, num=num_samples, image_size=image_size,
                        channels=net.get("in_channels", 3))
  sample_key = jax.random.key(seed + 2)  # the same noise for every grid: progress is comparable

  def write_samples(step, st):
    path = out / "samples" / f"step_{step:07d}.png"
    save_grid(np.asarray(sample(st["ema"], sample_key)), path)
    return path

  all_hooks = list(hooks)
  if sample_every:
    all_hooks.insert(0, lambda s, st: write_samples(s, st) if s % sample_every == 0 else None)
  log = loop.JsonlLog(out / "log.jsonl")
  ckpts = loop.TrainCheckpoints(out / "checkpoints")
  if (ckpts.latest_step() or 0) > steps:
    ckpts.close()
    raise CfjaxInputError(f"{out} already holds a checkpoint at step {ckpts.latest_step()}, past steps={steps}")
  try:
    state = loop.train_loop(state, step_fn, batches, num_steps=steps, checkpoints=ckpts, log=log,
                            checkpoint_every=checkpoint_every, log_every=log_every, hooks=all_hooks,
                            progress=progress, desc=f"DDPM on {dataset}")
  finally:
    ckpts.close()
  grid = write_samples(steps, state)
  # A killed run may have logged steps past its last checkpoint; those were redone (or dropped).
  records = [r for r in log.read() if "loss" in r and r["step"] <= steps]
  metrics: dict[str, Any] = {"final_loss": records[-1]["loss"] if records else None}
  if dataset == "squares" and filter_images != 0:
    metrics["filter"] = squares_filter_quality(
        apply, state["ema"], diffusion_steps=diffusion_steps, schedule=schedule,
        image_size=image_size, limit=filter_images, seed=seed)
  log.write({"step": steps, "eval": metrics})
  meta = {"kind": "diffusion", "diffusion": {"steps": diffusion_steps, "schedule": schedule},
          "dataset": dataset, "testbed": testbed_kwargs, "image_size": image_size,
          "train_steps": steps, "batch_size": batch_size, "ema": ema, "command": command,
          "metrics": metrics}
  model = checkpoint.save(out / "model", net, state["ema"], meta=meta, overwrite=True)
  (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
  return {"model": model, "metrics": metrics, "state": state, "step_fn": step_fn, "grid": grid}


def _filter_fn(apply, sched: dd.Schedule, tau: int):
  """Jitted ``(params, images01, keys) -> filtered images01``: ACE's F_tau with per-image noise."""
  from cfjax.methods.ace import ace_filter

  def run(params, images, keys):
    x = to_model_range(images)
    noise_q = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), x.shape[1:]))(keys)
    noise_steps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), (tau,) + x.shape[1:]),
                           out_axes=1)(keys)
    y = ace_filter(sched, lambda h, t: apply(params, h, t), x, tau, noise_q, noise_steps)
    return from_model_range(y)

  return jax.jit(run)


def squares_filter_quality(apply: Callable, params, *, diffusion_steps: int = 1000,
                           schedule: str = "linear", respacing: str = "50", tau: int = 5,
                           image_size: int = 32, limit: int | None = None, seed: int = 0,
                           batch_size: int = 64) -> dict:
  """How ACE's noise-and-denoise filter F_tau treats the squares validation grids.

  Runs F_tau (``q_sample`` to re-spaced step tau - 1, tau ancestral steps; AC-RE's squares
  setting is 1000 steps re-spaced to 50 with tau = 5, i.e. original t <= 82) on the lower and
  upper grids (630 images) and compares input and output in [0, 255] units. A good filter keeps
  the square's colour and position and the background level; it resamples the pixel noise.

  Returns:
    dict with ``interior_red_mae`` (pixel-wise |change| of the red interior),
    ``interior_red_shift`` (|change of the interior's mean red|, per image, averaged),
    ``frac_interior_kept_16`` (images whose interior mean red moves by < 16),
    ``interior_red_mean_before`` / ``_after``, ``border_mae`` (the grey ring, all channels:
    large if the square moves), ``background_mae`` (pixel-wise, all channels),
    ``background_level_shift`` (|change of the background's mean|, per image),
    ``reference_noise_resample_mae`` (pixel MAE between two noise draws of the same image, the
    floor of a filter that resamples the noise), per-grid ``*_lower`` / ``*_upper`` shifts, and
    the settings.

  Example:
    >>> from cfjax import nets
    >>> net = nets.build(nets.unet_config("squares32", channel_mult=[1, 2], attention_resolutions=[]))
    >>> q = squares_filter_quality(net.apply, net.params, limit=4, tau=2)
    >>> 0 <= q["frac_interior_kept_16"] <= 1
    True
  """
  import importlib

  from cfjax.metrics.testbeds import squares_regions
  sq = importlib.import_module("cfjax.data.squares")  # the module; cfjax.data.squares is a function
  sq.geometry(image_size)
  sched = dd.make_schedule(diffusion_steps, schedule, respacing)
  if not 1 <= tau <= sched.num_timesteps:
    raise CfjaxInputError(f"tau must be in [1, {sched.num_timesteps}], got {tau}")
  filt = _filter_fn(apply, sched, tau)
  base = jax.random.key(seed + 3)
  per: dict[str, dict] = {}
  for which in ("lower", "upper"):
    grid = sq.squares_grid(which, image_size=image_size)
    n = len(grid["image"]) if limit is None else min(int(limit), len(grid["image"]))
    imgs = grid["image"][:n]
    ids = np.arange(n) + (0 if which == "lower" else 10_000)
    bs = min(batch_size, n)
    outs = []
    for i in range(0, n, bs):
      chunk, cid = imgs[i:i + bs], ids[i:i + bs]
      pad = bs - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
        cid = np.concatenate([cid, np.repeat(cid[-1:], pad)])
      keys = jax.vmap(lambda j: jax.random.fold_in(base, j))(jnp.asarray(cid, jnp.int32))
      outs.append(np.asarray(filt(params, jnp.asarray(chunk), keys))[:bs - pad])
    after = np.concatenate(outs) * 255.0
    before = imgs * 255.0
    regions = squares_regions(grid["x"][:n], grid["y"][:n], image_size)
    inner, ring, bg = regions["interior"], regions["border"], regions["background"]
    resampled = sq.render(grid["color_a"][:n], grid["color_b"][:n], grid["x"][:n], grid["y"][:n],
                          np.random.default_rng(seed + 4).standard_normal(before.shape, np.float32)
                          * np.float32(sq.NOISE_STD), image_size).astype(np.float32)

    def region_mean(a, m):  # per image mean over a (n, H, W) mask
      return (a * m).sum((1, 2)) / m.sum((1, 2))

    red_b, red_a = region_mean(before[..., 0], inner), region_mean(after[..., 0], inner)
    dabs = np.abs(after - before)
    per[which] = dict(
        interior_red_abs=region_mean(dabs[..., 0], inner), red_before=red_b, red_after=red_a,
        border_abs=region_mean(dabs.mean(-1), ring), bg_abs=region_mean(dabs.mean(-1), bg),
        bg_shift=np.abs(region_mean(after.mean(-1), bg) - region_mean(before.mean(-1), bg)),
        ref=region_mean(np.abs(resampled - before).mean(-1), bg))
  cat = {k: np.concatenate([per[w][k] for w in per]) for k in per["lower"]}
  shift = np.abs(cat["red_after"] - cat["red_before"])
  res = dict(
      interior_red_mae=float(cat["interior_red_abs"].mean()), interior_red_shift=float(shift.mean()),
      frac_interior_kept_16=float((shift < 16).mean()),
      interior_red_mean_before=float(cat["red_before"].mean()),
      interior_red_mean_after=float(cat["red_after"].mean()),
      border_mae=float(cat["border_abs"].mean()), background_mae=float(cat["bg_abs"].mean()),
      background_level_shift=float(cat["bg_shift"].mean()),
      reference_noise_resample_mae=float(cat["ref"].mean()),
      num_images=int(len(shift)), diffusion_steps=diffusion_steps, schedule=schedule,
      respacing=respacing, tau=tau)
  for w in per:
    res[f"interior_red_shift_{w}"] = float(np.abs(per[w]["red_after"] - per[w]["red_before"]).mean())
  return res
