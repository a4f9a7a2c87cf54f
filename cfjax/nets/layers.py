"""Layers of the ADM UNet written for speed: the functions :mod:`cfjax.nets.unet` computes with.

Each computes exactly what the guided-diffusion layer computes (tested against torch, float64 and
autodiff) but arranged for fewer passes over activations, which is what XLA:CPU spends its time
on (``benchmarks/README.md``, session 4; ``benchmarks/bench_layers.py`` compares them with the
plain versions):

* :func:`group_norm`: GroupNorm statistics from per-channel sums, normalisation and affine maps
  folded into one per-channel ``(x - mean) * a + b``.
* :func:`attention`: ``softmax(q k^T) v`` with a hand-written gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def group_norm(x, scale, bias, *, num_groups: int = 32, eps: float = 1e-5, emb_scale=None,
               emb_shift=None):
  """GroupNorm of NHWC ``x`` with a per-channel affine map, optionally followed by ``* (1 + s) + t``.

  The same function as ``torch.nn.GroupNorm`` (biased two-pass variance), arranged for speed: the
  statistics come from per-channel sums over the pixels (reductions that keep channels minor), are
  combined per group on (N, C)-sized arrays, and the normalisation and both affine maps are folded
  into one per-channel ``(x - mean) * a + b``. Reshaping ``x`` to (..., groups, channels per group)
  instead, as ``nnx.GroupNorm`` does, leaves a minor dimension of 1 or 2 channels that XLA:CPU
  vectorises poorly: the gradient of a 5-step DDPM chain through the small32 UNet ran 8-13% faster
  this way (``benchmarks/README.md``, session 4).

  Args:
    x: (N, H, W, C) activations; C divisible by ``num_groups``.
    scale, bias: (C,) affine parameters.
    emb_scale, emb_shift: optional (N, C) scale-shift modulation (guided-diffusion's
      ``use_scale_shift_norm``): the result is ``norm(x) * (1 + emb_scale) + emb_shift``.

  Example:
    >>> x = jnp.arange(2 * 4 * 4 * 64, dtype=jnp.float32).reshape(2, 4, 4, 64) % 7
    >>> y = group_norm(x, jnp.ones(64), jnp.zeros(64))
    >>> bool(jnp.allclose(y.reshape(2, 16, 32, 2).mean(axis=(1, 3)), 0.0, atol=1e-5))
    True
  """
  n, h, w, c = x.shape
  per_group = c // num_groups
  count = h * w * per_group
  xf = x.reshape(n, h * w, c)

  def group_mean(channel_sums):  # (N, C) -> (N, C): the mean over each channel's group
    g = channel_sums.reshape(n, num_groups, per_group).sum(-1, keepdims=True) / count
    return jnp.broadcast_to(g, (n, num_groups, per_group)).reshape(n, c)

  mean = group_mean(jnp.sum(xf, axis=1))
  var = group_mean(jnp.sum(jnp.square(xf - mean[:, None, :]), axis=1))
  a = jax.lax.rsqrt(var + eps) * scale
  b = jnp.broadcast_to(bias, (n, c))
  if emb_scale is not None:
    a = a * (1 + emb_scale)
    b = b * (1 + emb_scale) + emb_shift
  return (x - mean[:, None, None, :]) * a[:, None, None, :] + b[:, None, None, :]


def _attention_fwd(q, k, v):
  w = jax.nn.softmax(jnp.einsum("bhtc,bhsc->bhts", q, k).astype(jnp.float32), axis=-1)
  o = jnp.einsum("bhts,bhsc->bhtc", w.astype(v.dtype), v)
  return o, (q, k, v, w, o)


def _attention_bwd(res, do):
  q, k, v, w, o = res
  dv = jnp.einsum("bhts,bhtc->bhsc", w.astype(v.dtype), do)
  dw = jnp.einsum("bhtc,bhsc->bhts", do, v).astype(jnp.float32)
  # sum_s dw[t, s] w[t, s] = sum_c do[t, c] o[t, c]: a (t, c) product instead of a (t, s) one.
  rows = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
  ds = (w * (dw - rows)).astype(q.dtype)
  return jnp.einsum("bhts,bhsc->bhtc", ds, k), jnp.einsum("bhts,bhtc->bhsc", ds, q), dv


@jax.custom_vjp
def attention(q, k, v):
  """``softmax(q k^T) v`` over heads-major (batch, heads, tokens, channels) operands.

  The softmax is taken in float32 whatever the operands' dtype. The hand-written gradient uses
  the row sums ``sum(do * o)`` where autodiff forms ``sum(dw * w)`` over the (tokens x tokens)
  weights, which XLA:CPU fused with a contraction into a slow loop: one ACE iteration (small32,
  8 slots, one core) went from 1.02 to 0.95 s (``benchmarks/README.md``, session 4).

  Example:
    >>> q = k = v = jnp.ones((1, 2, 4, 8))
    >>> attention(q, k, v).shape
    (1, 2, 4, 8)
  """
  return _attention_fwd(q, k, v)[0]


attention.defvjp(_attention_fwd, _attention_bwd)
