"""Diff-AE training: a semantic encoder and a z_sem-conditioned UNet, trained jointly, resumably.

The objective is Diff-AE's: the epsilon MSE of the conditioned UNet on the 1000-step process, with
z_sem = encoder(x0) computed inside the loss so that the encoder learns what the UNet needs
(``training_losses`` of ``diffusion/base.py`` with ``model_kwargs={"x_start": x0}``). Optimiser,
EMA and data stream are those of :mod:`cfjax.training.diffusion`; the saved model is the EMA, a
``cfjax.checkpoint`` directory with ``meta["generator"] == "diffae"``, so
``cfjax.load_generator(run_dir)`` builds the Diff-AE generator from it.

What is measured (``metrics.json``), on the validation images (squares: the lower and upper grids):

* ``recon_*``: encode -> stochastic encode (DDIM inversion) -> DDIM render, the autoencoding round
  trip with ``T_eval`` steps (``mae_255``, and for squares ``interior_red_mae_255`` and the twin gap);
* ``semantic_*``: render from fresh noise x_T with the image's z_sem: how much of the image z_sem
  alone carries (for squares: whether the square's colour, the factor AC-RE and Diff-AE-RE must
  change, lives in z_sem).

Example:
  >>> import tempfile
  >>> from cfjax.training import diffae
  >>> cfg = diffae.DiffaeTrainConfig(dataset="squares", out=tempfile.mkdtemp(), net="tiny32",
  ...                                steps=2, batch_size=4, eval_limit=4, render_steps=2)
  >>> sorted(diffae.train(cfg, progress=False)["metrics"])[:2]
  ['final_loss', 'recon_interior_red_mae_255']
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cfjax import checkpoint
from cfjax import diffusion as dd
from cfjax._validate import CfjaxInputError, check_choice
from cfjax.nets import diffae_configs, registry
from cfjax.training import loop
from cfjax.training.diffusion import (image_stream, init_state, make_train_step, optimizer,
                                      save_grid, to_model_range)
from cfjax.training.vae import eval_data, reconstruction_metrics

# Diff-AE TrainConfig fields of the testbed models (32 px, no attention, no dropout).
NETS = {
    "squares32": dict(img_size=32, net_ch=32, net_ch_mult=(1, 2, 2), net_enc_channel_mult=(1, 2, 2, 2),
                      net_num_res_blocks=1, net_enc_num_res_blocks=1, net_attn=(), style_ch=128,
                      net_beatgans_embed_channels=128, dropout=0.0),
}


def net_config(name: str, image_size: int) -> dict:
  """The ``diffae`` network config of a testbed net (:data:`NETS`) or a Diff-AE template."""
  if name in NETS:
    return diffae_configs.config_from_train_config({**NETS[name], "img_size": image_size})
  return diffae_configs.diffae_config(name, image_size=image_size, dropout=0.0)


@dataclasses.dataclass(frozen=True)
class DiffaeTrainConfig:
  """What defines a Diff-AE training run (re-running the same config resumes it)."""

  dataset: str
  out: str
  net: str = "squares32"          # a NETS name or a Diff-AE template (diffae_configs.TRAIN_CONFIGS)
  testbed: tuple = ()             # testbed options as (name, value) pairs, e.g. (("rho", 0.0),)
  image_size: int = 32
  steps: int = 10000
  batch_size: int = 32
  lr: float = 1e-4                # Diff-AE's templates: Adam 1e-4, no weight decay
  grad_clip: float = 1.0
  p2_gamma: float = 0.0           # P2 loss weight (1 + SNR)^-gamma of the epsilon MSE (0: Diff-AE's plain MSE)
  ema: float = 0.9999
  diffusion_steps: int = 1000
  schedule: str = "linear"
  T_eval: int = 20                # DDIM steps of sampling and encoding by default (the templates')
  seed: int = 0
  sample_every: int = 0           # reconstruction grid every K steps (0: only at the end)
  checkpoint_every: int = 200
  log_every: int = 50
  eval_limit: int | None = None   # validation images for the metrics (None: all)
  render_steps: int | None = None  # DDIM steps of the evaluation (None: T_eval)
  init: str | None = None         # warm start: a saved Diff-AE of this net (see :func:`warm_start`)

  def check(self) -> None:
    check_choice("beta schedule", self.schedule, dd.BETA_SCHEDULES)
    if self.steps < 1 or self.batch_size < 1:
      raise CfjaxInputError(f"steps and batch_size must be positive, got {self.steps}, {self.batch_size}")
    if not 0.0 <= self.ema < 1.0:
      raise CfjaxInputError(f"ema must be in [0, 1), got {self.ema}")
    if self.p2_gamma < 0:
      raise CfjaxInputError(f"p2_gamma must be >= 0, got {self.p2_gamma}")
    for name in ("T_eval", "render_steps"):
      v = getattr(self, name)
      if v is not None and not 1 <= v <= self.diffusion_steps:
        raise CfjaxInputError(f"{name} must be in [1, {self.diffusion_steps}], got {v}")

  def run_record(self, config: dict) -> dict:
    keep = {k: v for k, v in dataclasses.asdict(self).items()
            if k not in ("out", "sample_every", "checkpoint_every", "log_every", "eval_limit", "render_steps")
            and not (k == "init" and v is None) and not (k == "p2_gamma" and v == 0.0)}
    return {**keep, "testbed": dict(self.testbed), "net_config": config}


def warm_start(cfg: DiffaeTrainConfig, config: dict, tx) -> dict:
  """The initial training state: fresh (``cfg.init`` None) or a saved Diff-AE's.

  A warm start takes the saved EMA as both the parameters and the EMA, starts Adam afresh, and
  continues at the saved model's ``train_steps``: the data stream and the EMA warm-up are positioned
  there, so ``cfg.steps`` counts the whole training (``steps=8000`` from a 2100-step model trains
  5900 more). The saved model must have the same network config and training data.
  """
  if cfg.init is None:
    return init_state(config, tx, cfg.seed)
  from cfjax.nets.loading import load_network
  net, meta = load_network(cfg.init, kind="generator")
  if meta.get("generator") != "diffae" or json.dumps(net.config, sort_keys=True) != json.dumps(config, sort_keys=True):
    raise CfjaxInputError(f"--init {cfg.init} is not a {cfg.net!r} network at {cfg.image_size} px")
  seen = {"dataset": meta.get("dataset"), "testbed": meta.get("testbed"), "batch_size": meta.get("batch_size")}
  want = {"dataset": cfg.dataset, "testbed": dict(cfg.testbed), "batch_size": cfg.batch_size}
  if seen != want:
    raise CfjaxInputError(f"--init {cfg.init} was trained on {seen}, this run is {want}")
  start = int(meta.get("train_steps", 0))
  if start >= cfg.steps:
    raise CfjaxInputError(f"--init {cfg.init} already has {start} steps; --steps must be larger")
  return init_state(config, tx, cfg.seed, params=jax.tree.map(jnp.asarray, net.params), step=start)


def make_autoencode(config: dict, diffusion: dict, steps: int) -> Callable:
  """Jitted ``(params, images01, key) -> (recon01, semantic01)``: the round trip through
  (z_sem, x_T), and a render of z_sem from fresh noise (key)."""
  from cfjax.generators.diffae import diffae_model
  m = diffae_model(registry.Network(registry.make_apply(config), None, config), diffusion)

  def run(params, images, key):
    z = m.semantic_encode(params, images)
    x_T = m.stochastic_encode(params, images, z, steps, mode="rolled")
    noise = jax.random.normal(key, images.shape, jnp.float32)
    return (jnp.clip(m.render(params, x_T, z, steps, mode="rolled"), 0, 1),
            jnp.clip(m.render(params, noise, z, steps, mode="rolled"), 0, 1))

  return jax.jit(run)


def evaluate(autoencode: Callable, params, evals: dict, *, seed: int, batch_size: int = 64) -> tuple:
  """Reconstruction and semantic-render metrics (see the module docstring) and the images."""
  images = evals["image"]
  recon, sem = [], []
  for i in range(0, len(images), batch_size):
    chunk = images[i:i + batch_size]
    pad = batch_size - len(chunk)
    x = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
    r, s = autoencode(params, jnp.asarray(x), jax.random.fold_in(jax.random.key(seed + 5), i))
    recon.append(np.asarray(r)[:len(chunk)])
    sem.append(np.asarray(s)[:len(chunk)])
  recon, sem = np.concatenate(recon), np.concatenate(sem)
  metrics = {}
  for prefix, out in (("recon", recon), ("semantic", sem)):
    m = reconstruction_metrics(out, images, evals.get("mask"), evals["group"])
    metrics.update({f"{prefix}_{k}": v for k, v in m.items()})
  return metrics, recon, sem


def _grid(evals: dict, recon: np.ndarray, sem: np.ndarray, path: Path, n: int = 8) -> Path:
  """Rows: originals, reconstructions, renders of z_sem from fresh noise (n evenly spread images)."""
  pick = np.linspace(0, len(recon) - 1, min(n, len(recon))).round().astype(int)
  return save_grid(np.concatenate([evals["image"][pick], recon[pick], sem[pick]]), path, ncol=len(pick))


def train(cfg: DiffaeTrainConfig, *, command: str | None = None,
          batches: Callable[[int], Iterator[dict]] | None = None, hooks: Sequence[Callable] = (),
          progress: bool = True) -> dict:
  """Trains (or resumes) a Diff-AE and saves its EMA to ``cfg.out/model``.

  Returns ``{"model": path, "metrics": {...}, "state": final state, "grid": recon.png path}``.
  """
  cfg.check()
  config = net_config(cfg.net, cfg.image_size)
  registry.abstract_params(config)  # a bad net is reported before the run starts
  testbed = dict(cfg.testbed)
  out = Path(cfg.out)
  loop.check_run_config(out, cfg.run_record(config), ignore=("steps",))  # constant lr: extendable
  if batches is None:
    batches = image_stream(cfg.dataset, batch_size=cfg.batch_size, seed=cfg.seed,
                           image_size=cfg.image_size, **testbed)
  evals = eval_data(cfg.dataset, image_size=cfg.image_size, limit=cfg.eval_limit, **testbed)
  diffusion = {"steps": cfg.diffusion_steps, "schedule": cfg.schedule, "T_eval": cfg.T_eval,
               "variance": "fixed_large"}
  autoencode = make_autoencode(config, diffusion, cfg.render_steps or cfg.T_eval)
  apply, encode = registry.make_apply(config), registry.make_apply(config, "encode")
  tx = optimizer(cfg.lr, grad_clip=cfg.grad_clip or None)
  step_fn = make_train_step(apply, tx, dd.make_schedule(cfg.diffusion_steps, cfg.schedule), ema=cfg.ema,
                            condition=lambda p, x0: {"cond": encode(p, x0)}, p2_gamma=cfg.p2_gamma)
  all_hooks = list(hooks)
  if cfg.sample_every:
    def write_grid(step, st):
      if step % cfg.sample_every == 0:
        _, r, s = evaluate(autoencode, st["ema"], _subset(evals, 8), seed=cfg.seed)
        _grid(_subset(evals, 8), r, s, out / "samples" / f"step_{step:07d}.png")
    all_hooks.insert(0, write_grid)
  log, ckpts = loop.JsonlLog(out / "log.jsonl"), loop.TrainCheckpoints(out / "checkpoints")
  if (ckpts.latest_step() or 0) > cfg.steps:
    ckpts.close()
    raise CfjaxInputError(f"{out} already holds a checkpoint at step {ckpts.latest_step()}, past steps={cfg.steps}")
  resuming = ckpts.latest_step() is not None  # the checkpoint holds the state: --init is not loaded
  try:
    initial = init_state(config, tx, cfg.seed) if resuming else warm_start(cfg, config, tx)
    state = loop.train_loop(initial, step_fn, batches, num_steps=cfg.steps,
                            checkpoints=ckpts, log=log, checkpoint_every=cfg.checkpoint_every,
                            log_every=cfg.log_every, hooks=all_hooks, progress=progress,
                            desc=f"Diff-AE on {cfg.dataset}")
  finally:
    ckpts.close()
  records = [r for r in log.read() if "loss" in r and r["step"] <= cfg.steps]
  metrics: dict[str, Any] = {"final_loss": records[-1]["loss"] if records else None}
  evaluated, recon, sem = evaluate(autoencode, state["ema"], evals, seed=cfg.seed)
  metrics.update(evaluated, render_steps=cfg.render_steps or cfg.T_eval)
  log.write({"step": cfg.steps, "eval": metrics})
  grid = _grid(evals, recon, sem, out / "recon.png")
  meta = {"kind": "generator", "generator": "diffae", "diffusion": diffusion, "dataset": cfg.dataset,
          "testbed": testbed, "image_size": cfg.image_size, "train_steps": cfg.steps,
          "batch_size": cfg.batch_size, "ema": cfg.ema, "command": command, "metrics": metrics,
          **({"init": cfg.init} if cfg.init else {})}
  model = checkpoint.save(out / "model", config, state["ema"], meta=meta, overwrite=True)
  (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
  return {"model": model, "metrics": metrics, "state": state, "grid": grid}


def _subset(evals: dict, n: int) -> dict:
  pick = np.linspace(0, len(evals["image"]) - 1, min(n, len(evals["image"]))).round().astype(int)
  return {k: v[pick] for k, v in evals.items()}
