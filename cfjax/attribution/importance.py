"""Local and global attribute importances of counterfactuals, their tables and bar plot.

For a counterfactual pair of latents (z, z') and attribute heads g_a (Goldwasser & Hooker 2025):

* local importance ``phi_a = (g_a(z') - g_a(z)) / diam(Y_a)``, with ``diam`` 1 for probabilities
  (logistic heads) and the observed label range otherwise (:func:`local_importance`);
* global importance over a set of CEs (:func:`global_importance`): ``psi_a = mean_i |phi_ia|``
  ("mean_abs"), and the direction-weighted ``psi_a = mean_i s_i phi_ia`` ("directed") with
  ``s_i = +1`` where the original prediction (probability of the positive class) is below 0.5 and
  ``-1`` otherwise, or for regression the sign of target minus prediction
  (:func:`direction_signs`). A directed psi reads "moving towards the positive class (or the
  target) changes attribute a by psi on average".

Rankings order attributes by decreasing ``|value|`` (ties keep the heads' order).
:func:`attribute_ces` computes everything for the results of any method: latent methods give
``latent`` / ``latent_original``; pixel-space CEs (ACE, AC-RE) are encoded with the generator.

Example:
  >>> import numpy as np
  >>> phi = np.array([[0.2, -0.1], [-0.4, 0.1]])
  >>> g = global_importance(phi, np.array([1.0, -1.0]))
  >>> np.round(g["mean_abs"], 3).tolist(), np.round(g["directed"], 3).tolist()
  ([0.3, 0.1], [0.3, -0.1])
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cfjax._validate import CfjaxInputError, check_choice, check_images

KINDS = ("mean_abs", "directed")


def local_importance(heads, z, z_cf) -> jax.Array:
  """``phi`` (N, A) (or (A,) for one pair): head changes from ``z`` to ``z_cf`` over each range.

  Pure jnp (usable inside ``jit``); computed in the heads' dtype.
  """
  diam = jnp.asarray(heads.diam, heads.params["kernel"].dtype)
  return (heads.predict(z_cf) - heads.predict(z)) / diam


def direction_signs(original, *, task: str = "classification", target=None, positive_class: int = 1,
                    logits: bool = True) -> np.ndarray:
  """``s_i`` (N,): +1 where the original prediction is below 0.5, -1 otherwise (classification),
  or ``sign(target - prediction)`` (regression; 0 where they are equal).

  Args:
    original: classification: the predictor's outputs on the originals, one logit (N,) or K
      logits (N, K) (``logits=True``), or probabilities of the positive class (N,)
      (``logits=False``); regression: predictions (N,) or (N, 1).
    target: regression targets (N,).
    positive_class: the class whose probability decides the sign when K logits are given.
  """
  check_choice("task", task, ("classification", "regression"))
  o = np.asarray(original, np.float64)
  if task == "regression":
    if target is None:
      raise CfjaxInputError("regression signs need the targets")
    pred = o.reshape(o.shape[0], -1)[:, 0]
    return np.sign(np.asarray(target, np.float64).reshape(-1) - pred)
  if o.ndim == 2 and o.shape[1] == 1:
    o = o[:, 0]
  if not logits:
    p = o.reshape(-1)
  elif o.ndim == 1:
    p = 1.0 / (1.0 + np.exp(-o))
  else:
    e = np.exp(o - o.max(1, keepdims=True))
    p = (e / e.sum(1, keepdims=True))[:, positive_class]
  return np.where(p < 0.5, 1.0, -1.0)


def global_importance(phi, signs=None) -> dict[str, np.ndarray]:
  """``{"mean_abs": mean |phi|, "directed": mean s * phi}`` over the CEs (rows of ``phi``); the
  directed entry only with ``signs``."""
  phi = np.asarray(phi, np.float64)
  out = {"mean_abs": np.abs(phi).mean(0)}
  if signs is not None:
    out["directed"] = (np.asarray(signs, np.float64)[:, None] * phi).mean(0)
  return out


def rank_order(values) -> np.ndarray:
  """Indices ordering the last axis by decreasing ``|value|`` (stable: ties keep their order)."""
  v = np.abs(np.asarray(values, np.float64))
  return np.argsort(-v, axis=-1, kind="stable")


@dataclasses.dataclass(frozen=True, eq=False)
class Attribution:
  """Local importances of a set of CEs and their global summaries.

  ``phi`` (N, A), ``signs`` (N,) or None, ``columns``: per-CE metadata (``id``, ``target``,
  ``success`` ... where known) written into the per-image table.
  """

  names: tuple[str, ...]
  phi: np.ndarray
  signs: np.ndarray | None = None
  columns: dict = dataclasses.field(default_factory=dict)

  @property
  def psi(self) -> dict[str, np.ndarray]:
    return global_importance(self.phi, self.signs)

  def default_kind(self) -> str:
    return "directed" if self.signs is not None else "mean_abs"

  def ranked(self, kind: str | None = None) -> list[dict]:
    """The global table, one row per attribute, ranked by ``|psi|`` of ``kind``."""
    kind = check_choice("importance kind", kind or self.default_kind(), KINDS)
    psi = self.psi
    if kind not in psi:
      raise CfjaxInputError("the directed importance needs the signs s_i of the CEs")
    rows = []
    for rank, a in enumerate(rank_order(psi[kind]), 1):
      rows.append({"rank": rank, "attribute": self.names[a],
                   **{f"psi_{k}": float(v[a]) for k, v in psi.items()}})
    return rows

  def per_image(self) -> list[dict]:
    """One row per CE: its metadata, its sign and ``phi`` of every attribute."""
    rows = []
    for i in range(self.phi.shape[0]):
      row = {k: _scalar(v[i]) for k, v in self.columns.items()}
      if self.signs is not None:
        row["sign"] = float(self.signs[i])
      row.update({f"phi_{n}": float(self.phi[i, a]) for a, n in enumerate(self.names)})
      rows.append(row)
    return rows

  def write(self, out_dir, *, top: int = 10, kind: str | None = None) -> dict[str, str]:
    """Writes ``global.csv``, ``global.json``, ``per_image.csv``, ``per_image.json`` and
    ``importance.png`` into ``out_dir``; returns their paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ranked, per = self.ranked(kind), self.per_image()
    paths = {"global_csv": _write_csv(out / "global.csv", ranked),
             "per_image_csv": _write_csv(out / "per_image.csv", per)}
    kind = kind or self.default_kind()
    (out / "global.json").write_text(json.dumps({"kind": kind, "num_ces": int(self.phi.shape[0]),
                                                 "ranking": ranked}, indent=1))
    (out / "per_image.json").write_text(json.dumps(per, indent=1))
    paths.update(global_json=str(out / "global.json"), per_image_json=str(out / "per_image.json"),
                 figure=bar_plot(self, out / "importance.png", top=top, kind=kind))
    return paths


