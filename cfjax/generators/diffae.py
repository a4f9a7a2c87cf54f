"""Diff-AE as a generator: the latent is the pair (z_sem, x_T) of a diffusion autoencoder.

Diff-AE (``experiment.py: LitModel``) encodes an image twice: ``encode`` (the semantic encoder,
``z_sem``) and ``encode_stochastic`` (DDIM inversion conditioned on z_sem, giving x_T); ``render``
decodes (x_T, z_sem) with conditional DDIM (eta 0, x0 clipped to [-1, 1]). Every sampler re-spaces
the base process as Diff-AE does, ``"ddim<steps>"`` (stride ``1000 // steps`` from 0: ``ddim10`` =
0, 100, ..., 900; :func:`cfjax.diffusion.space_timesteps` computes the same sets), with
``fixed_large`` variance (used only by ancestral sampling).

:func:`diffae_model` gives these as plain functions of ``params`` (images in cfjax's [0, 1]):

* ``semantic_encode(params, x) -> z_sem``;
* ``stochastic_encode(params, x, z_sem, steps, mode="unrolled") -> x_T`` (unscaled, ~N(0, I));
* ``render(params, x_T, z_sem, steps, mode="unrolled") -> x`` (``LitModel.render``: ``(sample + 1) / 2``);
* ``eps(params, x_t, t_model, z_sem)``: the UNet, for :mod:`cfjax.diffusion` chains.

Each takes one example (HWC, (D,)) or a batch (NHWC, (N, D)). ``steps`` is a static Python int;
``mode`` is "unrolled" (a Python loop) or "rolled" (``lax.scan`` with ``jax.checkpoint`` per step,
so reverse-mode memory stays flat in ``steps``); both compute the same numbers.

As a :class:`~cfjax.generators.Generator` (one ``latent_shape``) the latent is ONE flat vector
``concat([z_sem, x_T.reshape(-1)])`` of length ``style_ch + H * W * 3``: :func:`split_latent` and
:func:`join_latent` convert. Methods that optimise z_sem only (Diff-AE-RE) use the plain functions
and keep x_T fixed.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from cfjax import nets
  >>> from cfjax.nets import diffae_configs
  >>> net = nets.build(diffae_configs.diffae_config("tiny32"))
  >>> g = diffae_generator(net, {}, encode_steps=2, decode_steps=2)
  >>> z = g.encode(g.params, jnp.full((32, 32, 3), 0.5), None)
  >>> z.shape, g.decode(g.params, z, None).shape
  ((3104,), (32, 32, 3))
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfjax import diffusion as dd
from cfjax._validate import CfjaxInputError, check_choice
from cfjax.generators.base import Generator, register_generator
from cfjax.nets import diffae as _diffae  # noqa: F401  (registers "diffae")
from cfjax.nets.registry import make_apply


@functools.lru_cache(maxsize=32)
def _schedule_np(steps: int, base_steps: int, beta_schedule: str) -> dd.Schedule:
  return dd.make_schedule_np(base_steps, beta_schedule, f"ddim{steps}")


def diffae_schedule(steps: int, base_steps: int = 1000, beta_schedule: str = "linear") -> dd.Schedule:
  """The ``"ddim<steps>"`` re-spaced schedule Diff-AE samples and encodes with (``_make_diffusion_conf``).

  The float64 tables are cached; the float32 arrays are made per call (constants under jit).

  Example:
    >>> diffae_schedule(10).timestep_map.tolist()
    [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]
  """
  if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= base_steps:
    raise CfjaxInputError(f"steps must be a Python int in [1, {base_steps}], got {steps!r}")
  return dd.to_device(_schedule_np(int(steps), int(base_steps), str(beta_schedule)))


class DiffAE(NamedTuple):
  """Diff-AE's encode / encode_stochastic / render as pure functions, with params and settings."""

  semantic_encode: Callable[..., Any]
  stochastic_encode: Callable[..., Any]
  render: Callable[..., Any]
  eps: Callable[..., Any]
  params: Any
  config: dict
  diffusion: dict  # {"steps": T, "schedule": "linear", "T_eval": 20, ...}


def _batched(fn):
  """Runs ``fn`` on a batch; a single example (HWC image) gets a batch axis of 1 and loses it."""

  @functools.wraps(fn)
  def wrapped(params, x, *rest, **kw):
    if x.ndim == 3:
      rest = tuple(r[None] if getattr(r, "ndim", None) == 1 else r for r in rest)
      return jax.tree.map(lambda a: a[0], fn(params, x[None], *rest, **kw))
    return fn(params, x, *rest, **kw)

  return wrapped


