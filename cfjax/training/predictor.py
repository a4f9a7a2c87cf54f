"""Training of predictors (regressors and classifiers) on cfjax's testbeds and datasets.

One jitted AdamW step (MSE for regression, sigmoid / softmax cross-entropy for classification),
run by :func:`cfjax.training.loop.train_loop` with checkpoints, a JSON-lines log and periodic
evaluation (MAE for regression, on the 315-image lower + upper validation grids for squares;
accuracy for classification). The final model is a :func:`cfjax.checkpoint.save` directory.

Also here: :func:`background_reliance`, which measures how much a squares regressor reads the
background, the planted shortcut of the squares testbed.

Example:
  >>> import tempfile
  >>> from cfjax.training import predictor
  >>> result = predictor.train(dataset="squares", task="regression", arch="small_cnn", steps=2,
  ...                          batch_size=8, out=tempfile.mkdtemp(), progress=False)
  >>> sorted(result["metrics"])[:3]
  ['background_reliance', 'mae', 'mae_lower']
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cfjax import checkpoint
from cfjax._validate import CfjaxInputError, check_choice, unknown_name
from cfjax.nets import registry
from cfjax.training import loop

TASKS = ("regression", "classification")
SCHEDULES = ("cosine", "constant")
PREDICTOR_ARCHS = ("small_cnn", "resnet18")
SQUARES = ("squares",)  # datasets evaluated on the squares validation grids


def net_config(arch: str, *, num_outputs: int, image_size: int, width: int | None = None) -> dict:
  """The network config of a predictor (``resnet18`` takes no image_size: it pools globally)."""
  check_choice("predictor architecture", arch, PREDICTOR_ARCHS)
  config: dict[str, Any] = {"arch": arch, "num_outputs": int(num_outputs)}
  if arch == "small_cnn":
    config["image_size"] = int(image_size)
  if width is not None:
    config["width"] = int(width)
  return config


def optimizer(lr: float, steps: int, *, schedule: str = "cosine", weight_decay: float = 1e-4,
              warmup: int = 0) -> optax.GradientTransformation:
  """AdamW with a cosine (with optional linear warm-up) or constant learning rate."""
  check_choice("learning-rate schedule", schedule, SCHEDULES)
  if schedule == "cosine":
    lr_fn = optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, max(steps, warmup + 1),
                                               end_value=lr * 0.01)
  else:
    lr_fn = optax.constant_schedule(lr)
  return optax.adamw(lr_fn, weight_decay=weight_decay)


def loss_fn(task: str, num_outputs: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Per-example loss ``(prediction, label) -> (B,)``: squared error or cross-entropy."""
  check_choice("task", task, TASKS)
  if task == "regression":
    return lambda y, t: jnp.square(y - t)
  if num_outputs == 1:
    return lambda y, t: optax.sigmoid_binary_cross_entropy(y, t.astype(jnp.float32))
  return lambda y, t: optax.softmax_cross_entropy_with_integer_labels(y, t)


def init_state(config: dict, tx: optax.GradientTransformation, seed: int) -> dict:
  """Training state: params, optimiser state, step and RNG key data (all plain arrays)."""
  params = registry.init_params(config, seed)
  return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
          "rng": jax.random.key_data(jax.random.key(seed + 1))}


def make_train_step(apply: Callable, tx: optax.GradientTransformation, task: str, num_outputs: int,
                    *, jit: bool = True) -> Callable:
  """``step(state, batch) -> (state, {"loss"})`` for batches ``{"image", "label"}``.

  The RNG in the state is split every step (unused by the current nets, kept so that augmentation
  or dropout can be added without changing the checkpoint layout).
  """
  per_example = loss_fn(task, num_outputs)

  def step(state, batch):
    def objective(params):
      return jnp.mean(per_example(apply(params, batch["image"]), batch["label"]))

    loss, grads = jax.value_and_grad(objective)(state["params"])
    # optax's Adam bias correction computes float ** int32 count, which strict promotion rejects.
    with jax.numpy_dtype_promotion("standard"):
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state["rng"]))[0])
    new = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
           "step": state["step"] + 1, "rng": rng}
    return new, {"loss": loss}

  return jax.jit(step) if jit else step


