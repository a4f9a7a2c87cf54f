"""Training of the Counterfactual Attacks VAE (``cf_vae``) with the paper's loss, resumably.

The loss is the one of the paper's MNIST notebook (``mnist_autoencoder.ipynb``, the training
cell of ``class VAE`` and ``sobel_loss``)::

    loss = MSE(out, x) + edge_weight * sobel_edge(out) + l1_weight * mean|out - x|
           (+ kl_weight * KL(q(z|x) || N(0, I)), absent from the paper: kl_weight 0 by default)

where ``out = decode(mu + eps * exp(logvar / 2))`` is the reconstruction from a *sampled* latent
(the notebook's ``forward``), and ``sobel_edge(out)`` is the mean Sobel gradient magnitude
``sqrt(max(gx^2 + gy^2, 1e-8))`` **of the output only** (zero padding 1, cross-correlation as
torch's ``conv2d``): it does not compare edges with the target, it penalises edges in the
reconstruction, i.e. it smooths it. On RGB images it is applied to each channel separately (the
notebook's single-channel kernel generalised depthwise). The KL term, when used, is summed over
the latent dimensions and averaged over the batch, while the pixel terms are means over pixels:
a ``kl_weight`` of about ``1 / (H * W * C)`` gives the usual per-image ELBO balance.

Two differences from the notebook, both about data: the notebook trained on MNIST normalised with
mean 0.1307 and std 0.3081 and used the normalised images as the sigmoid's targets; cfjax trains
on its [0, 1] images, which a sigmoid can reach. Its optimiser is the notebook's by default
(Adam, lr 1e-3, no weight decay, constant learning rate; a cosine decay is optional) and the
networks start from torch's default initialisation.

The run directory is that of :mod:`cfjax.training.loop` (``run.json``, ``log.jsonl``,
``checkpoints/``) plus ``model/`` (a :func:`cfjax.checkpoint.save` directory with ``meta["kind"]
== "generator"``, ``meta["generator"] == "vae"``), ``metrics.json`` and ``recon.png``
(originals and their reconstructions ``decode(mu)`` in alternate rows).

Example:
  >>> import tempfile
  >>> from cfjax.training import vae
  >>> r = vae.train(dataset="shapes", out=tempfile.mkdtemp(), steps=2, batch_size=4,
  ...               latent_dim=8, eval_limit=16, progress=False)
  >>> sorted(r["metrics"])
  ['final_loss', 'mae_255', 'mse']
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
from cfjax._validate import CfjaxInputError, check_choice
from cfjax.nets import registry
from cfjax.nets import vae as vae_net
from cfjax.training import loop

SQUARES = ("squares",)  # evaluated on the lower + upper validation grids
SCHEDULES = ("constant", "cosine")
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
_SOBEL_Y = _SOBEL_X.T.copy()


def sobel_edge(images: jax.Array) -> jax.Array:
  """The notebook's ``sobel_loss``: mean Sobel gradient magnitude of NHWC ``images``.

  Each channel is filtered on its own with the 3x3 Sobel kernels (cross-correlation, zero padding
  1); the magnitude is ``sqrt(max(gx^2 + gy^2, 1e-8))``, averaged over every pixel and channel.

  Example:
    >>> import jax.numpy as jnp
    >>> round(float(sobel_edge(jnp.zeros((1, 8, 8, 1)))), 4)  # sqrt(1e-8) where nothing changes
    0.0001
    >>> round(float(sobel_edge(jnp.full((1, 8, 8, 1), 0.5))), 4)  # the zero padding makes border edges
    0.8826
  """
  c = images.shape[-1]
  kernels = np.stack([_SOBEL_X, _SOBEL_Y], -1)[:, :, None, :]    # (3, 3, 1, 2)
  kernels = jnp.asarray(np.tile(kernels, (1, 1, 1, c)), images.dtype)  # depthwise: (3, 3, 1, 2C)
  g = jax.lax.conv_general_dilated(
      images, kernels, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=c)
  gx, gy = g[..., 0::2], g[..., 1::2]
  return jnp.sqrt(jnp.maximum(gx * gx + gy * gy, 1e-8)).mean()


def kl_divergence(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """``KL(N(mu, exp(logvar)) || N(0, I))`` per example, summed over the latent dimensions."""
  return -0.5 * jnp.sum(1.0 + logvar - mu * mu - jnp.exp(logvar), axis=-1)


def vae_loss(out: jax.Array, x: jax.Array, mu: jax.Array, logvar: jax.Array, *,
             edge_weight: float = 0.2, l1_weight: float = 4.0, kl_weight: float = 0.0
             ) -> tuple[jax.Array, dict]:
  """The paper's VAE loss (see the module docstring) and its parts.

  Args:
    out: reconstructions (B, H, W, C) in [0, 1].
    x: the target images.
    mu, logvar: the encoder's outputs (B, latent_dim) (used by the KL term only).
    edge_weight, l1_weight, kl_weight: the weights (the paper's: 0.2, 4, 0).

  Returns:
    ``(loss, {"mse", "l1", "edge", "kl"})``.
  """
  parts = {"mse": jnp.mean(jnp.square(out - x)), "l1": jnp.mean(jnp.abs(out - x)),
           "edge": sobel_edge(out), "kl": jnp.mean(kl_divergence(mu, logvar))}
  loss = parts["mse"] + edge_weight * parts["edge"] + l1_weight * parts["l1"]
  if kl_weight:
    loss = loss + kl_weight * parts["kl"]
  return loss, parts


def net_config(*, image_size: int, channels: int, latent_dim: int) -> dict:
  """The ``cf_vae`` config of a run."""
  return {"arch": "cf_vae", "image_size": int(image_size), "channels": int(channels),
          "latent_dim": int(latent_dim)}


def optimizer(lr: float, steps: int, schedule: str = "constant") -> optax.GradientTransformation:
  """Adam (no weight decay) at a constant learning rate (the paper's) or with cosine decay to 1%."""
  check_choice("learning-rate schedule", schedule, SCHEDULES)
  if schedule == "cosine":
    return optax.adam(optax.cosine_decay_schedule(lr, max(int(steps), 1), alpha=0.01))
  return optax.adam(lr)


def init_state(config: dict, tx: optax.GradientTransformation, seed: int) -> dict:
  """Training state: params, optimiser state, step and RNG key data (all plain arrays)."""
  params = registry.init_params(config, seed)
  return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
          "rng": jax.random.key_data(jax.random.key(seed + 1))}


def make_train_step(config: dict, tx: optax.GradientTransformation, *, edge_weight: float,
                    l1_weight: float, kl_weight: float, jit: bool = True) -> Callable:
  """``step(state, {"image"}) -> (state, {"loss", "mse", "l1", "edge", "kl"})``.

  The reconstruction is decoded from a reparameterised sample of the posterior (the notebook's
  ``forward``); its noise comes from the state's RNG, split every step.
  """
  encode = registry.make_apply(config, "encode")
  decode = registry.make_apply(config, "decode")

  def step(state, batch):
    key, sub = jax.random.split(jax.random.wrap_key_data(state["rng"]))
    x = batch["image"]

    def objective(params):
      mu, logvar = encode(params, x)
      out = decode(params, vae_net.reparameterize(mu, logvar, sub))
      return vae_loss(out, x, mu, logvar, edge_weight=edge_weight, l1_weight=l1_weight,
                      kl_weight=kl_weight)

    (loss, parts), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
    # optax's Adam bias correction computes float ** int32 count, which strict promotion rejects.
    with jax.numpy_dtype_promotion("standard"):
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
           "step": state["step"] + 1, "rng": jax.random.key_data(key)}
    return new, {"loss": loss, **parts}

  return jax.jit(step) if jit else step


