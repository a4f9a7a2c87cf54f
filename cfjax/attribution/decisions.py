"""Heads of a predictor's own decisions on a generator's latents (the InterFaceGAN direction).

A classifier ``f`` seen through a generator ``G`` is a function of the latent, ``f(G(z))``. A
logistic head fitted to its decisions on latent codes is a linear approximation of its decision
boundary in latent space; the head's normal is the InterFaceGAN direction of the classifier.
:func:`decision_labels` labels latents with the predictor's decisions on their decoded images
(``class_k``: 1 where class k wins, one head per class, two for a one-logit classifier; a
regressor's scalar output is the linear head ``prediction``), so decision heads fit with
:func:`~cfjax.attribution.fit_heads` beside (or without) attribute heads, and
:func:`fit_decision_heads` does both steps. The decisions are read on the decoded images, not on
the originals, because a counterfactual is judged on a decoded image.

Example:
  >>> import cfjax, jax
  >>> from cfjax import attribution as at
  >>> heads = at.fit_decision_heads(cfjax.load_predictor("shapes_classifier"),
  ...     cfjax.load_generator("shapes_vae"), images, key=jax.random.key(0))  # doctest: +SKIP
  >>> heads.names  # doctest: +SKIP
  ('class_0', 'class_1')
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from cfjax._validate import CfjaxInputError
from cfjax.attribution.fitting import HeadsConfig, fit_heads
from cfjax.attribution.heads import Heads
from cfjax.attribution.importance import encode_images

REGRESSION_HEAD = "prediction"


def decision_names(task: str, num_classes: int = 2) -> tuple[str, ...]:
  """Names of the decision heads: ``class_0 .. class_{K-1}`` or ``("prediction",)``."""
  if task == "regression":
    return (REGRESSION_HEAD,)
  return tuple(f"class_{k}" for k in range(num_classes))


def _decoded_predictions(predictor, generator, latents, *, key, batch_size: int = 64) -> np.ndarray:
  from cfjax.methods.models import as_predictor
  pred = as_predictor(predictor)

  def one(p, z, i):
    x = jnp.clip(generator.decode(p["generator"], z, jax.random.fold_in(key, i)), 0.0, 1.0)
    return pred.one(p["predictor"], x)

  run = jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))
  params = {"predictor": pred.params, "generator": generator.params}
  out = []
  for s in range(0, latents.shape[0], batch_size):
    chunk = latents[s: s + batch_size]
    pad = np.zeros((batch_size - len(chunk),) + chunk.shape[1:], np.float32)
    ids = jnp.arange(s, s + batch_size)
    out.append(np.asarray(run(params, jnp.asarray(np.concatenate([chunk, pad])), ids))[: len(chunk)])
  return np.concatenate(out)


def decision_labels(predictor, generator, latents, *, task: str, key) -> dict[str, np.ndarray]:
  """The predictor's decisions on the decoded latents, as labels of :func:`decision_names`.

  Classification: ``class_k`` is 1 where class k has the largest logit (one logit: class 1 where
  it is positive). Regression: ``prediction`` is the (scalar) output.
  """
  z = generator.check_latents(np.asarray(latents))
  out = _decoded_predictions(predictor, generator, z, key=key)
  if task == "regression":
    if int(np.prod(out.shape[1:])) != 1:
      raise CfjaxInputError(f"a decision head needs a scalar regression output, got shape {out.shape[1:]}")
    return {REGRESSION_HEAD: out.reshape(-1).astype(np.float64)}
  if out.ndim == 1 or out.shape[1:] == (1,):
    cls = (out.reshape(-1) > 0).astype(np.int64)
    k = 2
  else:
    cls, k = out.argmax(1), out.shape[1]
  return {n: (cls == c).astype(np.float32) for c, n in enumerate(decision_names(task, k))}


def fit_decision_heads(predictor, generator, images, config: HeadsConfig = HeadsConfig(), *, key,
                       task: str | None = None) -> Heads:
  """Decision heads of ``predictor`` on the latents of ``images`` (HWC in [0, 1]) under ``generator``.

  ``task`` defaults to the predictor's recorded one.
  """
  from cfjax.methods.models import as_predictor
  task = task or as_predictor(predictor).meta.get("task")
  if task not in ("classification", "regression"):
    raise CfjaxInputError("the predictor's task is not recorded: pass task='classification' or 'regression'")
  k_enc, k_dec, k_fit = jax.random.split(key, 3)
  z = encode_images(generator, images, key=k_enc)
  labels = decision_labels(predictor, generator, z, task=task, key=k_dec)
  heads = fit_heads(z, labels, config, key=k_fit, generator=generator)
  return dataclasses.replace(heads, info={**heads.info, "decisions": {"task": task, "num_images": len(z)}})