def diffae_model(net, diffusion: dict | None = None) -> DiffAE:
  """The :class:`DiffAE` functions of a ``diffae`` network (see the module docstring).

  Args:
    net: a ``cfjax.nets.Network`` of arch "diffae" (e.g. from
      :func:`cfjax.nets.diffae_import.load_diffae`).
    diffusion: ``{"steps", "schedule"}`` of the base process (default 1000, "linear").

  Example:
    >>> from cfjax import nets
    >>> from cfjax.nets import diffae_configs
    >>> m = diffae_model(nets.build(diffae_configs.diffae_config("tiny32")))
    >>> m.semantic_encode(m.params, jnp.zeros((32, 32, 3))).shape
    (32,)
  """
  diffusion = {"steps": 1000, "schedule": "linear", "T_eval": 20, **(diffusion or {})}
  enc = make_apply(net.config, "encode")
  unet = make_apply(net.config)

  def sched(steps):
    return diffae_schedule(steps, int(diffusion["steps"]), str(diffusion["schedule"]))

  def eps(params, x_t, t_model, z_sem):
    return unet(params, x_t, t_model, z_sem)

  @_batched
  def semantic_encode(params, x):
    return enc(params, x * 2 - 1)

  @_batched
  def stochastic_encode(params, x, z_sem, steps, mode="unrolled"):
    check_choice("chain mode", mode, dd.MODES)
    return dd.ddim_invert(sched(steps), lambda x_t, t: eps(params, x_t, t, z_sem), x * 2 - 1, mode=mode)

  @_batched
  def render(params, x_T, z_sem, steps, mode="unrolled"):
    check_choice("chain mode", mode, dd.MODES)
    sample = dd.ddim_sample_loop(sched(steps), lambda x_t, t: eps(params, x_t, t, z_sem), x_T, mode=mode)
    return (sample + 1) / 2

  return DiffAE(semantic_encode, stochastic_encode, render, eps, net.params, net.config, diffusion)


def join_latent(z_sem: jax.Array, x_T: jax.Array) -> jax.Array:
  """The generator latent of one example: ``concat([z_sem, x_T.reshape(-1)])``."""
  return jnp.concatenate([z_sem.reshape(-1), x_T.reshape(-1)])


def split_latent(z: jax.Array, style_ch: int, image_shape: tuple) -> tuple[jax.Array, jax.Array]:
  """``(z_sem, x_T)`` of one generator latent (inverse of :func:`join_latent`).

  Example:
    >>> z_sem, x_T = split_latent(jnp.zeros(2 + 4 * 4 * 3), 2, (4, 4, 3))
    >>> z_sem.shape, x_T.shape
    ((2,), (4, 4, 3))
  """
  return z[:style_ch], z[style_ch:].reshape(image_shape)


@register_generator("diffae")
def diffae_generator(net, meta: dict | None = None, *, encode_steps: int | None = None,
                     decode_steps: int | None = None, mode: str = "unrolled") -> Generator:
  """A :class:`Generator` from a ``diffae`` network: latent ``concat([z_sem, x_T.reshape(-1)])``.

  Args:
    net: the ``diffae`` network.
    meta: checkpoint metadata; ``meta["diffusion"]`` gives the base process (``steps``,
      ``schedule``) and ``T_eval`` (20 in every released template).
    encode_steps: DDIM inversion steps of ``encode`` (default ``T_eval``: encoding and decoding
      with the same steps reconstructs best).
    decode_steps: DDIM steps of ``decode`` (default ``T_eval``).
    mode: "unrolled" or "rolled" chains (see the module docstring).

  ``encode`` ignores its key (both encoders are deterministic); so does ``decode`` (eta 0).
  """
  meta = dict(meta or {})
  check_choice("chain mode", mode, dd.MODES)
  m = diffae_model(net, meta.get("diffusion"))
  t_eval = int(m.diffusion.get("T_eval", 20))
  n_enc = t_eval if encode_steps is None else encode_steps
  n_dec = t_eval if decode_steps is None else decode_steps
  for n in (n_enc, n_dec):  # checks the step counts before anything is traced
    diffae_schedule(n, int(m.diffusion["steps"]), str(m.diffusion["schedule"]))
  size, style_ch = int(net.config["image_size"]), int(net.config["enc_out_channels"])
  image_shape = (size, size, int(net.config.get("in_channels", 3)))

  def encode_fn(params, x, key):
    z_sem = m.semantic_encode(params, x)
    return join_latent(z_sem, m.stochastic_encode(params, x, z_sem, n_enc, mode=mode))

  def decode_fn(params, z, key):
    z_sem, x_T = split_latent(z, style_ch, image_shape)
    return m.render(params, x_T, z_sem, n_dec, mode=mode)

  meta.update(diffae=m, encode_steps=n_enc, decode_steps=n_dec, style_ch=style_ch,
              latent_layout="concat([z_sem, x_T.reshape(-1)])")
  return Generator(encode_fn, decode_fn, net.params, (style_ch + int(np.prod(image_shape)),),
                   image_shape, name=meta.get("source", "diffae"), meta=meta)
