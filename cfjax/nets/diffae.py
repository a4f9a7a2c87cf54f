"""Diff-AE (Preechakul et al. 2022, "Diffusion Autoencoders"), in Flax NNX.

``BeatGANsAutoencModel`` of phizaz/diffae (``model/unet_autoenc.py``, ``model/unet.py``,
``model/blocks.py``) with its attribute tree laid out for the importer
(:mod:`cfjax.nets.diffae_import`): a semantic encoder (a half UNet without time input whose head
is GroupNorm, SiLU, spatial mean and a 1x1 conv, giving ``z_sem``) and a UNet whose ResBlocks are
modulated by the time embedding (scale and shift after their second GroupNorm) and then by
``z_sem`` (``h * (1 + Linear(SiLU(z_sem)))``, ``resnet_two_cond``). The model predicts epsilon.

Conventions that differ from guided-diffusion's UNet (:mod:`cfjax.nets.unet`): GroupNorm has
``min(32, C)`` groups; ``attention_resolutions`` are feature-map sizes in pixels (``(16,)`` means
"at 16x16"), not downsampling factors; encoder ResBlocks are ``skip(x) + conv(SiLU(GN(x)))`` only.
Images are NHWC (the original is NCHW); timesteps are the original timesteps of the base process.

Example:
  >>> import jax.numpy as jnp
  >>> from cfjax import nets
  >>> from cfjax.nets import diffae_configs
  >>> net = nets.build(diffae_configs.diffae_config("tiny32"))
  >>> z = nets.registry.make_apply(net.config, "encode")(net.params, jnp.zeros((1, 32, 32, 3)))
  >>> net.apply(net.params, jnp.zeros((1, 32, 32, 3)), jnp.array([10]), z).shape
  (1, 32, 32, 3)
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cfjax._validate import CfjaxInputError
from cfjax.nets import unet as _unet
from cfjax.nets.registry import register
from cfjax.nets.unet import (Downsample, GroupNorm32, Upsample, _avg_pool2, _conv, _upsample_nearest,
                             timestep_embedding)


class GroupNorm(GroupNorm32):
  """Diff-AE's ``normalization``: ``min(32, channels)`` groups, eps 1e-5, float32."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.norm = nnx.GroupNorm(channels, num_groups=min(32, channels), epsilon=1e-5,
                              dtype=jnp.float32, rngs=rngs)


class ResBlock(nnx.Module):
  """``blocks.py: ResBlock``; with ``emb_channels=None`` the encoder's unconditioned block.

  Conditioned: ``h = GN(conv(SiLU(GN(x)))) * (1 + s_t) + b_t``, then ``h * (1 + c)`` with
  ``c = Linear(SiLU(z_sem))``, then ``conv(dropout(SiLU(h)))`` plus the skip. Unconditioned:
  ``skip(x) + conv(SiLU(GN(x)))``. Up/down resampling sits between SiLU and the first conv and is
  applied to the skip input too.
  """

  def __init__(self, channels: int, out_channels: int | None = None, *, emb_channels: int | None = None,
               cond_channels: int | None = None, dropout: float = 0.0, up: bool = False,
               down: bool = False, dtype, rngs: nnx.Rngs):
    out = out_channels or channels
    self.up, self.down = up, down
    self.in_norm = GroupNorm(channels, rngs=rngs)
    self.in_conv = _conv(channels, out, 3, dtype=dtype, rngs=rngs)
    cond = emb_channels is not None  # the encoder's blocks have no out_layers
    self.emb_linear = nnx.Linear(emb_channels, 2 * out, dtype=dtype, rngs=rngs) if cond else None
    self.cond_linear = (nnx.Linear(cond_channels or emb_channels, out, dtype=dtype, rngs=rngs)
                        if cond else None)
    self.out_norm = GroupNorm(out, rngs=rngs) if cond else None
    self.out_conv = _conv(out, out, 3, dtype=dtype, rngs=rngs, zero=True) if cond else None
    self.dropout = nnx.Dropout(dropout)
    self.skip = None if out == channels else _conv(channels, out, 1, dtype=dtype, rngs=rngs)

  def _resample(self, x):
    if self.up:
      return _upsample_nearest(x)
    return _avg_pool2(x) if self.down else x

  def style(self, cond: jax.Array) -> jax.Array:
    """This block's style vector ``Linear(SiLU(z_sem))`` (``cond_emb_layers``), shape (B, C)."""
    return self.cond_linear(nnx.silu(cond))

  def __call__(self, x, emb=None, cond=None, *, rngs=None):
    h = self.in_conv(self._resample(nnx.silu(self.in_norm(x))))
    x = self._resample(x)
    if self.out_conv is not None:
      scale, shift = jnp.split(self.emb_linear(nnx.silu(emb)).astype(h.dtype), 2, axis=-1)
      h = self.out_norm(h, emb_scale=scale, emb_shift=shift)  # time: scale is the FIRST half
      h = h * (1 + self.style(cond).astype(h.dtype)[:, None, None, :])
      h = self.dropout(nnx.silu(h), deterministic=rngs is None, rngs=rngs)
      h = self.out_conv(h)
    return (x if self.skip is None else self.skip(x)) + h


