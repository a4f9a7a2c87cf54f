"""Feature extractors for FID, sFID, S^3 and diversity: ``features(x) -> (N, D)``.

A :class:`FeatureExtractor` is an ``apply`` function and its ``params`` (a feature network as
cfjax methods see any model), callable on NHWC images in [0, 1]. It is compiled once per input
shape with the parameters as arguments, never baked into the program as constants, so the
streaming FID of :mod:`cfjax.metrics.realism` calls it as it is.

:func:`feature_extractor` finds one by name or path; nothing is ever downloaded:

* ``"inception"`` -- pytorch-fid's InceptionV3 pool3 features (2048), the features of standard
  FID, from an explicit ``checkpoint``: a directory written by ``cfjax convert-checkpoint
  pt_inception-2015-12-05-6726825d.pth --config fid_inception_v3 --out DIR``, or the ``.pth``
  (or an ``.npz`` of its tensors) itself;
* ``"squares"`` / ``"shapes"`` -- a testbed's in-domain feature network (``squares_features``,
  ``shapes_features``): the penultimate layer (64) of a small CNN trained to regress every factor
  of the testbed at once (``cfjax train-predictor --targets all``; held-out R^2 of each factor
  0.97-1.0), so its features see the square's colour, the background and the position alike. On
  1024 squares FID is 0.005 for fresh pixel noise, 2.2 for the background shifted by 64 grey
  levels, 3.6 for the square's colour shifted by 64, 0.88 for the square moved by 4 pixels
  (``benchmarks/feature_sensitivity.py``); the rho = 0 regressor's features are blind to the
  background (0.003) and see the colour (0.87). ``checkpoint=`` replaces the network;
* any other name or path -- a cfjax checkpoint (a bundled name, a checkpoint directory or a
  ``cfjax train-predictor`` run directory): a converted InceptionV3 gives its pool3 features, a
  predictor (``small_cnn``, ``resnet18``, ``oracle``) its penultimate-layer features.

Example:
  >>> import numpy as np
  >>> from cfjax.metrics.features import feature_extractor
  >>> f = feature_extractor("squares")
  >>> f(np.zeros((4, 32, 32, 3), np.float32)).shape
  (4, 64)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

from cfjax._registry import Registry
from cfjax._validate import CfjaxInputError, check_images

_EXTRACTORS = Registry("feature extractor")
_WEIGHT_SUFFIXES = (".pth", ".pt", ".npz")
# Architecture -> the module method that gives its features.
_FEATURE_METHODS = {"fid_inception_v3": None, "small_cnn": "features", "resnet18": "features",
                    "oracle": "features"}


class FeatureExtractor:
  """``features(x) -> (N, D)`` on NHWC images in [0, 1], from ``apply(params, x)``.

  Called on host arrays it checks them (float, [0, 1], ``image_size``, ``channels``) before one
  compiled call per input shape; inside your own ``jax.jit`` use ``apply(params, x)`` with the
  parameters as an argument of the jitted function.

  Attributes:
    apply: ``apply(params, x) -> (N, D)``.
    params: the parameter pytree.
    dim: D.
    name: what the features are (for messages and reports).
    image_size: the side length the network needs, or None for any.
    channels: the channel count it needs, or None for 1 or 3.

  Example:
    >>> f = FeatureExtractor(lambda p, x: x.reshape(len(x), -1) * p, jnp.float32(2.0), dim=4,
    ...                      name="pixels")
    >>> f(jnp.ones((3, 2, 2, 1))).shape
    (3, 4)
  """

  def __init__(self, apply: Callable[..., Any], params: Any, *, dim: int, name: str,
               image_size: int | None = None, channels: int | None = None):
    self.apply, self.params, self.dim, self.name = apply, params, int(dim), name
    self.image_size, self.channels = image_size, channels
    self._compiled = jax.jit(apply)

  def __call__(self, x) -> jax.Array:
    if not isinstance(x, jax.core.Tracer):
      x = check_images(x, name=f"{self.name} feature inputs", image_size=self.image_size,
                       channels=self.channels, tol=1e-4)
    return self._compiled(self.params, x)

  def __repr__(self) -> str:
    return f"FeatureExtractor({self.name!r}, dim={self.dim})"


def host_callable(features: Callable) -> Callable:
  """``features`` compiled for host calls: a FeatureExtractor as it is, anything else jitted.

  Example:
    >>> host_callable(lambda x: x * 2)(jnp.ones(2)).tolist()
    [2.0, 2.0]
  """
  return features if isinstance(features, FeatureExtractor) else jax.jit(features)


def known_feature_extractors() -> list[str]:
  """Names :func:`feature_extractor` accepts besides checkpoint names and paths."""
  return _EXTRACTORS.names()


def _config_value(config: dict, key: str):
  """``config[key]``, or the architecture's default for it (None where it has no such option)."""
  import inspect
  from cfjax.nets.registry import _REGISTRY
  if key in config:
    return config[key]
  param = inspect.signature(_REGISTRY.get(config["arch"]).__init__).parameters.get(key)
  return None if param is None else param.default


