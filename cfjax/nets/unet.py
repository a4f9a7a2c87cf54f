"""The ADM UNet of OpenAI's guided-diffusion, in Flax NNX, laid out so released checkpoints load.

Module tree and attribute names follow ``guided_diffusion/unet.py: UNetModel`` one to one (see
:mod:`cfjax.nets.torch_import` for the key mapping), so every option of the released ACE, DiME and
guided-diffusion models is here: ``channel_mult``, ``num_res_blocks``, ``attention_resolutions``,
``num_heads`` / ``num_head_channels``, legacy and new QKV order, scale-shift norm,
``resblock_updown``, ``learn_sigma`` (6 output channels), GroupNorm(32) in float32, dropout,
class conditioning, and a bfloat16 compute dtype for TPU runs (parameters stay float32).

Images are NHWC here (the PyTorch original is NCHW); timesteps are the *original* timesteps of the
base process (guided-diffusion's ``_WrappedModel`` maps re-spaced indices before the model call;
:mod:`cfjax.diffusion` does the same).

Example:
  >>> import jax.numpy as jnp
  >>> from cfjax import nets
  >>> unet = nets.build(nets.unet_config("small32"))
  >>> unet.apply(unet.params, jnp.zeros((1, 32, 32, 3)), jnp.array([10])).shape
  (1, 32, 32, 6)
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cfjax.nets.layers import attention, group_norm
from cfjax.nets.registry import register

_zeros = nnx.initializers.zeros_init()


def timestep_embedding(t: jax.Array, dim: int, max_period: int = 10000) -> jax.Array:
  """Sinusoidal embedding, ``[cos, sin]`` with cos first, as guided-diffusion's ``nn.py``.

  The frequencies are computed in float32 like the original; its argument is ``t.float() * freqs``.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


class GroupNorm32(nnx.Module):
  """GroupNorm with 32 groups and eps 1e-5, always computed in float32 (``nn.py: GroupNorm32``).

  Parameters live in an ``nnx.GroupNorm`` (``norm.scale``, ``norm.bias``), the layout checkpoints
  use; the computation is :func:`group_norm`.
  """

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.norm = nnx.GroupNorm(channels, num_groups=32, epsilon=1e-5, dtype=jnp.float32, rngs=rngs)

  def __call__(self, x, emb_scale=None, emb_shift=None):
    f32 = lambda a: None if a is None else a.astype(jnp.float32)
    y = group_norm(x.astype(jnp.float32), self.norm.scale[...], self.norm.bias[...],
                   num_groups=self.norm.num_groups, eps=self.norm.epsilon,
                   emb_scale=f32(emb_scale), emb_shift=f32(emb_shift))
    return y.astype(x.dtype)


def _conv(cin, cout, k, *, stride=1, dtype, rngs, zero=False):
  pad = (k - 1) // 2
  kw = {"kernel_init": _zeros, "bias_init": _zeros} if zero else {}
  # Explicit symmetric padding: torch's padding=1 with stride 2 is not Flax's 'SAME' (which pads (0, 1)).
  return nnx.Conv(cin, cout, (k, k), strides=stride, padding=((pad, pad), (pad, pad)), dtype=dtype,
                  rngs=rngs, **kw)