class AttentionBlock(_unet.AttentionBlock):
  """guided-diffusion's attention block (see :class:`cfjax.nets.unet.AttentionBlock`) with
  Diff-AE's ``min(32, C)``-group GroupNorm."""

  def __init__(self, channels, num_heads=1, num_head_channels=-1, use_new_attention_order=False, *,
               dtype, rngs):
    self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
    self.new_order = use_new_attention_order
    self.norm = GroupNorm(channels, rngs=rngs)
    self.qkv = nnx.Linear(channels, 3 * channels, dtype=dtype, rngs=rngs)
    self.proj_out = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs,
                               kernel_init=nnx.initializers.zeros_init())


class _Sequential(nnx.Module):
  """``TimestepEmbedSequential``: ResBlocks get the time embedding and z_sem, others only x."""

  def __init__(self, layers):
    self.layers = nnx.List(layers)

  def __call__(self, x, emb=None, cond=None, *, rngs=None):
    for layer in self.layers:
      x = layer(x, emb, cond, rngs=rngs) if isinstance(layer, ResBlock) else layer(x)
    return x

  def styles(self, cond):
    return [layer.style(cond) for layer in self.layers if isinstance(layer, ResBlock)]


def _down_half(*, image_size, in_channels, model_channels, channel_mult, num_res_blocks,
               attention_resolutions, resblock_updown, conv_resample, res, attn, dtype, rngs):
  """Input blocks of a UNet / the encoder: ``(blocks, channels of each block, ch, resolution)``."""
  ch = int(channel_mult[0] * model_channels)
  blocks = [_Sequential([_conv(in_channels, ch, 3, dtype=dtype, rngs=rngs)])]
  chans, resolution = [ch], image_size
  for level, m in enumerate(channel_mult):
    for _ in range(num_res_blocks):
      layers = [res(ch, int(m * model_channels))]
      ch = int(m * model_channels)
      if resolution in attention_resolutions:  # a pixel size, not a downsampling factor
        layers.append(attn(ch))
      blocks.append(_Sequential(layers))
      chans.append(ch)
    if level != len(channel_mult) - 1:
      resolution //= 2
      blocks.append(_Sequential([res(ch, ch, down=True) if resblock_updown
                                 else Downsample(ch, conv_resample, ch, dtype=dtype, rngs=rngs)]))
      chans.append(ch)
  return blocks, chans, ch, resolution


def _ints(v) -> tuple[int, ...]:
  return tuple(int(s) for s in (v.split(",") if isinstance(v, str) else v) if str(s).strip())