def eval_data(dataset: str, *, image_size: int, limit: int | None = None, **testbed_kwargs) -> dict:
  """Validation images: the lower + upper grids for squares (with their interior masks), else
  the test split. Returns ``{"image", "group"}`` (+ ``"mask"`` for squares), ``group`` naming
  each image's set ("lower" / "upper" / "test"); for squares the upper half holds the twins of
  the lower half, in the same order. ``limit`` caps the number of images (squares: both twins
  of ``limit // 2`` evenly spread grid images)."""
  from cfjax import data
  if dataset in SQUARES:
    parts = [data.squares_grid(w, image_size=image_size) for w in ("lower", "upper")]
    n = len(parts[0]["image"])
    # The same evenly spread images of both grids, so that every lower image keeps its upper twin.
    idx = np.arange(n) if limit is None else np.linspace(0, n - 1, max(1, min(limit // 2, n))).round().astype(int)
    return {"image": np.concatenate([p["image"][idx] for p in parts]).astype(np.float32),
            "mask": np.concatenate([p["mask"][idx] for p in parts]),
            "group": np.array(["lower"] * len(idx) + ["upper"] * len(idx))}
  imgs, n = [], 0
  for b in data.load(dataset, split="test", batch_size=256, shuffle=False, image_size=image_size,
                     **testbed_kwargs):
    imgs.append(np.asarray(b["image"], np.float32))
    n += len(imgs[-1])
    if limit is not None and n >= limit:
      break
  images = np.concatenate(imgs)[:limit]
  return {"image": images, "group": np.array(["test"] * len(images))}


def reconstruction_metrics(recon: np.ndarray, images: np.ndarray, mask: np.ndarray | None = None,
                           group: np.ndarray | None = None) -> dict:
  """Reconstruction error of ``recon`` against ``images`` (both in [0, 1]).

  Returns ``mae_255`` (mean absolute error in [0, 255] units) and ``mse`` (in [0, 1] units); with
  a squares interior ``mask`` (N, H, W) also ``interior_red_mae_255``: per image, the mean red
  value over the square's interior in the reconstruction against the same mean in the original
  (the pixel noise averages out), in [0, 255] units -- whether the latent keeps the factor the
  squares regressor reads. With several ``group`` names each metric is also given per group
  (``mae_255_lower``, ...). With "lower" and "upper" groups of twins (as :func:`eval_data` gives
  them) also ``interior_red_twin_gap_255``: the mean interior red of the upper reconstructions
  minus that of their lower twins, against ``interior_red_twin_gap_255_original`` for the images
  (128 where no pixel clips): how much of the one factor that separates the twins survives.

  Example:
    >>> x = np.zeros((2, 4, 4, 3), np.float32)
    >>> round(reconstruction_metrics(x + 0.1, x)["mae_255"], 3)
    25.5
  """
  recon, images = np.asarray(recon, np.float64), np.asarray(images, np.float64)

  def metrics(sel):
    d = recon[sel] - images[sel]
    out = {"mae_255": float(np.mean(np.abs(d)) * 255), "mse": float(np.mean(d * d))}
    if mask is not None:
      m = mask[sel].astype(np.float64)
      area = m.sum(axis=(1, 2))
      red = lambda a: (a[..., 0] * m).sum(axis=(1, 2)) / area  # noqa: E731
      out["interior_red_mae_255"] = float(np.mean(np.abs(red(recon[sel]) - red(images[sel]))) * 255)
    return out

  res = metrics(np.ones(len(images), bool))
  if group is not None and len(set(group.tolist())) > 1:
    for g in sorted(set(group.tolist())):
      res.update({f"{k}_{g}": v for k, v in metrics(group == g).items()})
  if mask is not None and group is not None:
    lo, hi = group == "lower", group == "upper"
    if lo.sum() and lo.sum() == hi.sum():
      m = mask.astype(np.float64)
      red = (lambda a: (a[..., 0] * m).sum(axis=(1, 2)) / m.sum(axis=(1, 2)) * 255)  # noqa: E731
      for key, a in (("interior_red_twin_gap_255", recon), ("interior_red_twin_gap_255_original", images)):
        r = red(a)
        res[key] = float(np.mean(r[hi] - r[lo]))
  return res


def reconstruct(config: dict, params, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """``decode(mu(images))`` in fixed-size padded batches (one compiled shape)."""
  from cfjax.training.predictor import predict_batched
  return predict_batched(registry.make_apply(config), params, images, batch_size)


def recon_grid(images: np.ndarray, recon: np.ndarray, path: str | os.PathLike, *, ncol: int = 8) -> Path:
  """A PNG of originals and reconstructions in alternate rows (``ncol`` images per row)."""
  from cfjax.training.diffusion import save_grid
  n = len(images) - len(images) % ncol or len(images)
  rows = []
  for i in range(0, n, ncol):
    rows += [images[i:i + ncol], recon[i:i + ncol]]
  return save_grid(np.concatenate(rows), path, ncol=min(ncol, n))


def _showcase(evals: dict, recon: np.ndarray, n: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """``(images, reconstructions)`` for the recon grid: a fixed random choice of ``n`` images; for
  squares ``n / 2`` lower-grid images followed by their upper twins (same places in the grid)."""
  half = int((evals["group"] == "lower").sum())
  rng = np.random.default_rng(0)
  if half and 2 * half == len(recon):
    pick = np.sort(rng.choice(half, min(n // 2, half), replace=False))
    show = np.concatenate([pick, pick + half])
  else:
    show = np.sort(rng.choice(len(recon), min(n, len(recon)), replace=False))
  return evals["image"][show], recon[show]


def _channels(batches: Callable[[int], Iterator[dict]]) -> int:
  return int(np.shape(next(batches(0))["image"])[-1])


def train(
    *,
    dataset: str,
    out: str | os.PathLike,
    image_size: int = 32,
    latent_dim: int = 64,
    steps: int = 3000,
    batch_size: int = 64,
    lr: float = 1e-3,
    schedule: str = "constant",
    edge_weight: float = 0.2,
    l1_weight: float = 4.0,
    kl_weight: float = 0.0,
    seed: int = 0,
    testbed_kwargs: dict | None = None,
    checkpoint_every: int = 500,
    log_every: int = 50,
    eval_limit: int | None = None,
    command: str | None = None,
    batches: Callable[[int], Iterator[dict]] | None = None,
    hooks: Sequence[Callable] = (),
    progress: bool = True,
) -> dict:
  """Trains (or resumes training) a ``cf_vae`` and saves it to ``out/model``.

  Args:
    dataset: a name of :func:`cfjax.data.load` ("squares", "shapes", ...), options in
      ``testbed_kwargs`` (e.g. ``{"rho": 0.0}``).
    out: run directory; re-running with the same settings resumes, other settings are an error
      (except ``steps`` with the constant schedule, so a finished run can be extended).
    image_size: 28 or 32 (the architecture's sizes; squares renders 32).
    latent_dim: latent size (64 in the paper).
    steps, batch_size, lr, seed: optimisation (Adam, no weight decay).
    schedule: "constant" (the paper's) or "cosine" (decay to 1% of ``lr`` at ``steps``).
    edge_weight, l1_weight, kl_weight: loss weights (the paper's 0.2, 4, 0; see :func:`vae_loss`).
    checkpoint_every, log_every: training-state checkpoints and log records.
    eval_limit: validation images used for the metrics (None: all; squares 630, shapes 2000).
    command: the command line recorded in the model's meta.
    batches: override the data (``start_step -> iterator`` of ``{"image"}``).
    hooks: ``hook(step, state)`` after every step (see :func:`cfjax.training.loop.train_loop`).

  Returns:
    ``{"model": path, "metrics": {...}, "state": final state, "grid": recon.png path}``.
  """
  if steps < 1 or batch_size < 1:
    raise CfjaxInputError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
  if lr <= 0 or min(edge_weight, l1_weight, kl_weight) < 0:
    raise CfjaxInputError("lr must be positive and the loss weights non-negative, got "
                          f"lr={lr}, edge_weight={edge_weight}, l1_weight={l1_weight}, kl_weight={kl_weight}")
  check_choice("learning-rate schedule", schedule, SCHEDULES)
  testbed_kwargs = dict(testbed_kwargs or {})
  if batches is None:
    from cfjax.training.diffusion import image_stream
    batches = image_stream(dataset, batch_size=batch_size, seed=seed, image_size=image_size,
                           **testbed_kwargs)
  config = net_config(image_size=image_size, channels=_channels(batches), latent_dim=latent_dim)
  registry.abstract_params(config)  # a bad size or channel count is reported before the run starts
  evals = eval_data(dataset, image_size=image_size, limit=eval_limit, **testbed_kwargs)
  run = {"dataset": dataset, "testbed": testbed_kwargs, "net": config, "steps": steps,
         "batch_size": batch_size, "lr": lr, "schedule": schedule, "edge_weight": edge_weight,
         "l1_weight": l1_weight, "kl_weight": kl_weight, "seed": seed}
  out = Path(out)
  # A constant learning rate lets a finished run be extended; the cosine schedule depends on steps.
  loop.check_run_config(out, run, ignore=("steps",) if schedule == "constant" else ())
  tx = optimizer(lr, steps, schedule)
  state = init_state(config, tx, seed)
  step_fn = make_train_step(config, tx, edge_weight=edge_weight, l1_weight=l1_weight,
                            kl_weight=kl_weight)
  log = loop.JsonlLog(out / "log.jsonl")
  ckpts = loop.TrainCheckpoints(out / "checkpoints")
  if (ckpts.latest_step() or 0) > steps:
    ckpts.close()
    raise CfjaxInputError(f"{out} already holds a checkpoint at step {ckpts.latest_step()}, past steps={steps}")
  try:
    state = loop.train_loop(state, step_fn, batches, num_steps=steps, checkpoints=ckpts, log=log,
                            checkpoint_every=checkpoint_every, log_every=log_every, hooks=hooks,
                            progress=progress, desc=f"VAE on {dataset}")
  finally:
    ckpts.close()
  recon = reconstruct(config, state["params"], evals["image"])
  # A killed run may have logged steps past its last checkpoint; those were redone (or dropped).
  records = [r for r in log.read() if "loss" in r and r["step"] <= steps]
  metrics: dict[str, Any] = {"final_loss": records[-1]["loss"] if records else None}
  metrics.update(reconstruction_metrics(recon, evals["image"], evals.get("mask"), evals["group"]))
  log.write({"step": steps, "eval": metrics})
  grid = recon_grid(*_showcase(evals, recon), out / "recon.png")
  meta = {"kind": "generator", "generator": "vae", "image_size": image_size,
          "channels": config["channels"], "latent_dim": latent_dim, "dataset": dataset,
          "testbed": testbed_kwargs, "train_steps": steps, "batch_size": batch_size, "lr": lr,
          "schedule": schedule,
          "loss": {"edge_weight": edge_weight, "l1_weight": l1_weight, "kl_weight": kl_weight},
          "command": command, "metrics": metrics}
  model = checkpoint.save(out / "model", config, state["params"], meta=meta, overwrite=True)
  (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
  return {"model": model, "metrics": metrics, "state": state, "grid": grid}