def _scalar(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


def _write_csv(path: Path, rows: list[dict]) -> str:
  with open(path, "w", newline="") as f:
    fields = list(rows[0]) if rows else []
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
  return str(path)


def bar_plot(attribution: Attribution, path, *, top: int = 10, kind: str | None = None,
             title: str | None = None) -> str:
  """A horizontal bar chart of the ``top`` attributes by ``|psi|`` (signed bars for "directed")."""
  from cfjax.viz import _pyplot, _save
  kind = kind or attribution.default_kind()
  rows = attribution.ranked(kind)[:top]
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 0.35 * len(rows) + 1.2))
  vals = [r[f"psi_{kind}"] for r in rows]
  ax.barh([r["attribute"].replace("_", " ") for r in rows], vals,
          color=["tab:blue" if v >= 0 else "tab:red" for v in vals], edgecolor="black")
  ax.invert_yaxis()
  ax.axvline(0.0, color="grey", linestyle="--", linewidth=0.5)
  ax.set_xlabel("mean |phi|" if kind == "mean_abs" else "mean s * phi (towards the target)")
  ax.set_title(title or f"attribute importance over {attribution.phi.shape[0]} counterfactuals", fontsize=10)
  return _save(fig, path)


# -- from the results of a method ------------------------------------------------------------------

def encode_images(generator, images, *, key, batch_size: int = 64) -> np.ndarray:
  """Latents of HWC images in [0, 1] with the generator's encoder; image i uses ``fold_in(key, i)``.

  Batches are padded to ``batch_size`` so one program serves every batch.
  """
  if generator.encode is None:
    raise CfjaxInputError(f"generator {generator.name!r} has no encoder: pixel-space CEs cannot be mapped "
                          "to its latent space")
  h, w, c = generator.image_shape
  x = check_images(images, name="images to encode", image_size=(h, w), channels=c)
  enc = _encoder(generator.encode)
  out = []
  for s in range(0, x.shape[0], batch_size):
    chunk = x[s: s + batch_size]
    pad = np.zeros((batch_size - chunk.shape[0],) + chunk.shape[1:], np.float32)
    ids = jnp.arange(s, s + batch_size)
    batch = jnp.asarray(np.concatenate([chunk, pad]))
    out.append(np.asarray(enc(generator.params, batch, key, ids))[: len(chunk)])
  return np.concatenate(out)