def _upsample_nearest(x):
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _avg_pool2(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class Upsample(nnx.Module):
  """``unet.py: Upsample``: nearest x2, then an optional 3x3 conv (torch key ``.conv``)."""

  def __init__(self, channels, use_conv, out_channels=None, *, dtype, rngs):
    out_channels = out_channels or channels
    self.conv = _conv(channels, out_channels, 3, dtype=dtype, rngs=rngs) if use_conv else None

  def __call__(self, x, emb=None, **kw):
    x = _upsample_nearest(x)
    return self.conv(x) if self.conv is not None else x


class Downsample(nnx.Module):
  """``unet.py: Downsample``: a stride-2 3x3 conv (torch key ``.op``) or 2x2 average pooling."""

  def __init__(self, channels, use_conv, out_channels=None, *, dtype, rngs):
    out_channels = out_channels or channels
    self.op = _conv(channels, out_channels, 3, stride=2, dtype=dtype, rngs=rngs) if use_conv else None

  def __call__(self, x, emb=None, **kw):
    return self.op(x) if self.op is not None else _avg_pool2(x)


class ResBlock(nnx.Module):
  """``unet.py: ResBlock``, with the original's ordering of resampling, embedding and skip."""

  def __init__(self, channels, emb_channels, dropout, out_channels=None, *, use_conv=False,
               use_scale_shift_norm=False, up=False, down=False, dtype, rngs):
    out_channels = out_channels or channels
    self.up, self.down = up, down
    self.use_scale_shift_norm = use_scale_shift_norm
    self.in_norm = GroupNorm32(channels, rngs=rngs)
    self.in_conv = _conv(channels, out_channels, 3, dtype=dtype, rngs=rngs)
    self.emb_linear = nnx.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels,
                                 dtype=dtype, rngs=rngs)
    self.out_norm = GroupNorm32(out_channels, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.out_conv = _conv(out_channels, out_channels, 3, dtype=dtype, rngs=rngs, zero=True)
    if out_channels == channels:
      self.skip = None
    else:
      self.skip = _conv(channels, out_channels, 3 if use_conv else 1, dtype=dtype, rngs=rngs)

  def _resample(self, x):
    if self.up:
      return _upsample_nearest(x)
    if self.down:
      return _avg_pool2(x)
    return x

  def __call__(self, x, emb, *, rngs=None):
    h = nnx.silu(self.in_norm(x))
    # With resblock_updown the resampling sits between SiLU and the first conv, and the skip input
    # is resampled the same way (README convention 13).
    h = self.in_conv(self._resample(h))
    x = self._resample(x)
    emb_out = self.emb_linear(nnx.silu(emb)).astype(h.dtype)
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(emb_out, 2, axis=-1)  # scale is the FIRST half
      h = self.out_norm(h, emb_scale=scale, emb_shift=shift)
    else:
      h = self.out_norm(h + emb_out[:, None, None, :])
    h = nnx.silu(h)
    h = self.dropout(h, deterministic=rngs is None, rngs=rngs)
    h = self.out_conv(h)
    skip = x if self.skip is None else self.skip(x)
    return skip + h


class AttentionBlock(nnx.Module):
  """``unet.py: AttentionBlock`` with legacy (``[head][q,k,v][ch]``) or new (``[q,k,v][head][ch]``) order."""

  def __init__(self, channels, num_heads=1, num_head_channels=-1, use_new_attention_order=False, *,
               dtype, rngs):
    if num_head_channels == -1:
      self.num_heads = num_heads
    else:
      if channels % num_head_channels:
        raise ValueError(f"channels {channels} not divisible by num_head_channels {num_head_channels}")
      self.num_heads = channels // num_head_channels
    self.new_order = use_new_attention_order
    self.norm = GroupNorm32(channels, rngs=rngs)
    # torch Conv1d(k=1) layers: a Dense over channels is the same map.
    self.qkv = nnx.Linear(channels, 3 * channels, dtype=dtype, rngs=rngs)
    self.proj_out = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs, kernel_init=_zeros)

  def __call__(self, x, emb=None, **kw):
    b, hh, ww, c = x.shape
    heads = self.num_heads
    ch = c // heads
    qkv = self.qkv(self.norm(x)).reshape(b, hh * ww, 3 * c)
    if self.new_order:
      q, k, v = (a.reshape(b, hh * ww, heads, ch) for a in jnp.split(qkv, 3, axis=-1))
    else:
      qkv = qkv.reshape(b, hh * ww, heads, 3, ch)
      q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
    scale = 1.0 / math.sqrt(math.sqrt(ch))  # q and k are both scaled by ch ** -0.25, as in the original
    # Heads-major (b, h, t, c) operands: XLA:CPU fused the softmax into a (b, t, h, c) contraction
    # about 5x slower (17 ms vs 3 ms for 16 x 256 tokens x 2 heads of 32 channels).
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))
    a = jnp.swapaxes(attention(q * scale, k * scale, v), 1, 2).reshape(b, hh, ww, c)
    return x + self.proj_out(a)


class _Sequential(nnx.Module):
  """``TimestepEmbedSequential``: passes the embedding to the layers that take one."""

  def __init__(self, layers):
    self.layers = nnx.List(layers)

  def __call__(self, x, emb, *, rngs=None):
    for layer in self.layers:
      if isinstance(layer, ResBlock):
        x = layer(x, emb, rngs=rngs)
      elif isinstance(layer, (AttentionBlock, Upsample, Downsample)):
        x = layer(x)
      else:
        x = layer(x)
    return x


def _parse_ints(v) -> tuple[int, ...]:
  if isinstance(v, str):
    return tuple(int(s) for s in v.split(",") if s.strip())
  return tuple(int(s) for s in v)


def _parse_mult(v) -> tuple[float, ...]:
  if isinstance(v, str):
    return tuple(float(s) for s in v.split(",") if s.strip())
  return tuple(float(s) for s in v)


