"""The VAE and MNIST classifier of Counterfactual Attacks (Goldwasser & Hooker 2025), in Flax NNX.

Two registered architectures, layer for layer the networks of the paper's MNIST notebook
(``mnist_autoencoder.ipynb``: ``class VAE`` and ``class Classifier``), generalised to 32x32 and
to RGB:

* ``cf_vae`` -- encoder: three 3x3 stride-2 convolutions (16, 32, 64 channels, padding (1, 1),
  LeakyReLU 0.2), flattened in channel-major (CHW) order as torch flattens, then two linear heads
  to the mean and the log-variance of a ``latent_dim`` Gaussian. Decoder: linear to 64x4x4
  (unflattened CHW), transposed convolutions 64->32 and 32->16 (3x3, stride 2, padding 1, output
  padding 1, LeakyReLU 0.2) and 16->channels (2x2, stride 2, padding 2 for 28x28 or 0 for 32x32),
  sigmoid. Images are 28x28 (4x4 after the encoder: 28 -> 14 -> 7 -> 4) or 32x32.
* ``cf_mnist_cnn`` -- conv 32 3x3 (padding 1), ReLU, max-pool 2, conv 64 3x3 (padding 1), ReLU,
  max-pool 2, flatten (CHW), linear to 128, ReLU, linear to ``num_classes`` logits.

Conventions: NHWC float32 images in [0, 1] in and out (the decoder ends in a sigmoid). The paper
normalised MNIST with mean 0.1307 and std 0.3081 for training both networks; ``normalize=True``
applies that inside the network (before the encoder, or before the classifier), so the public
range stays [0, 1]. The paper's attack feeds the classifier the raw decoder output, i.e.
``normalize=False`` for the classifier.

Parameters keep the torch layout up to the usual transposes, so the official state dicts map key
by key (:mod:`cfjax.nets.cf_attacks_import`): Conv2d OIHW -> HWIO, ConvTranspose2d
``(in, out, kh, kw)`` -> ``(kh, kw, in, out)``, Linear ``(out, in)`` -> ``(in, out)``. The flattens
transpose NHWC to NCHW first, so the linear layers take torch's weights unchanged. Initialisation
follows torch's defaults (uniform in +-1/sqrt(fan_in), torch's fan-in of a transposed convolution
included), so a model trained here starts where the paper's did.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from cfjax import nets
  >>> from cfjax.nets import vae
  >>> net = nets.build({"arch": "cf_vae", "image_size": 32, "channels": 3, "latent_dim": 16})
  >>> encode = nets.registry.make_apply(net.config, "encode")
  >>> decode = nets.registry.make_apply(net.config, "decode")
  >>> mu, logvar = encode(net.params, jnp.zeros((2, 32, 32, 3)))
  >>> mu.shape, decode(net.params, mu).shape
  ((2, 16), (2, 32, 32, 3))
  >>> z = vae.reparameterize(mu, logvar, jax.random.key(0))
  >>> clf = nets.build({"arch": "cf_mnist_cnn", "image_size": 28, "channels": 1})
  >>> clf.apply(clf.params, jnp.zeros((2, 28, 28, 1))).shape
  (2, 10)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from cfjax._validate import CfjaxInputError
from cfjax.nets.registry import register

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
LEAKY_SLOPE = 0.2
# Padding of the last transposed convolution (16 -> image_size with kernel 2, stride 2).
_LAST_PADDING = {28: 2, 32: 0}
_CHANNELS = (1, 3)


def _torch_uniform(fan_in: int):
  """torch's default init for weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _conv(cin: int, cout: int, k: int, stride: int, pad: int, rngs: nnx.Rngs) -> nnx.Conv:
  init = _torch_uniform(cin * k * k)
  return nnx.Conv(cin, cout, (k, k), strides=stride, padding=((pad, pad), (pad, pad)),
                  kernel_init=init, bias_init=init, rngs=rngs)


