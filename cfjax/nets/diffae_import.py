"""Import of official Diff-AE weights: state dicts (``.npz``, ``.pt``) and Lightning ``.ckpt`` files.

Loading never unpickles arbitrary objects: ``.ckpt`` / ``.pt`` go through ``torch.load(...,
weights_only=True)`` (torch is the optional ``cfjax[torch]`` extra), ``.npz`` through
``np.load(..., allow_pickle=False)`` (:func:`cfjax.nets.torch_import.read_state_dict`).

A Lightning checkpoint of Diff-AE (``last.ckpt``) holds ``state_dict`` with ``x_T`` (a buffer),
``model.<key>`` and ``ema_model.<key>`` (the EMA weights, which every notebook samples with), and
``hyper_parameters`` (the ``TrainConfig`` fields). The importer keeps one prefix (``ema_model.`` by
default), ignores ``x_T``, ``conds_mean``, ``conds_std`` and the latent DPM (``latent_net.*``),
and checks every other key: a missing, unexpected or mis-shaped key is reported by name.

Key map (torch -> cfjax path; Conv2d OIHW -> HWIO, Linear and the attention's Conv1d(k=1)
``(out, in[, 1])`` -> ``(in, out)``, GroupNorm ``weight`` -> ``scale``):

==========================================  =============================================
``time_embed.time_embed.{0,2}``             ``time_embed_{0,2}``
``[encoder.]input_blocks.i.j``              ``[encoder/]input_blocks/i/layers/j``
``[encoder.]middle_block.j``                ``[encoder/]middle_block/layers/j``
``output_blocks.i.j``                       ``output_blocks/i/layers/j``
ResBlock ``in_layers.{0,2}``                ``in_norm/norm``, ``in_conv``
ResBlock ``emb_layers.1``, ``cond_emb_layers.1``  ``emb_linear``, ``cond_linear``
ResBlock ``out_layers.{0,3}``, ``skip_connection``  ``out_norm/norm``, ``out_conv``, ``skip``
attention ``norm``, ``qkv``, ``proj_out``   the same names (``norm/norm``)
``out.{0,2}``; ``encoder.out.{0,3}``        ``out_norm/norm``, ``out_conv``
==========================================  =============================================

Example:
  >>> from cfjax.nets import diffae_import
  >>> net, info = diffae_import.load_diffae("last.ckpt")  # doctest: +SKIP
  >>> info["diffusion"]["T_eval"]  # doctest: +SKIP
  20
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from cfjax._validate import CfjaxInputError, check_choice
from cfjax.nets import diffae as _diffae  # noqa: F401  (registers "diffae")
from cfjax.nets import diffae_configs, registry
from cfjax.nets.torch_import import ImportError_, read_state_dict, torch_load_weights_only

WEIGHTS = {"ema": "ema_model.", "model": "model."}
_IGNORED = ("x_T", "conds_mean", "conds_std")

_SUB = {("in_norm", "norm"): "in_layers.0", ("in_conv",): "in_layers.2", ("emb_linear",): "emb_layers.1",
        ("cond_linear",): "cond_emb_layers.1", ("out_norm", "norm"): "out_layers.0",
        ("out_conv",): "out_layers.3", ("skip",): "skip_connection", ("norm", "norm"): "norm",
        ("qkv",): "qkv", ("proj_out",): "proj_out", ("op",): "op", ("conv",): "conv", (): ""}
_TOP = {("time_embed_0",): "time_embed.time_embed.0", ("time_embed_2",): "time_embed.time_embed.2",
        ("out_norm", "norm"): "out.0", ("out_conv",): "out.2",
        ("encoder", "out_norm", "norm"): "encoder.out.0",
        ("encoder", "out_conv"): "encoder.out.3"}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def _module_name(path: tuple) -> str:
  """Torch module name of a cfjax module path (without the leaf)."""
  if path in _TOP:
    return _TOP[path]
  prefix, rest = ("encoder.", path[1:]) if path[0] == "encoder" else ("", path)
  if rest[0] == "middle_block":
    head, sub = f"middle_block.{rest[2]}", rest[3:]
  else:
    head, sub = f"{rest[0]}.{rest[1]}.{rest[3]}", rest[4:]
  return prefix + head + ("." + _SUB[sub] if _SUB[sub] else "")


def torch_key_map(config: dict) -> dict[str, tuple[tuple, tuple]]:
  """``{torch key: (cfjax parameter path, torch shape)}`` for every parameter of ``config``.

  Example:
    >>> m = torch_key_map(diffae_configs.diffae_config("tiny32"))
    >>> m["encoder.out.3.weight"]
    (('encoder', 'out_conv', 'kernel'), (32, 16, 1, 1))
  """
  out = {}
  for kpath, leaf in jax.tree_util.tree_leaves_with_path(registry.abstract_params(config)):
    path = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in kpath)
    shape = tuple(leaf.shape)
    if path[-1] == "kernel":
      if len(shape) == 4:
        shape = (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW
      else:
        shape = (shape[1], shape[0]) + ((1,) if path[-2] in ("qkv", "proj_out") else ())
    out[f"{_module_name(path[:-1])}.{_LEAF[path[-1]]}"] = (path, shape)
  return out


def _to_flax(value) -> np.ndarray:
  v = np.asarray(value, dtype=np.float32)
  if v.ndim == 4:
    return v.transpose(2, 3, 1, 0)
  if v.ndim == 3:
    return v[:, :, 0].T
  return v.T if v.ndim == 2 else v


def select_weights(state_dict: Mapping[str, Any], weights: str = "ema") -> dict:
  """The model's own keys: a Lightning state dict's ``ema_model.*`` (or ``model.*``) without the
  prefix, or a bare state dict as it is; ``x_T``, ``conds_mean/std`` and ``latent_net.*`` dropped.

  Example:
    >>> sorted(select_weights({"x_T": 0, "model.a": 1, "ema_model.a": 2}))
    ['a']
  """
  check_choice("Diff-AE weights", weights, WEIGHTS)
  lightning = any(k.startswith(p) for k in state_dict for p in WEIGHTS.values())
  if lightning:
    prefix = WEIGHTS[weights]
    if not any(k.startswith(prefix) for k in state_dict):
      raise ImportError_(f"the checkpoint has no {prefix}* keys (weights={weights!r})")
    items = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  else:
    items = dict(state_dict)
  return {k: v for k, v in items.items() if k not in _IGNORED and not k.startswith("latent_net.")}


def convert_state_dict(state_dict: Mapping[str, Any], config: dict) -> dict:
  """Converts a Diff-AE model state dict (torch names and layouts) to cfjax params for ``config``.

  Raises:
    CfjaxInputError: listing every unexpected, missing and mis-shaped key by name.
  """
  keymap = torch_key_map(config)
  problems, params = [], {}
  for key, value in state_dict.items():
    if key not in keymap:
      problems.append(f"unexpected key {key!r} {tuple(np.shape(value))}")
      continue
    path, torch_shape = keymap[key]
    if tuple(np.shape(value)) != torch_shape:
      problems.append(f"{key!r}: shape {tuple(np.shape(value))}, expected {torch_shape} for this config")
      continue
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = _to_flax(value)
  problems += [f"missing key {k!r} {s}" for k, (_, s) in keymap.items() if k not in state_dict]
  if problems:
    shown = "\n  ".join(problems[:40])
    more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
    raise ImportError_(f"state dict does not match the Diff-AE config ({len(problems)} problems):"
                       f"\n  {shown}{more}")
  return params


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict | None]:
  """``(state_dict, hyper_parameters or None)`` of a Lightning ``.ckpt``, a ``.pt`` or an ``.npz``."""
  path = Path(path)
  if path.suffix not in (".ckpt",):
    return read_state_dict(path), None
  if not path.is_file():
    raise ImportError_(f"checkpoint {path} does not exist")
  obj = torch_load_weights_only(path, "as a Lightning checkpoint")
  import torch  # installed: torch_load_weights_only needs it
  if not isinstance(obj, Mapping) or not isinstance(obj.get("state_dict"), Mapping):
    raise ImportError_(f"{path} is not a Lightning checkpoint (no 'state_dict' entry)")
  sd = {str(k): v.detach().to(torch.float32).numpy() for k, v in obj["state_dict"].items()
        if isinstance(v, torch.Tensor)}
  hp = obj.get("hyper_parameters")
  return sd, (dict(hp) if isinstance(hp, Mapping) else None)


def resolve_train_config(config, hyper_parameters: Mapping | None = None) -> dict:
  """TrainConfig fields from a template name, a ``.json`` path, a dict, or the checkpoint's own."""
  if config is None:
    if hyper_parameters is None:
      raise CfjaxInputError("give a Diff-AE config (template name or JSON): this file records none")
    return dict(hyper_parameters)
  if isinstance(config, Mapping):
    return dict(config)
  if isinstance(config, (str, os.PathLike)) and str(config).endswith(".json"):
    try:
      return json.loads(Path(config).read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise CfjaxInputError(f"cannot read Diff-AE config {config}: {e}") from e
  if isinstance(config, str):
    return diffae_configs.train_config(config)
  raise CfjaxInputError(f"config must be a name, a .json path or a dict, got {type(config).__name__}")


def load_diffae(path: str | os.PathLike, config=None, *, weights: str = "ema",
                **overrides) -> tuple[registry.Network, dict]:
  """Reads official Diff-AE weights and returns ``(Network, info)``.

  Args:
    path: a Lightning ``.ckpt`` (needs torch), a ``.pt`` state dict, or an ``.npz`` of the model's
      state dict (bare keys, or a Lightning state dict with ``ema_model.`` / ``model.`` prefixes).
    config: a template name of :data:`cfjax.nets.diffae_configs.TRAIN_CONFIGS`, a path to a JSON
      of TrainConfig fields (or a fixture ``config_*.json``), a dict of such fields, or None to
      use the checkpoint's ``hyper_parameters``.
    weights: "ema" (default, what Diff-AE samples with) or "model" (the raw training weights).
    overrides: entries of the network config to replace (e.g. ``dtype="bfloat16"``).

  Returns:
    The ``diffae`` network, and ``info`` = ``{"train_config", "diffusion"}`` (see
    :func:`cfjax.nets.diffae_configs.diffusion_from_train_config`).

  Raises:
    CfjaxInputError: unsafe or unreadable file, unknown config, or a missing, unexpected or
      mis-shaped key (each named).
  """
  state_dict, hyper_parameters = read_checkpoint(path)
  fields = resolve_train_config(config, hyper_parameters)
  net_config = diffae_configs.config_from_train_config(fields, **overrides)
  params = convert_state_dict(select_weights(state_dict, weights), net_config)
  info = {"train_config": diffae_configs.train_fields(fields),
          "diffusion": diffae_configs.diffusion_from_train_config(fields)}
  return registry.build(net_config, params=params), info
