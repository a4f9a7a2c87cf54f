"""Named ADM UNet configurations: the released models cfjax can load, and small CPU configs.

Each entry is a network config for :func:`cfjax.nets.build` plus the diffusion settings the model
was trained with (``diffusion``: steps and beta schedule), so a converted checkpoint records both.
"""

from __future__ import annotations

import copy

from cfjax._validate import unknown_name

_COMMON = dict(arch="adm_unet", in_channels=3, out_channels=6, dropout=0.0, num_classes=None,
               num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True,
               use_new_attention_order=False, conv_resample=True, dtype="float32")

UNET_CONFIGS = {
    # DiME / ACE CelebA 128x128 (DiME's celeba script: 128 channels, 2 res blocks, attention at
    # 32,16,8, 4 heads; channel_mult by image size as script_util does for 128).
    "celeba128": dict(image_size=128, model_channels=128, num_res_blocks=2, channel_mult=(1, 1, 2, 3, 4),
                      attention_resolutions=(32, 16, 8), num_heads=4, num_head_channels=-1,
                      diffusion=dict(steps=500, schedule="linear")),
    # ACE CelebA-HQ 256x256 (64-channel heads).
    "celebahq256": dict(image_size=256, model_channels=128, num_res_blocks=2,
                        channel_mult=(1, 1, 2, 2, 4, 4), attention_resolutions=(32, 16, 8),
                        num_heads=4, num_head_channels=64, diffusion=dict(steps=500, schedule="linear")),
    # guided-diffusion's 256x256 unconditional ImageNet model.
    "imagenet256_uncond": dict(image_size=256, model_channels=256, num_res_blocks=2,
                               channel_mult=(1, 1, 2, 2, 4, 4), attention_resolutions=(32, 16, 8),
                               num_heads=4, num_head_channels=64,
                               diffusion=dict(steps=1000, schedule="linear")),
    # The fixtures' "small" model and the 32x32 configuration of the PyTorch reference timing.
    "small32": dict(image_size=32, model_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2),
                    attention_resolutions=(16, 8), num_heads=2, num_head_channels=-1,
                    diffusion=dict(steps=500, schedule="linear")),
    # The fixtures' "small_headch" model (16-channel heads, 2 res blocks).
    "small32_headch": dict(image_size=32, model_channels=32, num_res_blocks=2, channel_mult=(1, 2, 2, 2),
                           attention_resolutions=(16, 8), num_heads=2, num_head_channels=16,
                           diffusion=dict(steps=500, schedule="linear")),
    # The 64x64 configuration of the PyTorch reference timing.
    "medium64": dict(image_size=64, model_channels=64, num_res_blocks=2, channel_mult=(1, 2, 2, 2),
                     attention_resolutions=(16, 8), num_heads=4, num_head_channels=32,
                     diffusion=dict(steps=500, schedule="linear")),
    # The bundled squares DDPM (AC-RE's setting: 1000 linear steps), small enough to train on CPU.
    # Attention only in the middle block (8x8): level attention at 8 cost ~50% more per CPU step.
    "squares32": dict(image_size=32, model_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2),
                      attention_resolutions=(), num_heads=2, num_head_channels=-1,
                      diffusion=dict(steps=1000, schedule="linear")),
}


def unet_config(name: str, **overrides) -> dict:
  """Network config of a named UNet (without its diffusion settings), with optional overrides.

  Example:
    >>> unet_config("celeba128")["model_channels"]
    128
  """
  if name not in UNET_CONFIGS:
    raise unknown_name("UNet config", name, UNET_CONFIGS)
  cfg = {**_COMMON, **copy.deepcopy(UNET_CONFIGS[name])}
  cfg.pop("diffusion")
  cfg.update(overrides)
  for k in ("channel_mult", "attention_resolutions"):
    cfg[k] = list(cfg[k])
  return cfg


def diffusion_settings(name: str) -> dict:
  """Diffusion settings (``steps``, ``schedule``) a named UNet was trained with."""
  if name not in UNET_CONFIGS:
    raise unknown_name("UNet config", name, UNET_CONFIGS)
  return dict(UNET_CONFIGS[name]["diffusion"])
