"""Import of the official Counterfactual Attacks MNIST weights (Goldwasser & Hooker 2025).

The paper's repository ships two state dicts, ``MNIST/Data/mnist_autoencoder_weights.pth`` (the
VAE) and ``MNIST/Data/mnist_classifier_weights.pth`` (the classifier). They are read with
``torch.load(..., weights_only=True, map_location="cpu")`` (torch is the optional ``cfjax[torch]``
extra) or, re-saved as ``.npz``, with ``np.load(..., allow_pickle=False)``; nothing is unpickled.
Every key is mapped; a missing, unexpected or mis-shaped key is reported by name before anything
is built.

Key map (torch -> cfjax parameter path):

=============================  ==============================  =====================================
torch key                      cfjax path                      layout change
=============================  ==============================  =====================================
``encoder_conv.{0,2,4}.*``     ``encoder_conv/{0,1,2}/*``      Conv2d OIHW -> HWIO
``fc_mu.*``, ``fc_logvar.*``   ``fc_mu/*``, ``fc_logvar/*``    Linear (out, in) -> (in, out)
``decoder_input.*``            ``decoder_input/*``             Linear
``decoder_net.{1,3,5}.*``      ``decoder_net/{0,1,2}/*``       ConvTranspose2d (in, out, kh, kw) -> (kh, kw, in, out)
``network.{0,3}.*``            ``conv1/*``, ``conv2/*``        Conv2d
``network.{7,9}.*``            ``fc1/*``, ``fc2/*``            Linear
=============================  ==============================  =====================================

Named configs (:data:`CF_ATTACKS_CONFIGS`): ``cf_attacks_mnist_vae`` is the VAE with
``normalize=True``, so that its encoder sees [0, 1] images normalised with MNIST's mean and std as
in the paper (the notebook encodes normalised images); ``cf_attacks_mnist_classifier`` is the
classifier with ``normalize=False``, as the paper's attack calls it on the raw decoder output.

Example:
  >>> from cfjax.nets import cf_attacks_import as cfa
  >>> vae = cfa.load_cf_attacks("../shared/fixtures/cf_attacks/vae_weights.npz",
  ...                           "cf_attacks_mnist_vae")  # doctest: +SKIP
  >>> clf = cfa.load_cf_attacks("mnist_classifier_weights.pth", "cf_attacks_mnist_classifier")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
from typing import Any, Mapping

import numpy as np

from cfjax._validate import CfjaxInputError, unknown_name
from cfjax.nets import registry
from cfjax.nets import vae as _vae  # noqa: F401  (registers "cf_vae" and "cf_mnist_cnn")
from cfjax.nets.torch_import import ImportError_, read_state_dict

CF_ATTACKS_CONFIGS: dict[str, dict] = {
    "cf_attacks_mnist_vae": {"arch": "cf_vae", "image_size": 28, "channels": 1, "latent_dim": 64,
                             "normalize": True},
    "cf_attacks_mnist_classifier": {"arch": "cf_mnist_cnn", "image_size": 28, "channels": 1,
                                    "num_classes": 10, "normalize": False},
}

# Per architecture: torch module name -> (cfjax module path, kind).
_MODULES = {
    "cf_vae": {
        "encoder_conv.0": (("encoder_conv", 0), "conv"),
        "encoder_conv.2": (("encoder_conv", 1), "conv"),
        "encoder_conv.4": (("encoder_conv", 2), "conv"),
        "fc_mu": (("fc_mu",), "linear"),
        "fc_logvar": (("fc_logvar",), "linear"),
        "decoder_input": (("decoder_input",), "linear"),
        "decoder_net.1": (("decoder_net", 0), "conv_transpose"),
        "decoder_net.3": (("decoder_net", 1), "conv_transpose"),
        "decoder_net.5": (("decoder_net", 2), "conv_transpose"),
    },
    "cf_mnist_cnn": {
        "network.0": (("conv1",), "conv"),
        "network.3": (("conv2",), "conv"),
        "network.7": (("fc1",), "linear"),
        "network.9": (("fc2",), "linear"),
    },
}
_KERNEL_LAYOUT = {
    "conv": (2, 3, 1, 0),            # OIHW -> HWIO
    "conv_transpose": (2, 3, 0, 1),  # (in, out, kh, kw) -> (kh, kw, in, out)
    "linear": (1, 0),                # (out, in) -> (in, out)
}


def named_config(name: str, **overrides: Any) -> dict:
  """A copy of a named config of :data:`CF_ATTACKS_CONFIGS`, with ``overrides`` applied.

  Example:
    >>> named_config("cf_attacks_mnist_classifier", normalize=True)["normalize"]
    True
  """
  if name not in CF_ATTACKS_CONFIGS:
    raise unknown_name("Counterfactual Attacks config", name, CF_ATTACKS_CONFIGS)
  config = copy.deepcopy(CF_ATTACKS_CONFIGS[name])
  config.update(overrides)
  return config


def torch_key_map(config: dict) -> dict[str, tuple[tuple, str, str]]:
  """``{torch key: (cfjax module path, leaf name, kind)}`` for every parameter of ``config``.

  Example:
    >>> torch_key_map({"arch": "cf_mnist_cnn"})["network.7.weight"]
    (('fc1',), 'kernel', 'linear')
  """
  arch = config.get("arch")
  if arch not in _MODULES:
    raise unknown_name("architecture with a Counterfactual Attacks importer", arch, _MODULES)
  out = {}
  for module, (path, kind) in _MODULES[arch].items():
    out[f"{module}.weight"] = (path, "kernel", kind)
    out[f"{module}.bias"] = (path, "bias", kind)
  return out


def convert_state_dict(state_dict: Mapping[str, Any], config: dict) -> dict:
  """Converts an official state dict (numpy arrays or tensors) to cfjax params for ``config``.

  Raises:
    CfjaxInputError: listing every unexpected, missing and mis-shaped key by name.
  """
  template = registry.abstract_params(config)
  keymap = torch_key_map(config)
  problems = []
  params: dict = {}
  for key, value in state_dict.items():
    if key not in keymap:
      problems.append(f"unexpected key {key!r} {tuple(np.shape(value))}")
      continue
    path, leaf, kind = keymap[key]
    v = np.asarray(value, dtype=np.float32)
    want = template
    for p in path + (leaf,):
      want = want[p]
    want = tuple(want.shape)
    if leaf == "kernel" and v.ndim == len(_KERNEL_LAYOUT[kind]):
      v = v.transpose(_KERNEL_LAYOUT[kind])
    if v.shape != want:
      torch_shape = tuple(want[i] for i in np.argsort(_KERNEL_LAYOUT[kind])) if leaf == "kernel" else want
      problems.append(f"{key!r}: shape {tuple(np.shape(value))}, expected {torch_shape} for this config")
      continue
    node = params
    for p in path:
      node = node.setdefault(p, {})
    node[leaf] = v
  for key in keymap:
    if key not in state_dict:
      problems.append(f"missing key {key!r}")
  if problems:
    raise ImportError_(f"state dict does not match the {config.get('arch')} config {config} "
                       f"({len(problems)} problems):\n  " + "\n  ".join(problems))
  return params


def load_cf_attacks(path: str | os.PathLike, config: str | dict) -> registry.Network:
  """Reads an official ``.pth`` (or ``.npz``) state dict and returns the cfjax :class:`Network`.

  Args:
    path: ``mnist_autoencoder_weights.pth`` / ``mnist_classifier_weights.pth`` of the paper's
      repository (``.pth``/``.pt`` need torch), or the same tensors in an ``.npz``.
    config: a name of :data:`CF_ATTACKS_CONFIGS` or a ``cf_vae`` / ``cf_mnist_cnn`` config.

  Returns:
    ``Network(apply, params, config)``; for the VAE, ``registry.make_apply(net.config, "encode")``
    and ``"decode"`` give its two halves.

  Raises:
    CfjaxInputError: the file is missing, unsafe or unreadable, or a key is missing, unexpected
      or mis-shaped (each named).
  """
  if isinstance(config, str):
    config = named_config(config)
  elif not isinstance(config, dict):
    raise CfjaxInputError(f"config must be a name or a dict, got {type(config).__name__}")
  params = convert_state_dict(read_state_dict(path), config)
  return registry.build(config, params=params)