def _linear(cin: int, cout: int, rngs: nnx.Rngs) -> nnx.Linear:
  init = _torch_uniform(cin)
  return nnx.Linear(cin, cout, kernel_init=init, bias_init=init, rngs=rngs)


class ConvTranspose(nnx.Module):
  """torch's ``ConvTranspose2d`` (NHWC), written as an input-dilated convolution.

  The kernel is stored ``(kh, kw, in, out)`` (torch's ``(in, out, kh, kw)`` with the spatial axes
  first). A transposed convolution with stride s, padding p and output padding op is the
  convolution of the s-dilated input with the spatially flipped kernel, padded by
  ``(k - 1 - p, k - 1 - p + op)`` per side; a negative padding crops.
  """

  def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, padding: int,
               output_padding: int = 0, *, rngs: nnx.Rngs):
    k = kernel_size
    init = _torch_uniform(cout * k * k)  # torch takes the fan-in of a transposed conv from dim 1
    self.kernel = nnx.Param(init(rngs.params(), (k, k, cin, cout)))
    self.bias = nnx.Param(init(rngs.params(), (cout,)))
    self.stride = stride
    lo = k - 1 - padding
    self.pads = ((lo, lo + output_padding), (lo, lo + output_padding))

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = jnp.flip(self.kernel[...], axis=(0, 1))
    y = jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=self.pads, lhs_dilation=(self.stride, self.stride),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + self.bias[...]


def _flatten_chw(h: jax.Array) -> jax.Array:
  return h.transpose(0, 3, 1, 2).reshape(h.shape[0], -1)


def _unflatten_chw(h: jax.Array, c: int, side: int) -> jax.Array:
  return h.reshape(h.shape[0], c, side, side).transpose(0, 2, 3, 1)


def _leaky(x: jax.Array) -> jax.Array:
  return jax.nn.leaky_relu(x, LEAKY_SLOPE)


