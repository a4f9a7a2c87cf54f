"""Import of pytorch-fid's InceptionV3 weights (``pt_inception-2015-12-05-6726825d.pth``).

The file is read with ``torch.load(..., weights_only=True, map_location="cpu")`` (torch is the
optional ``cfjax[torch]`` extra) or, re-saved as ``.npz``, with ``np.load(...,
allow_pickle=False)``; nothing is unpickled and nothing is downloaded. Every key is mapped by
name, and every missing, unexpected or mis-shaped key is reported before anything is built.

Key map (the module path is the same in both, ``.`` in torch and ``/`` in cfjax):

===============================  ===========================  ============================
torch key                        cfjax leaf                   layout change
===============================  ===========================  ============================
``*.conv.weight``                ``*/conv/kernel``            Conv2d OIHW -> HWIO
``*.bn.weight`` / ``.bias``      ``*/bn/scale`` / ``bias``    none
``*.bn.running_mean`` / ``var``  ``*/bn/mean`` / ``var``      none
``*.bn.num_batches_tracked``     (not a parameter)            skipped
``fc.weight`` / ``fc.bias``      ``fc/kernel`` / ``bias``     Linear (out, in) -> (in, out)
===============================  ===========================  ============================

Example:
  >>> from cfjax.nets.inception_import import load_fid_inception
  >>> net = load_fid_inception("pt_inception-2015-12-05-6726825d.pth")  # doctest: +SKIP
  >>> net.apply(net.params, images).shape  # doctest: +SKIP
  (16, 2048)
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

from cfjax.nets import inception as _inception  # noqa: F401  (registers "fid_inception_v3")
from cfjax.nets import registry
from cfjax.nets.torch_import import ImportError_, read_state_dict

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
CONVERT_COMMAND = (f"cfjax convert-checkpoint {WEIGHTS_FILE} --config fid_inception_v3 "
                   "--out DIR")

_LEAVES = {"weight": None, "bias": "bias", "running_mean": "mean", "running_var": "var"}
_SKIPPED = "num_batches_tracked"


def fid_inception_config(**overrides: Any) -> dict:
  """The config of pytorch-fid's network (``resize_input``, ``normalize_input``, 1008 classes).

  Example:
    >>> fid_inception_config(resize_input=False)["resize_input"]
    False
  """
  return {"arch": "fid_inception_v3", "resize_input": True, "normalize_input": True,
          "num_classes": 1008, **overrides}


def torch_key_to_path(key: str, template: Mapping) -> tuple[str, ...] | None:
  """The cfjax parameter path of a torch key, or None when the template has no such leaf.

  Example:
    >>> from cfjax.nets import registry
    >>> t = registry.abstract_params(fid_inception_config())
    >>> torch_key_to_path("Mixed_7c.branch_pool.bn.running_var", t)
    ('Mixed_7c', 'branch_pool', 'bn', 'var')
  """
  *module, leaf = key.split(".")
  node = template
  for m in module:
    if not isinstance(node, Mapping) or m not in node:
      return None
    node = node[m]
  if not isinstance(node, Mapping) or leaf not in _LEAVES:
    return None
  name = _LEAVES[leaf] or ("kernel" if "kernel" in node else "scale")
  return tuple(module) + (name,) if name in node else None


def _torch_layout(v: np.ndarray, name: str) -> np.ndarray:
  if name != "kernel":
    return v
  return v.transpose(2, 3, 1, 0) if v.ndim == 4 else v.T  # OIHW -> HWIO; (out, in) -> (in, out)


def _set(tree: dict, path: tuple, value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _leaf(tree, path: tuple):
  for p in path:
    tree = tree[p]
  return tree


def _problems_error(problems: list[str], config: dict) -> ImportError_:
  shown = "\n  ".join(problems[:40])
  more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
  return ImportError_(
      f"state dict does not match pytorch-fid's InceptionV3 ({config.get('arch')}, "
      f"{len(problems)} problems); expected the tensors of {WEIGHTS_FILE}:\n  {shown}{more}")


def convert_fid_inception(state_dict: Mapping[str, Any], config: dict | None = None) -> dict:
  """Converts pytorch-fid's InceptionV3 state dict (tensors or arrays) to cfjax params.

  Raises:
    CfjaxInputError: naming every unexpected, missing and mis-shaped key.
  """
  config = fid_inception_config() if config is None else config
  template = registry.abstract_params(config)
  params: dict = {}
  problems = []
  for key, value in state_dict.items():
    if key.endswith("." + _SKIPPED) and torch_key_to_path(key[:-len(_SKIPPED)] + "running_mean",
                                                           template):
      continue
    path = torch_key_to_path(key, template)
    if path is None:
      problems.append(f"unexpected key {key!r} {tuple(np.shape(value))}")
      continue
    v = _torch_layout(np.asarray(value, np.float32), path[-1])
    want = tuple(_leaf(template, path).shape)
    if v.shape != want:
      problems.append(f"{key!r}: shape {tuple(np.shape(value))} does not fit "
                      f"{'/'.join(path)} {want}")
      continue
    _set(params, path, v)
  for p, leaf in jax.tree_util.tree_leaves_with_path(template):
    path = tuple(k.key for k in p)
    try:
      _leaf(params, path)
    except KeyError:
      problems.append(f"missing key for {'/'.join(path)} {tuple(leaf.shape)}")
  if problems:
    raise _problems_error(problems, config)
  return params


def load_fid_inception(path: str | os.PathLike, **overrides: Any) -> registry.Network:
  """Reads pytorch-fid's ``.pth`` (or the same tensors in an ``.npz``) into a cfjax Network.

  Args:
    path: ``pt_inception-2015-12-05-6726825d.pth`` (needs torch) or an ``.npz`` of its tensors.
    **overrides: config entries, e.g. ``resize_input=False``.

  Returns:
    ``Network(apply, params, config)``; ``apply(params, x)`` gives pool3 features ``(N, 2048)``.

  Raises:
    CfjaxInputError: the file is missing, unsafe or unreadable, or a key is missing, unexpected
      or mis-shaped (each named).
  """
  config = fid_inception_config(**overrides)
  return registry.build(config, params=convert_fid_inception(read_state_dict(path), config))
