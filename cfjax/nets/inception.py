"""InceptionV3 as pytorch-fid uses it for FID: registered as ``fid_inception_v3``.

This is the network of pytorch-fid (mseitzer/pytorch-fid, ``fid_inception_v3``): torchvision's
Inception3 with the TensorFlow FID graph's blocks (``FIDInceptionA`` / ``C`` / ``E_1`` / ``E_2``),
whose weights are the file ``pt_inception-2015-12-05-6726825d.pth``. cfjax never downloads them:
convert the file once with ``cfjax convert-checkpoint pt_inception-2015-12-05-6726825d.pth
--config fid_inception_v3 --out DIR`` (or load it with
:func:`cfjax.nets.inception_import.load_fid_inception`).

What matches pytorch-fid (``InceptionV3(resize_input=True, normalize_input=True)``):

* inputs of another size are resized to 299x299 bilinearly with half-pixel centres and no
  antialiasing (``F.interpolate(..., mode="bilinear", align_corners=False)``);
* [0, 1] inputs are mapped to [-1, 1];
* every conv is bias-free, followed by BatchNorm with its running statistics (eps 1e-3) and ReLU;
* the 3x3 average pools of the A, C and first E blocks leave the zero padding out of the average
  (``count_include_pad=False``), and the last E block (``Mixed_7c``) max-pools instead;
* ``__call__`` gives the 2048 pool3 features (the final average pool), the features of FID;
  :meth:`FIDInceptionV3.logits` adds the 1008-way ``fc`` layer.

Module names are torchvision's (``Conv2d_1a_3x3``, ``Mixed_5b/branch5x5_1``, ...), so a torch key
``Mixed_5b.branch5x5_1.conv.weight`` lives at ``Mixed_5b/branch5x5_1/conv/kernel``. Inputs are NHWC
float32 images in [0, 1]; one-channel images are repeated to three channels.

Example:
  >>> from cfjax.nets import registry
  >>> config = {"arch": "fid_inception_v3"}
  >>> images = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32)
  >>> jax.eval_shape(registry.make_apply(config), registry.abstract_params(config), images).shape
  (4, 2048)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen, nnx

from cfjax.nets.registry import register

INPUT_SIZE = 299
FEATURE_DIM = 2048


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average pool over the unpadded neighbours (TensorFlow's SAME average pool)."""
  return linen.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int = 2) -> jax.Array:
  """3x3 max pool: stride 2 unpadded (reductions), or stride 1 with one pixel of -inf padding."""
  pad = ((0, 0), (0, 0)) if stride == 2 else ((1, 1), (1, 1))
  return linen.max_pool(x, (3, 3), strides=(stride, stride), padding=pad)


class BasicConv2d(nnx.Module):
  """Bias-free conv -> BatchNorm (running statistics, eps 1e-3) -> ReLU, as torchvision's."""

  def __init__(self, cin: int, cout: int, kernel, *, stride: int = 1, padding=0, rngs: nnx.Rngs):
    (ph, pw) = _pair(padding)
    self.conv = nnx.Conv(cin, cout, _pair(kernel), strides=stride, padding=((ph, ph), (pw, pw)),
                         use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(cout, epsilon=1e-3, use_running_average=True, rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.bn(self.conv(x)))


class InceptionA(nnx.Module):
  """35x35 block (``FIDInceptionA``): 1x1, 5x5, double 3x3 and pooled 1x1 branches."""

  def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv2d(cin, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = BasicConv2d(cin, pool_features, 1, rngs=rngs)

  def __call__(self, x):
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(_avg_pool_3x3(x))
    return jnp.concatenate([self.branch1x1(x), b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
  """35x35 -> 17x17 reduction (``Mixed_6a``)."""

  def __init__(self, cin: int, *, rngs: nnx.Rngs):
    self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([self.branch3x3(x), b3, _max_pool_3x3(x)], axis=-1)


class InceptionC(nnx.Module):
  """17x17 block (``FIDInceptionC``) with factorised 1x7 / 7x1 convolutions."""

  def __init__(self, cin: int, channels_7x7: int, *, rngs: nnx.Rngs):
    c7, row, col = channels_7x7, ((1, 7), (0, 3)), ((7, 1), (3, 0))
    self.branch1x1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv2d(c7, c7, row[0], padding=row[1], rngs=rngs)
    self.branch7x7_3 = BasicConv2d(c7, 192, col[0], padding=col[1], rngs=rngs)
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, col[0], padding=col[1], rngs=rngs)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, row[0], padding=row[1], rngs=rngs)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, col[0], padding=col[1], rngs=rngs)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, row[0], padding=row[1], rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d = x
    for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                 self.branch7x7dbl_4, self.branch7x7dbl_5):
      d = conv(d)
    bp = self.branch_pool(_avg_pool_3x3(x))
    return jnp.concatenate([self.branch1x1(x), b7, d, bp], axis=-1)


class InceptionD(nnx.Module):
  """17x17 -> 8x8 reduction (``Mixed_7a``)."""

  def __init__(self, cin: int, *, rngs: nnx.Rngs):
    self.branch3x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return jnp.concatenate([b3, b7, _max_pool_3x3(x)], axis=-1)


class InceptionE(nnx.Module):
  """8x8 block: ``FIDInceptionE_1`` (``pool="avg"``) or ``FIDInceptionE_2`` (``pool="max"``)."""

  def __init__(self, cin: int, pool: str, *, rngs: nnx.Rngs):
    self.pool = pool
    self.branch1x1 = BasicConv2d(cin, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv2d(cin, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3_1(x)
    d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x, stride=1)
    return jnp.concatenate([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                            self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
                            self.branch_pool(pooled)], axis=-1)


def prepare_input(x: jax.Array, *, resize_input: bool = True, normalize_input: bool = True
                  ) -> jax.Array:
  """[0, 1] NHWC images -> the network's input: 3 channels, 299x299, [-1, 1] (as configured).

  Example:
    >>> prepare_input(jnp.ones((2, 32, 32, 1))).shape
    (2, 299, 299, 3)
  """
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if resize_input and x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, x.shape[-1]), method="linear",
                         antialias=False)
  return 2.0 * x - 1.0 if normalize_input else x


@register("fid_inception_v3")
class FIDInceptionV3(nnx.Module):
  """pytorch-fid's InceptionV3 (module docstring); ``__call__`` gives pool3 features ``(N, 2048)``.

  Args:
    resize_input: resize inputs to 299x299 as pytorch-fid does (without it, any side >= 75 works).
    normalize_input: map [0, 1] inputs to [-1, 1].
    num_classes: outputs of the ``fc`` layer (1008 in the FID weights).
  """

  def __init__(self, resize_input: bool = True, normalize_input: bool = True,
               num_classes: int = 1008, *, rngs: nnx.Rngs):
    self.resize_input, self.normalize_input = resize_input, normalize_input
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
    self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = InceptionE(1280, "avg", rngs=rngs)
    self.Mixed_7c = InceptionE(2048, "max", rngs=rngs)
    self.fc = nnx.Linear(FEATURE_DIM, num_classes, rngs=rngs)

  def _stem(self, x):
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = _max_pool_3x3(x)
    return _max_pool_3x3(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))

  def __call__(self, x):
    x = prepare_input(x, resize_input=self.resize_input, normalize_input=self.normalize_input)
    x = self._stem(x)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                  self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                  self.Mixed_7c):
      x = block(x)
    return x.mean(axis=(1, 2))

  def logits(self, x):
    """The ``fc`` layer on the pool3 features: ``(N, num_classes)``."""
    return self.fc(self(x))