def _windows2(x: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, H/2, W/2, C, 4): each 2x2 window in row-major order (odd edges dropped)."""
  b, h, w, c = x.shape
  h2, w2 = h // 2, w // 2
  x = x[:, : 2 * h2, : 2 * w2].reshape(b, h2, 2, w2, 2, c)
  return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h2, w2, c, 4)


@jax.custom_vjp
def _max_pool2(x: jax.Array) -> jax.Array:
  """torch's MaxPool2d(2, 2), gradient included.

  A reshape and a max, not ``reduce_window``: XLA:CPU's select-and-scatter gradient of
  reduce_window took 1.09 ms per 28x28x32 example against 0.25 ms. The gradient goes to the
  first maximum of each window in row-major order, as torch routes it; a plain max would split
  it among tied maxima, and the decoder's flat regions make exact ties among positive values
  (the official attack trajectories then drift apart within 12 steps).
  """
  return _windows2(x).max(-1)


def _max_pool2_fwd(x):
  w = _windows2(x)
  return w.max(-1), (jnp.argmax(w, -1), x.shape)


def _max_pool2_bwd(res, g):
  first, shape = res
  b, h, w, c = shape
  h2, w2 = h // 2, w // 2
  gw = jax.nn.one_hot(first, 4, dtype=g.dtype) * g[..., None]          # (B, h2, w2, C, 4)
  gx = gw.reshape(b, h2, w2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(b, 2 * h2, 2 * w2, c)
  return (jnp.pad(gx, ((0, 0), (0, h - 2 * h2), (0, w - 2 * w2), (0, 0))),)


_max_pool2.defvjp(_max_pool2_fwd, _max_pool2_bwd)


def _normalize(x: jax.Array) -> jax.Array:
  return (x - MNIST_MEAN) / MNIST_STD


def _check(arch: str, image_size: int, channels: int, *, sizes) -> None:
  if image_size not in sizes:
    raise CfjaxInputError(f"{arch}: image_size must be one of {sorted(sizes)}, got {image_size!r}")
  if channels not in _CHANNELS:
    raise CfjaxInputError(f"{arch}: channels must be 1 or 3, got {channels!r}")


def reparameterize(mu: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
  """A posterior sample ``z = mu + eps * exp(logvar / 2)``, ``eps ~ N(0, I)`` (the paper's encoder draw).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> reparameterize(jnp.ones((2, 4)), jnp.full((2, 4), -100.0), jax.random.key(0)).round(3).tolist()[0]
    [1.0, 1.0, 1.0, 1.0]
  """
  eps = jax.random.normal(key, mu.shape, mu.dtype)
  return mu + eps * jnp.exp(0.5 * logvar)


@register("cf_vae")
class CFVAE(nnx.Module):
  """The Counterfactual Attacks VAE (``class VAE`` of the paper's MNIST notebook).

  Args:
    image_size: 28 or 32 (both give a 4x4x64 code map before the linear heads).
    channels: 1 (MNIST) or 3 (RGB testbeds).
    latent_dim: size of the latent (64 in the paper).
    normalize: apply MNIST's ``(x - 0.1307) / 0.3081`` before the encoder (the paper's encoder
      input); the decoder output is always the sigmoid's [0, 1].

  Methods (all batched, NHWC):
    ``encode(x) -> (mu, logvar)``, ``decode(z) -> images``, ``__call__(x) = decode(mu)`` (the
    deterministic reconstruction), ``trace_encoder(x)`` / ``trace_decoder(z)`` (every layer's
    output, named by its torch module index).

  Example:
    >>> import jax.numpy as jnp
    >>> from cfjax import nets
    >>> net = nets.build({"arch": "cf_vae", "image_size": 28, "channels": 1})
    >>> net.apply(net.params, jnp.zeros((1, 28, 28, 1))).shape
    (1, 28, 28, 1)
  """

  def __init__(self, image_size: int = 28, channels: int = 1, latent_dim: int = 64,
               normalize: bool = False, *, rngs: nnx.Rngs):
    _check("cf_vae", image_size, channels, sizes=_LAST_PADDING)
    if int(latent_dim) < 1:
      raise CfjaxInputError(f"cf_vae: latent_dim must be positive, got {latent_dim!r}")
    self.image_size = image_size
    self.channels = channels
    self.normalize = bool(normalize)
    self.encoder_conv = nnx.List([_conv(channels, 16, 3, 2, 1, rngs), _conv(16, 32, 3, 2, 1, rngs),
                                  _conv(32, 64, 3, 2, 1, rngs)])
    self.fc_mu = _linear(64 * 4 * 4, latent_dim, rngs)
    self.fc_logvar = _linear(64 * 4 * 4, latent_dim, rngs)
    self.decoder_input = _linear(latent_dim, 64 * 4 * 4, rngs)
    self.decoder_net = nnx.List([
        ConvTranspose(64, 32, 3, 2, 1, 1, rngs=rngs),
        ConvTranspose(32, 16, 3, 2, 1, 1, rngs=rngs),
        ConvTranspose(16, channels, 2, 2, _LAST_PADDING[image_size], 0, rngs=rngs),
    ])

  def trace_encoder(self, x: jax.Array) -> dict[str, jax.Array]:
    """Every encoder layer's output for images ``x``, keyed as torch names them.

    ``encoder_conv.<i>`` (i = 0..5: even before, odd after the LeakyReLU; NHWC), ``flatten``,
    ``mu``, ``logvar``.
    """
    h = _normalize(x) if self.normalize else x
    out = {}
    for i, conv in enumerate(self.encoder_conv):
      h = conv(h)
      out[f"encoder_conv.{2 * i}"] = h
      h = _leaky(h)
      out[f"encoder_conv.{2 * i + 1}"] = h
    h = _flatten_chw(h)
    out["flatten"] = h
    out["mu"] = self.fc_mu(h)
    out["logvar"] = self.fc_logvar(h)
    return out

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(mu, logvar)``, each ``(B, latent_dim)``, of NHWC images ``x``."""
    t = self.trace_encoder(x)
    return t["mu"], t["logvar"]

  def trace_decoder(self, z: jax.Array) -> dict[str, jax.Array]:
    """Every decoder layer's output for latents ``z``, keyed as torch names them.

    ``decoder_input`` (B, 1024), ``decoder_net.<i>`` (i = 1..6 NHWC: odd i the transposed
    convolutions, even i their activations; ``decoder_net.6`` is the image).
    """
    h = self.decoder_input(z)
    out = {"decoder_input": h}
    h = _unflatten_chw(h, 64, 4)
    last = len(self.decoder_net) - 1
    for i, deconv in enumerate(self.decoder_net):
      h = deconv(h)
      out[f"decoder_net.{2 * i + 1}"] = h
      h = jax.nn.sigmoid(h) if i == last else _leaky(h)
      out[f"decoder_net.{2 * i + 2}"] = h
    return out

  def decode(self, z: jax.Array) -> jax.Array:
    """Images ``(B, H, W, C)`` in [0, 1] decoded from latents ``z`` ``(B, latent_dim)``."""
    return self.trace_decoder(z)[f"decoder_net.{2 * len(self.decoder_net)}"]

  def __call__(self, x: jax.Array) -> jax.Array:
    """The deterministic reconstruction ``decode(mu(x))``."""
    mu, _ = self.encode(x)
    return self.decode(mu)


@register("cf_mnist_cnn")
class CFMnistCNN(nnx.Module):
  """The Counterfactual Attacks MNIST classifier (``class Classifier`` of the paper's notebook).

  Args:
    image_size: input side (28 for MNIST; any size >= 4, pooled twice with floor rounding).
    channels: 1 or 3.
    num_classes: number of logits.
    normalize: apply ``(x - 0.1307) / 0.3081`` first, as in the classifier's training. The paper's
      attack feeds it the raw [0, 1] decoder output (``False``, the default).

  Output: logits ``(B, num_classes)``. ``trace(x)`` gives every layer's output, keyed
  ``network.<i>`` as torch indexes its ``nn.Sequential`` (i = 0..9; 6 is the flatten).

  Example:
    >>> import jax.numpy as jnp
    >>> from cfjax import nets
    >>> net = nets.build({"arch": "cf_mnist_cnn", "image_size": 32, "channels": 3, "num_classes": 4})
    >>> net.apply(net.params, jnp.zeros((2, 32, 32, 3))).shape
    (2, 4)
  """

  def __init__(self, image_size: int = 28, channels: int = 1, num_classes: int = 10,
               normalize: bool = False, *, rngs: nnx.Rngs):
    if not isinstance(image_size, int) or image_size < 4:
      raise CfjaxInputError(f"cf_mnist_cnn: image_size must be an int >= 4, got {image_size!r}")
    _check("cf_mnist_cnn", image_size, channels, sizes=(image_size,))
    if int(num_classes) < 2:
      raise CfjaxInputError(f"cf_mnist_cnn: num_classes must be >= 2, got {num_classes!r}")
    self.normalize = bool(normalize)
    self.conv1 = _conv(channels, 32, 3, 1, 1, rngs)
    self.conv2 = _conv(32, 64, 3, 1, 1, rngs)
    side = image_size // 2 // 2
    self.fc1 = _linear(64 * side * side, 128, rngs)
    self.fc2 = _linear(128, num_classes, rngs)

  def trace(self, x: jax.Array) -> dict[str, jax.Array]:
    """Every layer's output for images ``x`` (see the class docstring)."""
    h = _normalize(x) if self.normalize else x
    out = {}
    layers = [self.conv1, jax.nn.relu, _max_pool2, self.conv2, jax.nn.relu, _max_pool2, _flatten_chw,
              self.fc1, jax.nn.relu, self.fc2]
    for i, layer in enumerate(layers):
      h = layer(h)
      out[f"network.{i}"] = h
    return out

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.trace(x)["network.9"]