_ENCODERS: dict = {}


def _encoder(encode):
  if encode not in _ENCODERS:
    one = lambda p, x, key, i: encode(p, x, jax.random.fold_in(key, i))  # noqa: E731
    _ENCODERS[encode] = jax.jit(jax.vmap(one, in_axes=(None, 0, None, 0)))
  return _ENCODERS[encode]


def ce_latents(results: Mapping[str, np.ndarray], generator=None, *, key=None) -> tuple[np.ndarray, np.ndarray]:
  """(z, z') of every CE: the method's ``latent_original`` / ``latent``, else both images encoded."""
  if "latent" in results and "latent_original" in results:
    return np.asarray(results["latent_original"]), np.asarray(results["latent"])
  if generator is None:
    raise CfjaxInputError("these results hold images, not latents: give the generator whose encoder maps "
                          "them to the heads' latent space")
  if "original" not in results or "counterfactual" not in results:
    raise CfjaxInputError("results need 'original' and 'counterfactual' images (or 'latent' and "
                          "'latent_original') to be attributed")
  key = jax.random.key(0) if key is None else key
  return (encode_images(generator, results["original"], key=key),
          encode_images(generator, results["counterfactual"], key=key))


def _signs_of(results: Mapping[str, np.ndarray], task: str | None, positive_class: int):
  if "original_prediction" not in results:
    return None
  target = results.get("target")
  if task is None:
    integer = target is None or np.issubdtype(np.asarray(target).dtype, np.integer)
    task = "classification" if integer else "regression"
  return direction_signs(results["original_prediction"], task=task, target=target,
                         positive_class=positive_class)


def attribute_ces(results, heads, generator=None, *, key=None, task: str | None = None,
                  positive_class: int = 1, only_successful: bool = False, signs=None) -> Attribution:
  """Local importances of every CE in ``results`` (and, through :class:`Attribution`, the tables).

  Args:
    results: a method's results (dict, ``results.npz``, job or run directory).
    heads: the attribute :class:`~cfjax.attribution.Heads` (of ``generator`` when one is given).
    generator: the generator of the heads; needed to encode pixel-space CEs, and when given it must
      be the heads' generator.
    key: keys the encoder (image i uses ``fold_in(key, i)``); default ``key(0)``.
    task: "classification" or "regression" for the signs (default: integer targets classify).
    positive_class: the class whose probability sets the signs of multi-class predictions.
    only_successful: keep only CEs whose ``success`` is true.
    signs: explicit ``s_i`` (N,), overriding those derived from ``original_prediction``.

  Example:
    >>> import numpy as np
    >>> from cfjax.attribution import heads_from_coefficients
    >>> h = heads_from_coefficients(np.eye(2), np.zeros(2), ["a", "b"], generator="toy")
    >>> res = {"latent_original": np.zeros((1, 2), np.float32), "latent": np.ones((1, 2), np.float32),
    ...        "original_prediction": np.array([-2.0], np.float32), "target": np.array([1])}
    >>> att = attribute_ces(res, h)
    >>> att.ranked()[0]["attribute"], round(att.ranked()[0]["psi_directed"], 3)
    ('a', 0.231)
  """
  from cfjax.pipeline.writer import load_results  # the pipeline imports the methods, which import this module
  res = load_results(results)
  if generator is not None:
    heads.check_generator(generator)
  keep = np.asarray(res["success"]).astype(bool) if only_successful and "success" in res else None
  if keep is not None:
    res = {k: v[keep] for k, v in res.items() if np.ndim(v) > 0 and len(v) == len(keep)}
  z, z_cf = ce_latents(res, generator, key=key)
  z = heads.check_latents(z, name="original latents")
  z_cf = heads.check_latents(z_cf, name="counterfactual latents")
  phi = np.asarray(local_importance(heads, z, z_cf), np.float64)
  if signs is None:
    signs = _signs_of(res, task, positive_class)
  elif np.shape(signs) != (phi.shape[0],):
    raise CfjaxInputError(f"signs must have shape ({phi.shape[0]},), got {np.shape(signs)}")
  columns = {k: np.asarray(res[k]) for k in ("id", "image_id", "target", "label", "success", "iterations")
             if k in res and np.ndim(res[k]) == 1}
  return Attribution(tuple(heads.names), phi, None if signs is None else np.asarray(signs, np.float64), columns)