@register("adm_unet")
class UNetModel(nnx.Module):
  """guided-diffusion's ``UNetModel`` (2-D).

  Args mirror ``script_util.create_model``: ``attention_resolutions`` is a list of *resolutions*
  (e.g. ``"16,8"``), converted to downsampling factors ``image_size // r`` as the original does;
  ``out_channels`` is 6 with ``learn_sigma``. ``dtype`` is the compute dtype of convolutions, dense
  layers and attention ("float32" or "bfloat16"); GroupNorm and softmax stay float32.
  """

  def __init__(self, *, image_size: int, model_channels: int, num_res_blocks: int,
               attention_resolutions: Sequence[int] | str, channel_mult: Sequence[float] | str,
               in_channels: int = 3, out_channels: int = 6, dropout: float = 0.0,
               num_classes: int | None = None, num_heads: int = 1, num_head_channels: int = -1,
               num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
               resblock_updown: bool = False, use_new_attention_order: bool = False,
               conv_resample: bool = True, dtype: str = "float32", rngs: nnx.Rngs):
    dt = jnp.dtype(dtype)
    mult = _parse_mult(channel_mult)
    attn_ds = {image_size // r for r in _parse_ints(attention_resolutions)}
    if num_heads_upsample == -1:
      num_heads_upsample = num_heads
    self.model_channels = model_channels
    self.num_classes = num_classes
    self.dtype = dt
    ted = model_channels * 4
    self.time_embed_0 = nnx.Linear(model_channels, ted, rngs=rngs)
    self.time_embed_2 = nnx.Linear(ted, ted, rngs=rngs)
    self.label_emb = nnx.Embed(num_classes, ted, rngs=rngs) if num_classes is not None else None

    def res(cin, cout, **kw):
      return ResBlock(cin, ted, dropout, cout, use_scale_shift_norm=use_scale_shift_norm, dtype=dt,
                      rngs=rngs, **kw)

    def attn(c, heads):
      return AttentionBlock(c, heads, num_head_channels, use_new_attention_order, dtype=dt, rngs=rngs)

    ch = input_ch = int(mult[0] * model_channels)
    blocks = [_Sequential([_conv(in_channels, ch, 3, dtype=dt, rngs=rngs)])]
    chans, ds = [ch], 1
    for level, m in enumerate(mult):
      for _ in range(num_res_blocks):
        layers = [res(ch, int(m * model_channels))]
        ch = int(m * model_channels)
        if ds in attn_ds:
          layers.append(attn(ch, num_heads))
        blocks.append(_Sequential(layers))
        chans.append(ch)
      if level != len(mult) - 1:
        down = (res(ch, ch, down=True) if resblock_updown
                else Downsample(ch, conv_resample, ch, dtype=dt, rngs=rngs))
        blocks.append(_Sequential([down]))
        chans.append(ch)
        ds *= 2
    self.input_blocks = nnx.List(blocks)
    self.middle_block = _Sequential([res(ch, ch), attn(ch, num_heads), res(ch, ch)])
    out_blocks = []
    for level, m in list(enumerate(mult))[::-1]:
      for i in range(num_res_blocks + 1):
        ich = chans.pop()
        layers = [res(ch + ich, int(model_channels * m))]
        ch = int(model_channels * m)
        if ds in attn_ds:
          layers.append(attn(ch, num_heads_upsample))
        if level and i == num_res_blocks:
          layers.append(res(ch, ch, up=True) if resblock_updown
                        else Upsample(ch, conv_resample, ch, dtype=dt, rngs=rngs))
          ds //= 2
        out_blocks.append(_Sequential(layers))
    self.output_blocks = nnx.List(out_blocks)
    self.out_norm = GroupNorm32(ch, rngs=rngs)
    self.out_conv = _conv(input_ch, out_channels, 3, dtype=dt, rngs=rngs, zero=True)

  def embed(self, t, y=None):
    emb = self.time_embed_2(nnx.silu(self.time_embed_0(timestep_embedding(t, self.model_channels))))
    if self.label_emb is not None:
      if y is None:
        raise ValueError("this UNet is class-conditional: pass class labels y")
      emb = emb + self.label_emb(y)
    return emb

  def __call__(self, x, t, y=None, *, dropout_key=None, return_activations=False):
    """Predicts epsilon (and the variance interpolation) for NHWC ``x`` at original timesteps ``t``.

    Args:
      x: (B, H, W, C) noisy images in the diffusion range.
      t: (B,) original timesteps (int or float).
      y: (B,) class labels for class-conditional models.
      dropout_key: a PRNG key to enable dropout (training); None runs deterministically.
      return_activations: also return the output of every block (for tests against the original).
    """
    rngs = nnx.Rngs(dropout=dropout_key) if dropout_key is not None else None
    emb = self.embed(jnp.asarray(t), y)
    h = x.astype(self.dtype)
    hs, acts = [], {}
    for i, block in enumerate(self.input_blocks):
      h = block(h, emb, rngs=rngs)
      hs.append(h)
      acts[f"input_blocks.{i}"] = h
    h = self.middle_block(h, emb, rngs=rngs)
    acts["middle_block"] = h
    for i, block in enumerate(self.output_blocks):
      h = jnp.concatenate([h, hs.pop()], axis=-1)  # current activation first, as torch.cat([h, skip])
      h = block(h, emb, rngs=rngs)
      acts[f"output_blocks.{i}"] = h
    out = self.out_conv(nnx.silu(self.out_norm(h))).astype(jnp.float32)
    return (out, acts) if return_activations else out