def from_network(net, *, name: str) -> FeatureExtractor:
  """The features of a cfjax :class:`~cfjax.nets.Network` (InceptionV3 or a predictor).

  Example:
    >>> from cfjax import nets
    >>> f = from_network(nets.build({"arch": "small_cnn", "hidden": 8}), name="demo")
    >>> f.dim
    8
  """
  from cfjax.nets import registry
  arch = net.config.get("arch")
  if arch not in _FEATURE_METHODS:
    raise CfjaxInputError(f"{name}: architecture {arch!r} has no feature layer; feature networks "
                          f"are {sorted(_FEATURE_METHODS)}")
  apply = registry.make_apply(net.config, _FEATURE_METHODS[arch])
  inception = arch == "fid_inception_v3"
  image_size = None if inception else _config_value(net.config, "image_size")
  channels = None if inception else int(_config_value(net.config, "channels") or 3)
  side = image_size or 75  # InceptionV3's smallest input without resizing
  probe = jax.ShapeDtypeStruct((1, side, side, channels or 3), jnp.float32)
  dim = jax.eval_shape(apply, net.params, probe).shape[-1]
  return FeatureExtractor(apply, net.params, dim=dim, name=name, image_size=image_size,
                          channels=channels)


def _missing_inception() -> CfjaxInputError:
  from cfjax.nets.inception_import import CONVERT_COMMAND, WEIGHTS_FILE
  return CfjaxInputError(
      "the 'inception' feature extractor needs pytorch-fid's InceptionV3 weights from a local path "
      f"(cfjax never downloads them): get {WEIGHTS_FILE} (github.com/mseitzer/pytorch-fid releases), "
      f"convert it once with `{CONVERT_COMMAND}`, then pass checkpoint=DIR (or the .pth itself).")


@_EXTRACTORS.register("inception")
def _inception(checkpoint) -> FeatureExtractor:
  if checkpoint is None:
    raise _missing_inception()
  path = Path(checkpoint)
  if path.suffix in _WEIGHT_SUFFIXES:
    if not path.is_file():
      raise _missing_inception()
    from cfjax.nets.inception_import import load_fid_inception
    return from_network(load_fid_inception(path), name="inception")
  if not path.exists():
    raise _missing_inception()
  return _from_checkpoint(path, expect="fid_inception_v3")


def _testbed(model: str):
  def make(checkpoint) -> FeatureExtractor:
    return _from_checkpoint(model if checkpoint is None else checkpoint)
  return make


_EXTRACTORS.add("squares", _testbed("squares_features"))
_EXTRACTORS.add("shapes", _testbed("shapes_features"))


def _from_checkpoint(name_or_path, *, expect: str | None = None) -> FeatureExtractor:
  from cfjax.nets.loading import load_network
  path = Path(str(name_or_path))
  if path.suffix in _WEIGHT_SUFFIXES and path.is_file():
    return _inception(path)
  net, _ = load_network(name_or_path)
  if expect is not None and net.config.get("arch") != expect:
    raise CfjaxInputError(f"{name_or_path} holds a {net.config.get('arch')!r} network, not {expect!r}")
  return from_network(net, name=str(name_or_path))


def feature_extractor(name_or_path, *, checkpoint=None) -> FeatureExtractor:
  """A feature extractor by name (module docstring) or checkpoint path.

  Args:
    name_or_path: ``"inception"``, ``"squares"``, ``"shapes"``, a bundled model name, a
      checkpoint or run directory, or pytorch-fid's ``.pth`` / ``.npz`` weights file.
    checkpoint: the weights of a named extractor (required for ``"inception"``; replaces the
      bundled predictor of ``"squares"`` / ``"shapes"``).

  Returns:
    A :class:`FeatureExtractor`; pass it to :func:`cfjax.metrics.fid`, ``sfid``, ``s3``, ...

  Raises:
    CfjaxInputError: unknown name, missing weights (naming the convert command for
      ``"inception"``), or a network without a feature layer.

  Example:
    >>> from cfjax import metrics
    >>> fid = metrics.fid(feature_extractor("shapes"))  # FID in the shapes classifier's features
  """
  if isinstance(name_or_path, str) and name_or_path in _EXTRACTORS:
    return _EXTRACTORS.get(name_or_path)(checkpoint)
  if checkpoint is not None:
    raise CfjaxInputError(f"checkpoint= applies to the named extractors "
                          f"{known_feature_extractors()}, not to {name_or_path!r}")
  return _from_checkpoint(name_or_path)
