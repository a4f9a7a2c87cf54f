"""Diff-AE network configs: the released templates, a tiny CPU config, and Diff-AE's ``TrainConfig``.

A Diff-AE is described by Diff-AE's own ``TrainConfig`` fields (``img_size``, ``net_ch``,
``net_ch_mult``, ``net_enc_channel_mult``, ``style_ch``, ...; ``templates.py``). This module maps
such a dict (a template below, the ``hyper_parameters`` of a Lightning checkpoint, or a fixture's
``config_*.json``) to the ``{"arch": "diffae", ...}`` network config of
:class:`cfjax.nets.diffae.DiffAEModel` and to the diffusion settings (``T``, ``T_eval``, beta
schedule) the model samples with.

Example:
  >>> cfg = diffae_config("ffhq256_autoenc")
  >>> cfg["arch"], cfg["channel_mult"], cfg["enc_channel_mult"]
  ('diffae', [1, 1, 2, 2, 4, 4], [1, 1, 2, 2, 4, 4, 4])
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from cfjax._validate import CfjaxInputError, unknown_name

# ``autoenc_base()`` of templates.py on top of TrainConfig's defaults: the fields the network and
# the sampler read.
_AUTOENC_BASE = dict(
    img_size=64, net_ch=64, net_ch_mult=(1, 2, 4, 8), net_enc_channel_mult=(1, 2, 4, 8, 8),
    net_attn=(16,), net_enc_attn=None, net_beatgans_attn_head=1, net_beatgans_embed_channels=512,
    style_ch=512, net_num_res_blocks=2, net_num_input_res_blocks=None, net_enc_num_res_blocks=2,
    net_resblock_updown=True, net_enc_pool="adaptivenonzero", net_beatgans_resnet_two_cond=True,
    net_beatgans_resnet_cond_channels=None, net_beatgans_resnet_use_zero_module=True,
    net_enc_use_time=False, dropout=0.1, T=1000, T_eval=20, beta_scheduler="linear",
    beatgans_gen_type="ddim", beatgans_model_mean_type="eps", beatgans_model_var_type="fixed_large",
    beatgans_rescale_timesteps=False, model_name="beatgans_autoenc")

_FFHQ128 = dict(img_size=128, net_ch=128, net_ch_mult=(1, 1, 2, 3, 4),
                net_enc_channel_mult=(1, 1, 2, 3, 4, 4))

# Released templates (templates.py) and a tiny one for CPU tests and demos.
TRAIN_CONFIGS: dict[str, dict] = {
    "ffhq64_autoenc": {},
    "celeba64d2c_autoenc": {},
    "ffhq128_autoenc_72M": _FFHQ128,
    "ffhq128_autoenc_130M": _FFHQ128,
    "horse128_autoenc": _FFHQ128,
    "bedroom128_autoenc": _FFHQ128,
    "ffhq256_autoenc": dict(img_size=256, net_ch=128, net_ch_mult=(1, 1, 2, 2, 4, 4),
                            net_enc_channel_mult=(1, 1, 2, 2, 4, 4, 4)),
    # The fixtures' t32 model: 32 px, 16 channels, one res block.
    "tiny32": dict(img_size=32, net_ch=16, net_ch_mult=(1, 1), net_enc_channel_mult=(1, 1, 1),
                   net_num_res_blocks=1, net_enc_num_res_blocks=1, style_ch=32,
                   net_beatgans_embed_channels=32),
}

# Fields whose values this port does not implement, with the values it does.
_SUPPORTED = dict(net_enc_pool="adaptivenonzero", net_beatgans_resnet_two_cond=True,
                  net_enc_use_time=False, net_num_input_res_blocks=None, beatgans_model_mean_type="eps",
                  model_name="beatgans_autoenc", beatgans_rescale_timesteps=False)


def train_config(name: str, **overrides: Any) -> dict:
  """Diff-AE ``TrainConfig`` fields of a named template, with overrides.

  Example:
    >>> train_config("ffhq128_autoenc_130M")["net_ch_mult"]
    (1, 1, 2, 3, 4)
  """
  if name not in TRAIN_CONFIGS:
    raise unknown_name("Diff-AE config", name, TRAIN_CONFIGS)
  return {**copy.deepcopy(_AUTOENC_BASE), **copy.deepcopy(TRAIN_CONFIGS[name]), **overrides}


def _enum_value(v):
  # as_dict_jsonable() writes enums as their values; a repr such as "ModelVarType.fixed_large" too.
  return v.rsplit(".", 1)[-1] if isinstance(v, str) and "." in v and not v.startswith(".") else v


def train_fields(conf: Mapping[str, Any]) -> dict:
  """The network and sampler fields of a TrainConfig-like dict or of a fixture JSON (its
  ``train_config`` entry), missing ones filled from ``autoenc_base``; unsupported values raise.

  Example:
    >>> train_fields({"img_size": 32})["style_ch"]
    512
  """
  if "train_config" in conf and isinstance(conf["train_config"], Mapping):
    conf = conf["train_config"]
  fields = {**_AUTOENC_BASE, **{k: v for k, v in conf.items() if k in _AUTOENC_BASE}}
  for key, want in _SUPPORTED.items():
    got = _enum_value(fields[key])
    if got != want:
      raise CfjaxInputError(f"Diff-AE config field {key}={got!r} is not supported (only {want!r})")
  for key in ("img_size", "net_ch", "net_ch_mult", "net_enc_channel_mult", "style_ch"):
    if fields[key] is None:
      raise CfjaxInputError(f"Diff-AE config field {key} is missing")
  return fields


def config_from_train_config(conf: Mapping[str, Any], **overrides: Any) -> dict:
  """The ``diffae`` network config of Diff-AE ``TrainConfig`` fields (``make_model_conf``).

  Args:
    conf: TrainConfig fields (a dict from :func:`train_config`, a Lightning checkpoint's
      ``hyper_parameters``, or a fixture ``config_*.json`` with a ``train_config`` entry); fields
      not given take the ``autoenc_base`` template's values.
    overrides: entries of the network config to replace (e.g. ``dtype="bfloat16"``).

  Raises:
    CfjaxInputError: for a field value this port does not implement (e.g. another ``enc_pool``).

  Example:
    >>> config_from_train_config({"img_size": 32, "net_ch": 16, "net_ch_mult": [1, 1],
    ...     "net_enc_channel_mult": [1, 1, 1], "style_ch": 32,
    ...     "net_beatgans_embed_channels": 32})["enc_out_channels"]
    32
  """
  f = train_fields(conf)
  cfg = dict(
      arch="diffae", image_size=int(f["img_size"]), in_channels=3, out_channels=3,
      model_channels=int(f["net_ch"]), channel_mult=[int(m) for m in f["net_ch_mult"]],
      num_res_blocks=int(f["net_num_res_blocks"]), attention_resolutions=[int(r) for r in f["net_attn"]],
      embed_channels=int(f["net_beatgans_embed_channels"]), enc_out_channels=int(f["style_ch"]),
      enc_channel_mult=[int(m) for m in f["net_enc_channel_mult"]],
      enc_num_res_blocks=int(f["net_enc_num_res_blocks"]),
      enc_attn_resolutions=None if not f["net_enc_attn"] else [int(r) for r in f["net_enc_attn"]],
      dropout=float(f["dropout"]), num_heads=int(f["net_beatgans_attn_head"]), num_head_channels=-1,
      num_heads_upsample=-1, resnet_cond_channels=f["net_beatgans_resnet_cond_channels"],
      resblock_updown=bool(f["net_resblock_updown"]), use_new_attention_order=False,
      conv_resample=True, dtype="float32")
  cfg.update(overrides)
  return cfg


def diffusion_from_train_config(conf: Mapping[str, Any]) -> dict:
  """``{"steps", "schedule", "T_eval", "variance"}``: the base process and the sampling default.

  Example:
    >>> diffusion_from_train_config(train_config("ffhq64_autoenc"))
    {'steps': 1000, 'schedule': 'linear', 'T_eval': 20, 'variance': 'fixed_large'}
  """
  f = train_fields(conf)
  return {"steps": int(f["T"]), "schedule": str(_enum_value(f["beta_scheduler"])),
          "T_eval": int(f["T_eval"]), "variance": str(_enum_value(f["beatgans_model_var_type"]))}


def diffae_config(name: str, **overrides: Any) -> dict:
  """The ``diffae`` network config of a named template.

  Example:
    >>> diffae_config("tiny32")["model_channels"]
    16
  """
  return config_from_train_config(train_config(name), **overrides)