def predict_batched(apply: Callable, params, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """Predictions for a large array of images, in fixed-size padded batches (one compiled shape)."""
  fn = jax.jit(apply)
  n = len(images)
  bs = min(batch_size, n)
  out = []
  for i in range(0, n, bs):
    chunk = images[i:i + bs]
    pad = bs - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    out.append(np.asarray(fn(params, jnp.asarray(chunk)))[:bs - pad])
  return np.concatenate(out)


@dataclasses.dataclass(frozen=True)
class Targets:
  """Several attributes of a dataset as one standardised regression label ``(B, K)``.

  A network trained on every factor of a testbed keeps all of them in its penultimate layer:
  the in-domain feature network of the metrics (``cfjax.metrics.feature_extractor``).
  """
  names: tuple[str, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]

  @classmethod
  def estimate(cls, dataset: str, names, *, image_size: int, examples: int = 4096, attribute=None,
               **testbed_kwargs) -> "Targets":
    """Mean and standard deviation of each named attribute over the first training examples."""
    data = _data()
    ds = data.load(dataset, split="train", batch_size=512, shuffle=False, attribute=attribute,
                   image_size=image_size, **testbed_kwargs)
    batches = iter(ds)
    first = next(batches)
    avail = data.attribute_names(first)
    names = tuple(avail) if names == "all" else tuple(names)
    for name in names:
      if name not in avail:
        raise unknown_name(f"attribute of {dataset!r}", name, avail)
    cols, n = [], 0
    for b in itertools.chain([first], batches):
      c = data.attribute_columns(b, names)
      cols.append(np.stack([c[k] for k in names], axis=1))
      n += len(b["image"])
      if n >= examples:
        break
    values = np.concatenate(cols).astype(np.float64)
    std = np.nanstd(values, axis=0)
    if np.any(~(std > 0)):
      raise CfjaxInputError(f"attribute(s) {[k for k, s in zip(names, std) if not s > 0]} do not vary "
                            f"in {dataset!r}: nothing to regress on")
    return cls(names, tuple(float(v) for v in np.nanmean(values, axis=0)), tuple(float(v) for v in std))

  def labels(self, batch: dict) -> np.ndarray:
    """The batch's standardised attributes ``(B, K)`` float32."""
    c = _data().attribute_columns(batch, self.names)
    v = np.stack([c[k] for k in self.names], axis=1)
    return ((v - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

  def to_json(self) -> dict:
    return {"names": list(self.names), "mean": list(self.mean), "std": list(self.std)}


def _metrics(task: str, num_outputs: int, pred: np.ndarray, label: np.ndarray, targets=None) -> dict:
  if task == "regression":
    res = {"mae": float(np.mean(np.abs(pred - label))), "mse": float(np.mean((pred - label) ** 2))}
    for k, name in enumerate(targets or ()):
      res[f"r2_{name}"] = float(1.0 - np.mean((pred[:, k] - label[:, k]) ** 2) / max(np.var(label[:, k]), 1e-12))
    return res
  hit = (pred > 0) == (label > 0.5) if num_outputs == 1 else pred.argmax(-1) == label
  return {"accuracy": float(np.mean(hit))}


def _data():
  try:
    from cfjax import data
  except ImportError as e:
    raise CfjaxInputError(f"cfjax.data is not available ({e})") from e
  return data


def eval_set(dataset: str, *, image_size: int, max_examples: int = 2048, attribute=None,
             targets: Targets | None = None, **testbed_kwargs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Named evaluation sets ``{name: (images, labels)}``: the validation grids for squares.

  With ``targets`` the labels are the standardised attributes (the test split's first examples)."""
  data = _data()
  if dataset in SQUARES and targets is None:
    out = {}
    for which in ("lower", "upper"):
      g = data.squares_grid(which, image_size=image_size)
      out[which] = (np.asarray(g["image"], np.float32), np.asarray(g["label"], np.float32))
    return out
  for split in ("validation", "test"):
    try:
      it = data.load(dataset, split=split, batch_size=256, shuffle=False, attribute=attribute,
                     image_size=image_size, **testbed_kwargs)
      break
    except CfjaxInputError:
      if split == "test":
        raise
  imgs, labels, n = [], [], 0
  for b in it:
    imgs.append(np.asarray(b["image"]))
    labels.append(np.asarray(b["label"]) if targets is None else targets.labels(b))
    n += len(imgs[-1])
    if n >= max_examples:
      break
  return {"eval": (np.concatenate(imgs)[:max_examples], np.concatenate(labels)[:max_examples])}


def make_evaluator(apply, task: str, num_outputs: int, sets: dict, targets: Targets | None = None
                   ) -> Callable[[dict], dict]:
  """``state -> metrics``: each metric over all sets together, and per set when there are several
  (with ``targets``, also R^2 per target)."""
  names = None if targets is None else targets.names

  def evaluate(state):
    params = state["params"] if "opt_state" in state else state
    preds = {k: predict_batched(apply, params, x) for k, (x, _) in sets.items()}
    allp = np.concatenate(list(preds.values()))
    alll = np.concatenate([y for _, y in sets.values()])
    res = _metrics(task, num_outputs, allp, alll, names)
    if len(sets) > 1:
      for k, (_, y) in sets.items():
        res.update({f"{m}_{k}": v for m, v in _metrics(task, num_outputs, preds[k], y).items()})
    return res

  return evaluate


def train_stream(dataset: str, *, batch_size: int, seed: int, image_size: int, attribute=None,
                 targets: Targets | None = None, **testbed_kwargs) -> Callable[[int], Iterator[dict]]:
  """``start_step -> iterator`` of training batches, deterministic given ``seed``.

  The loader reshuffles every epoch from ``seed``; resuming at step ``s`` starts at batch ``s``
  of the same stream, so an interrupted and resumed run sees exactly the batches of an uninterrupted one.
  """
  data = _data()

  ds = data.load(dataset, split="train", batch_size=batch_size, shuffle=True, seed=seed,
                 attribute=attribute, image_size=image_size, num_epochs=None, drop_remainder=True,
                 **testbed_kwargs)

  def stream(start):
    # The loader is a random-access grain dataset: batch k is ds[k], so resuming costs nothing.
    for k in itertools.count(start):
      b = ds[k]
      label = np.asarray(b["label"]) if targets is None else targets.labels(b)
      yield {"image": np.asarray(b["image"], np.float32), "label": label}

  return stream


def train(
    *,
    dataset: str,
    task: str,
    arch: str = "small_cnn",
    out: str | os.PathLike,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    schedule: str = "cosine",
    warmup: int = 0,
    seed: int = 0,
    image_size: int = 32,
    width: int | None = None,
    attribute: str | None = None,
    targets: Sequence[str] | str | None = None,
    testbed_kwargs: dict | None = None,
    eval_every: int = 0,
    checkpoint_every: int = 200,
    log_every: int = 50,
    command: str | None = None,
    batches: Callable[[int], Iterator[dict]] | None = None,
    eval_sets: dict | None = None,
    hooks: Sequence[Callable] = (),
    progress: bool = True,
) -> dict:
  """Trains (or resumes training) a predictor and saves it to ``out/model``.

  Args:
    dataset, task, arch: what to train; ``task`` is "regression" or "classification".
    out: run directory (run.json, log.jsonl, checkpoints/, model/, metrics.json).
    steps, batch_size, lr, weight_decay, schedule, warmup, seed: optimisation settings.
    image_size, width, attribute, testbed_kwargs: data and network settings (``testbed_kwargs``
      go to ``cfjax.data.load``, e.g. ``{"rho": 1.0}``).
    targets: attribute names (or ``"all"``) to regress on together instead of the label, each
      standardised (see :class:`Targets`; ``task`` must be "regression"): a testbed's in-domain
      feature network.
    eval_every: evaluate every this many steps (0: only at the end).
    command: the command line recorded in the model's meta.
    batches, eval_sets: override the data (``start_step -> iterator`` and ``{name: (x, y)}``);
      the data of ``cfjax.data`` by default.
    hooks: ``hook(step, state)`` after every step (see :func:`cfjax.training.loop.train_loop`).

  Returns:
    ``{"model": path, "metrics": {...}, "state": final state}``.
  """
  check_choice("task", task, TASKS)
  check_choice("predictor architecture", arch, PREDICTOR_ARCHS)
  if steps < 1 or batch_size < 1:
    raise CfjaxInputError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
  testbed_kwargs = dict(testbed_kwargs or {})
  num_outputs = 1
  if targets is not None:
    if task != "regression":
      raise CfjaxInputError(f"targets regress on attributes: use task 'regression', not {task!r}")
    targets = Targets.estimate(dataset, targets, image_size=image_size, attribute=attribute, **testbed_kwargs)
    num_outputs = len(targets.names)
  elif task == "classification":
    info = _data().dataset_info(dataset, attribute=attribute, **testbed_kwargs)
    if info.get("task", "classification") != "classification":
      raise CfjaxInputError(f"dataset {dataset!r} is a {info['task']} dataset; use --task {info['task']}")
    num_outputs = 1 if int(info["num_classes"]) == 2 else int(info["num_classes"])
  elif batches is None:  # a regression on the label
    info = _data().dataset_info(dataset, attribute=attribute, **testbed_kwargs)
    if info.get("task") != "regression":
      raise CfjaxInputError(f"dataset {dataset!r} is a {info.get('task')} dataset; use --task {info.get('task')}")
  config = net_config(arch, num_outputs=num_outputs, image_size=image_size, width=width)
  run = {"dataset": dataset, "task": task, "net": config, "attribute": attribute, "testbed": testbed_kwargs,
         "image_size": image_size, "steps": steps, "batch_size": batch_size, "lr": lr,
         "weight_decay": weight_decay, "schedule": schedule, "warmup": warmup, "seed": seed}
  if targets is not None:
    run["targets"] = targets.to_json()
  # Data problems (unknown option, data not prepared) surface before the run directory is claimed.
  if batches is None:
    batches = train_stream(dataset, batch_size=batch_size, seed=seed, image_size=image_size,
                           attribute=attribute, targets=targets, **testbed_kwargs)
  if eval_sets is None:
    eval_sets = eval_set(dataset, image_size=image_size, attribute=attribute, targets=targets,
                         **testbed_kwargs)
  out = Path(out)
  loop.check_run_config(out, run)
  apply = registry.make_apply(config)
  tx = optimizer(lr, steps, schedule=schedule, weight_decay=weight_decay, warmup=warmup)
  state = init_state(config, tx, seed)
  step_fn = make_train_step(apply, tx, task, num_outputs)
  evaluate = make_evaluator(apply, task, num_outputs, eval_sets, targets)
  log = loop.JsonlLog(out / "log.jsonl")
  ckpts = loop.TrainCheckpoints(out / "checkpoints")
  try:
    state = loop.train_loop(state, step_fn, batches, num_steps=steps, checkpoints=ckpts, log=log,
                            evaluate=evaluate, eval_every=eval_every, eval_at_end=False,
                            checkpoint_every=checkpoint_every, log_every=log_every, hooks=hooks,
                            progress=progress, desc=f"{arch} on {dataset}")
  finally:
    ckpts.close()
  metrics = evaluate(state)
  log.write({"step": steps, "eval": metrics})
  meta = {"task": task, "dataset": dataset, "attribute": attribute, "testbed": testbed_kwargs,
          "image_size": image_size, "steps": steps, "command": command, "metrics": metrics}
  if targets is not None:
    meta["targets"] = targets.to_json()
  elif dataset in SQUARES and task == "regression":
    metrics["background_reliance"] = background_reliance(apply, state["params"], image_size=image_size)
  model = checkpoint.save(out / "model", config, state["params"], meta=meta, overwrite=True)
  (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
  return {"model": model, "metrics": metrics, "state": state}



def background_reliance(apply: Callable, params, *, image_size: int = 32, n: int = 512,
                        seed: int = 1234) -> dict:
  """How much a squares regressor's prediction moves when only the background changes.

  Renders ``n`` squares with the published factor distribution, then re-renders each with the
  *same* ``color_a``, position and pixel noise but a different background ``color_b``: moved to the
  other half of its range (``(color_b + 128) % 256``, the change that the ``rho`` shortcut ties to
  the label) and, separately, resampled uniformly. A model that reads only the square gives
  changes near 0 (up to clipping of the noise); a shortcut model follows the background.
  For scale, the same measurement when only ``color_a`` moves to the other half is reported too.

  Returns:
    dict with ``bg_flip`` and ``bg_resample`` (mean abs prediction change, label units [0, 1]),
    ``bg_flip_signed`` (mean change in the direction the background moved: ~0 for a model that
    ignores the background, positive when the prediction follows it, as the rho shortcut
    teaches), ``a_flip`` (mean abs change for moving ``color_a`` by half its range) and
    ``bg_flip_ratio`` (bg_flip / a_flip).

  Example:
    >>> from cfjax import nets
    >>> net = nets.build({"arch": "small_cnn", "image_size": 32})
    >>> sorted(background_reliance(net.apply, net.params, n=16))
    ['a_flip', 'bg_flip', 'bg_flip_ratio', 'bg_flip_signed', 'bg_resample']
  """
  import importlib
  sq = importlib.import_module("cfjax.data.squares")  # the module, not the function cfjax.data.squares
  rng = np.random.default_rng(seed)
  f = sq.factors(n, seed=seed, image_size=image_size, split="test")
  noise = rng.standard_normal((n, image_size, image_size, 3), dtype=np.float32) * np.float32(sq.NOISE_STD)

  def predict(color_a, color_b):
    img = sq.render(color_a, color_b, f["x"], f["y"], noise, image_size).astype(np.float32) / np.float32(255.0)
    return predict_batched(apply, params, img)

  base = predict(f["color_a"], f["color_b"])
  new_b = (f["color_b"] + 128) % 256
  flip_b = predict(f["color_a"], new_b)
  resample_b = predict(f["color_a"], rng.integers(0, 256, n).astype(np.int32))
  flip_a = predict((f["color_a"] + 128) % 256, f["color_b"])
  out = {"bg_flip": float(np.mean(np.abs(flip_b - base))),
         "bg_resample": float(np.mean(np.abs(resample_b - base))),
         "bg_flip_signed": float(np.mean((flip_b - base) * np.sign(new_b - f["color_b"]))),
         "a_flip": float(np.mean(np.abs(flip_a - base)))}
  out["bg_flip_ratio"] = out["bg_flip"] / max(out["a_flip"], 1e-8)
  return out
