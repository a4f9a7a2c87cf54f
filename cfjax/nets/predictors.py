"""Predictors (classifiers and regressors) and attribute oracles, in Flax NNX.

Three registered architectures:

* ``small_cnn`` -- a few 3x3 conv stages (conv, optional GroupNorm, SiLU, 2x2 average pool), then
  a flattened dense head. Small (about 100k parameters at 32x32), trains in minutes on a CPU; the
  bundled squares regressors and shapes classifier use it.
* ``resnet18`` -- ResNet-18 as used by AC-RE for the squares testbed: first conv 4x4 stride 1 and
  no max-pool, four stages of two basic blocks (strides 1, 2, 2, 2), global average pool, dense.
* ``oracle`` -- a shared conv trunk with ``num_attributes`` logits, for attribute-based metrics
  (MNAC, CD, oracle MAE).

Conventions (the same for every architecture):

* Input: NHWC float32 images in [0, 1]; the network maps them to [-1, 1] itself.
* Output: ``num_outputs == 1`` gives shape ``(B,)`` (a regression value or a binary logit), otherwise
  ``(B, num_outputs)`` logits. The oracle always gives ``(B, num_attributes)`` logits.
* ``features`` (``registry.make_apply(config, "features")``) gives the penultimate-layer
  features ``(B, D)``, the input of the output layer; :mod:`cfjax.metrics.features` uses them as
  a testbed's in-domain feature network.
* No BatchNorm: ``apply(params, x)`` is a pure function with no mutable batch statistics, so it
  can be differentiated with respect to the input, vmapped over single images and jitted once.
  The default is no normalisation at all (``norm="none"``): per-sample normalisation (GroupNorm)
  subtracts each image's mean activation, which partly removes the absolute intensities that a
  squares regressor has to read (the label *is* an intensity). ``resnet18`` therefore uses a
  learned residual gain initialised at zero ("SkipInit", De & Smith 2020) to train stably without
  normalisation; ``norm="group"`` is available for both nets.

Example:
  >>> import jax.numpy as jnp
  >>> from cfjax import nets
  >>> net = nets.build({"arch": "small_cnn", "num_outputs": 1, "image_size": 32})
  >>> net.apply(net.params, jnp.zeros((2, 32, 32, 3))).shape
  (2,)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cfjax._validate import CfjaxInputError, check_choice
from cfjax.nets.registry import register

NORMS = ("none", "group")


def _norm(kind: str, channels: int, rngs: nnx.Rngs):
  check_choice("normalisation", kind, NORMS)
  if kind == "none":
    return None
  return nnx.GroupNorm(channels, num_groups=min(8, channels), epsilon=1e-5, rngs=rngs)


def _avg_pool2(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _squeeze(y: jax.Array, num_outputs: int) -> jax.Array:
  return y[:, 0] if num_outputs == 1 else y


def _check_size(image_size: int, stages: int, arch: str) -> None:
  if image_size % (2 ** stages) or image_size < 2 ** stages:
    raise CfjaxInputError(
        f"{arch}: image_size {image_size} must be a multiple of {2 ** stages} ({stages} pooling stages)")


class ConvStage(nnx.Module):
  """conv 3x3 -> [GroupNorm] -> SiLU -> 2x2 average pool."""

  def __init__(self, cin: int, cout: int, norm: str, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(cin, cout, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
    self.norm = _norm(norm, cout, rngs)

  def __call__(self, x):
    h = self.conv(x)
    if self.norm is not None:
      h = self.norm(h)
    return _avg_pool2(nnx.silu(h))


class ConvTrunk(nnx.Module):
  """``stages`` conv stages with widths ``width * 2**i``, flattened, then a SiLU dense layer."""

  def __init__(self, image_size: int, width: int, stages: int, hidden: int, norm: str, *,
               rngs: nnx.Rngs, arch: str):
    _check_size(image_size, stages, arch)
    chans = [3] + [width * 2 ** i for i in range(stages)]
    self.stages = nnx.List([ConvStage(chans[i], chans[i + 1], norm, rngs=rngs) for i in range(stages)])
    side = image_size // 2 ** stages
    self.hidden = nnx.Linear(side * side * chans[-1], hidden, rngs=rngs)

  def __call__(self, x):
    h = x * 2.0 - 1.0
    for stage in self.stages:
      h = stage(h)
    return nnx.silu(self.hidden(h.reshape(h.shape[0], -1)))


@register("small_cnn")
class SmallCNN(nnx.Module):
  """A small CNN predictor.

  Args:
    num_outputs: 1 for a regressor or binary classifier (output ``(B,)``), else the class count.
    image_size: input side length (a multiple of ``2**stages``).
    width: channels of the first stage; doubled at every stage.
    stages: number of conv + pool stages.
    hidden: width of the dense layer before the output.
    norm: ``"none"`` (default, keeps absolute intensities) or ``"group"``.
  """

  def __init__(self, num_outputs: int = 1, image_size: int = 32, width: int = 16, stages: int = 3,
               hidden: int = 64, norm: str = "none", *, rngs: nnx.Rngs):
    self.num_outputs = num_outputs
    self.trunk = ConvTrunk(image_size, width, stages, hidden, norm, rngs=rngs, arch="small_cnn")
    self.out = nnx.Linear(hidden, num_outputs, rngs=rngs)

  def features(self, x):
    """Penultimate-layer features ``(B, hidden)``: the dense layer before the output."""
    return self.trunk(x)

  def __call__(self, x):
    return _squeeze(self.out(self.features(x)), self.num_outputs)


class BasicBlock(nnx.Module):
  """ResNet basic block; the residual branch is scaled by a zero-initialised gain (SkipInit)."""

  def __init__(self, cin: int, cout: int, stride: int, norm: str, *, rngs: nnx.Rngs):
    pad = ((1, 1), (1, 1))
    self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding=pad, use_bias=norm == "none",
                          rngs=rngs)
    self.norm1 = _norm(norm, cout, rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), padding=pad, use_bias=norm == "none", rngs=rngs)
    self.norm2 = _norm(norm, cout, rngs)
    self.gain = nnx.Param(jnp.zeros((), jnp.float32)) if norm == "none" else None
    needs_proj = stride != 1 or cin != cout
    self.shortcut = nnx.Conv(cin, cout, (1, 1), strides=stride, rngs=rngs) if needs_proj else None

  def __call__(self, x):
    h = self.conv1(x)
    if self.norm1 is not None:
      h = self.norm1(h)
    h = self.conv2(nnx.relu(h))
    if self.norm2 is not None:
      h = self.norm2(h)
    if self.gain is not None:
      h = h * self.gain[...]
    s = x if self.shortcut is None else self.shortcut(x)
    return nnx.relu(s + h)


@register("resnet18")
class ResNet18(nnx.Module):
  """ResNet-18 in AC-RE's small-image variant (4x4 stride-1 stem, no max-pool).

  Args:
    num_outputs: 1 for a regressor or binary classifier (output ``(B,)``), else the class count.
    width: channels of the first stage (64 in the original; 16 is plenty for 32x32 testbeds).
    norm: ``"none"`` (default, with SkipInit residual gains) or ``"group"``.
  """

  def __init__(self, num_outputs: int = 1, width: int = 64, norm: str = "none", *, rngs: nnx.Rngs):
    self.num_outputs = num_outputs
    # A 4x4 kernel has no centre; 'SAME' pads (1, 2) so the output keeps the input size.
    self.stem = nnx.Conv(3, width, (4, 4), strides=1, padding="SAME", rngs=rngs)
    self.stem_norm = _norm(norm, width, rngs)
    blocks = []
    cin = width
    for i, stride in enumerate((1, 2, 2, 2)):
      cout = width * 2 ** i
      blocks += [BasicBlock(cin, cout, stride, norm, rngs=rngs), BasicBlock(cout, cout, 1, norm, rngs=rngs)]
      cin = cout
    self.blocks = nnx.List(blocks)
    self.out = nnx.Linear(cin, num_outputs, rngs=rngs)

  def features(self, x):
    """Penultimate-layer features ``(B, 8 * width)``: the global average pool."""
    h = self.stem(x * 2.0 - 1.0)
    if self.stem_norm is not None:
      h = self.stem_norm(h)
    h = nnx.relu(h)
    for block in self.blocks:
      h = block(h)
    return h.mean(axis=(1, 2))

  def __call__(self, x):
    return _squeeze(self.out(self.features(x)), self.num_outputs)


@register("oracle")
class Oracle(nnx.Module):
  """Multi-attribute oracle: one shared conv trunk, ``num_attributes`` logits ``(B, A)``.

  Args:
    num_attributes: number of binary attributes (e.g. 40 for CelebA).
    image_size: input side length.
    width: channels of the first trunk stage.
    stages: conv + pool stages of the trunk.
    hidden: width of the shared dense layer.
    norm: ``"none"`` or ``"group"``.
  """

  def __init__(self, num_attributes: int = 40, image_size: int = 64, width: int = 32, stages: int = 4,
               hidden: int = 256, norm: str = "none", *, rngs: nnx.Rngs):
    self.trunk = ConvTrunk(image_size, width, stages, hidden, norm, rngs=rngs, arch="oracle")
    self.heads = nnx.Linear(hidden, num_attributes, rngs=rngs)

  def features(self, x):
    """Penultimate-layer features ``(B, hidden)``: the shared dense layer."""
    return self.trunk(x)

  def __call__(self, x):
    return self.heads(self.features(x))


class Predictor:
  """A predictor with input checks: ``Predictor(net)(images) -> predictions`` (numpy-friendly).

  Checks every batch at the edge (NHWC float in [0, 1], the network's image size, 3 channels)
  before calling one jitted ``apply``, so a wrong input is reported as a CfjaxInputError instead of
  a shape error from inside XLA. Use ``net.apply`` directly inside your own jitted code.

  Example:
    >>> import numpy as np
    >>> from cfjax import nets
    >>> f = nets.Predictor(nets.build({"arch": "small_cnn", "image_size": 32}))
    >>> f(np.zeros((2, 32, 32, 3), np.float32)).shape
    (2,)
  """

  def __init__(self, net, meta: dict | None = None):
    self.net = net
    self.meta = dict(meta or {})
    self.image_size = net.config.get("image_size")
    self._apply = jax.jit(net.apply)

  @property
  def config(self) -> dict:
    return self.net.config

  @property
  def channels(self) -> int:
    return int(self.net.config.get("channels", 3))

  @property
  def task(self) -> str | None:
    """"regression" or "classification" as recorded at training or conversion (None if unknown)."""
    return self.meta.get("task")

  def __call__(self, images) -> jax.Array:
    from cfjax._validate import check_images
    x = check_images(images, name="predictor inputs", image_size=self.image_size,
                     channels=self.channels)
    return self._apply(self.net.params, jnp.asarray(x))