class SemanticEncoder(nnx.Module):
  """``BeatGANsEncoderModel`` with ``use_time_condition=False`` and ``pool="adaptivenonzero"``.

  ``__call__(x)`` maps NHWC images in [-1, 1] to ``z_sem`` (B, out_channels), unnormalised.
  """

  def __init__(self, *, image_size, in_channels, model_channels, out_channels, num_res_blocks,
               attention_resolutions, channel_mult, num_heads, num_head_channels, resblock_updown,
               use_new_attention_order, conv_resample, dtype, rngs):
    def res(cin, cout, **kw):
      return ResBlock(cin, cout, dtype=dtype, rngs=rngs, **kw)

    def attn(c):
      return AttentionBlock(c, num_heads, num_head_channels, use_new_attention_order, dtype=dtype, rngs=rngs)

    blocks, _, ch, _ = _down_half(
        image_size=image_size, in_channels=in_channels, model_channels=model_channels,
        channel_mult=channel_mult, num_res_blocks=num_res_blocks,
        attention_resolutions=attention_resolutions, resblock_updown=resblock_updown,
        conv_resample=conv_resample, res=res, attn=attn, dtype=dtype, rngs=rngs)
    self.input_blocks = nnx.List(blocks)
    self.middle_block = _Sequential([res(ch, ch), attn(ch), res(ch, ch)])
    self.out_norm = GroupNorm(ch, rngs=rngs)
    self.out_conv = _conv(ch, out_channels, 1, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x, *, return_activations: bool = False):
    h, acts = x.astype(self.dtype), {}
    for i, block in enumerate(self.input_blocks):
      h = block(h)
      acts[f"encoder.input_blocks.{i}"] = h
    h = self.middle_block(h)
    acts["encoder.middle_block"] = h
    # Pool first, project second (AdaptiveAvgPool2d((1, 1)) then a 1x1 conv).
    pooled = jnp.mean(nnx.silu(self.out_norm(h)), axis=(1, 2), keepdims=True)
    z = self.out_conv(pooled)[:, 0, 0, :].astype(jnp.float32)
    return (z, acts) if return_activations else z


@register("diffae")
class DiffAEModel(nnx.Module):
  """``BeatGANsAutoencModel``: the z_sem-conditioned UNet plus its semantic encoder (``.encoder``).

  Args mirror ``BeatGANsAutoencConfig`` (see :func:`cfjax.nets.diffae_configs.config_from_train_config`
  for the mapping from Diff-AE's ``TrainConfig``): ``attention_resolutions`` and
  ``enc_attn_resolutions`` are pixel sizes; ``enc_channel_mult`` has one level more than
  ``channel_mult`` in every template; ``resnet_cond_channels`` (default ``embed_channels``) must
  equal ``enc_out_channels``. ``dropout`` acts only with a ``dropout_key`` (training).
  """

  def __init__(self, *, image_size: int, model_channels: int, channel_mult: Sequence[int] | str,
               num_res_blocks: int, attention_resolutions: Sequence[int] | str, embed_channels: int,
               enc_out_channels: int, enc_channel_mult: Sequence[int] | str, enc_num_res_blocks: int = 2,
               enc_attn_resolutions: Sequence[int] | str | None = None, in_channels: int = 3,
               out_channels: int = 3, dropout: float = 0.0, num_heads: int = 1,
               num_head_channels: int = -1, num_heads_upsample: int = -1,
               resnet_cond_channels: int | None = None, resblock_updown: bool = True,
               use_new_attention_order: bool = False, conv_resample: bool = True,
               dtype: str = "float32", rngs: nnx.Rngs):
    dt = jnp.dtype(dtype)
    mult, attn_res = _ints(channel_mult), _ints(attention_resolutions)
    cond_channels = resnet_cond_channels or embed_channels
    if cond_channels != enc_out_channels:
      raise CfjaxInputError(f"the style layers take {cond_channels} channels (resnet_cond_channels or "
                            f"embed_channels) but z_sem has enc_out_channels={enc_out_channels}")
    heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
    self.model_channels, self.dtype = model_channels, dt
    self.time_embed_0 = nnx.Linear(model_channels, embed_channels, rngs=rngs)
    self.time_embed_2 = nnx.Linear(embed_channels, embed_channels, rngs=rngs)

    def res(cin, cout, **kw):
      return ResBlock(cin, cout, emb_channels=embed_channels, cond_channels=cond_channels,
                      dropout=dropout, dtype=dt, rngs=rngs, **kw)

    def attn(c, heads=num_heads):
      return AttentionBlock(c, heads, num_head_channels, use_new_attention_order, dtype=dt, rngs=rngs)

    blocks, chans, ch, resolution = _down_half(
        image_size=image_size, in_channels=in_channels, model_channels=model_channels,
        channel_mult=mult, num_res_blocks=num_res_blocks, attention_resolutions=attn_res,
        resblock_updown=resblock_updown, conv_resample=conv_resample, res=res, attn=attn,
        dtype=dt, rngs=rngs)
    input_ch = chans[0]
    self.input_blocks = nnx.List(blocks)
    self.middle_block = _Sequential([res(ch, ch), attn(ch), res(ch, ch)])
    out_blocks = []
    for level, m in list(enumerate(mult))[::-1]:
      for i in range(num_res_blocks + 1):
        layers = [res(ch + chans.pop(), int(model_channels * m))]  # h first, then the lateral
        ch = int(model_channels * m)
        if resolution in attn_res:
          layers.append(attn(ch, heads_up))
        if level and i == num_res_blocks:
          layers.append(res(ch, ch, up=True) if resblock_updown
                        else Upsample(ch, conv_resample, ch, dtype=dt, rngs=rngs))
          resolution *= 2
        out_blocks.append(_Sequential(layers))
    self.output_blocks = nnx.List(out_blocks)
    self.out_norm = GroupNorm(ch, rngs=rngs)
    self.out_conv = _conv(input_ch, out_channels, 3, dtype=dt, rngs=rngs, zero=True)
    self.encoder = SemanticEncoder(
        image_size=image_size, in_channels=in_channels, model_channels=model_channels,
        out_channels=enc_out_channels, num_res_blocks=enc_num_res_blocks,
        attention_resolutions=_ints(enc_attn_resolutions) if enc_attn_resolutions else attn_res,
        channel_mult=_ints(enc_channel_mult), num_heads=num_heads,
        num_head_channels=num_head_channels, resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order, conv_resample=conv_resample, dtype=dt,
        rngs=rngs)

  def encode(self, x, *, return_activations: bool = False):
    """z_sem (B, enc_out_channels) of NHWC images in [-1, 1] (``LitModel.encode``)."""
    return self.encoder(x, return_activations=return_activations)

  def embed(self, t):
    """The time embedding ``time_embed.time_embed(timestep_embedding(t))``, (B, embed_channels)."""
    return self.time_embed_2(nnx.silu(self.time_embed_0(timestep_embedding(jnp.asarray(t),
                                                                           self.model_channels))))

  def stylespace(self, cond):
    """Every UNet ResBlock's style vector, concatenated in module order (``encode_stylespace``)."""
    blocks = list(self.input_blocks) + [self.middle_block] + list(self.output_blocks)
    return jnp.concatenate([s for b in blocks for s in b.styles(cond)], axis=-1)

  def __call__(self, x, t, cond=None, *, x_start=None, dropout_key=None,
               return_activations: bool = False):
    """Predicted epsilon (B, H, W, out_channels) of x_t at original timesteps t given z_sem.

    Args:
      x: (B, H, W, C) noisy images.
      t: (B,) original timesteps.
      cond: (B, enc_out_channels) z_sem; None encodes ``x_start`` (the training forward).
      x_start: (B, H, W, C) clean images in [-1, 1], used when ``cond`` is None.
      dropout_key: a PRNG key to enable dropout (training); None runs deterministically.
      return_activations: also return the output of every block (for tests against the original).
    """
    rngs = nnx.Rngs(dropout=dropout_key) if dropout_key is not None else None
    cond = self.encode(x_start) if cond is None else cond
    emb = self.embed(t)
    h, hs, acts = x.astype(self.dtype), [], {}
    for i, block in enumerate(self.input_blocks):
      h = block(h, emb, cond, rngs=rngs)
      hs.append(h)
      acts[f"input_blocks.{i}"] = h
    h = self.middle_block(h, emb, cond, rngs=rngs)
    acts["middle_block"] = h
    for i, block in enumerate(self.output_blocks):
      h = block(jnp.concatenate([h, hs.pop()], axis=-1), emb, cond, rngs=rngs)
      acts[f"output_blocks.{i}"] = h
    out = self.out_conv(nnx.silu(self.out_norm(h))).astype(jnp.float32)
    return (out, acts) if return_activations else out
