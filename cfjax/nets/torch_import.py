"""Import of guided-diffusion PyTorch state dicts (released ACE / DiME / guided-diffusion ``.pt``).

Loading never unpickles arbitrary objects: ``.pt`` files go through ``torch.load(...,
weights_only=True)`` (torch is the optional ``cfjax[torch]`` extra), and ``.npz`` files through
``np.load(..., allow_pickle=False)``. Every key is accounted for: a missing, extra or mis-shaped
key is reported by name.

Layout conversions (torch -> Flax): Conv2d OIHW -> HWIO; the attention ``qkv`` / ``proj_out``
Conv1d(k=1) ``(out, in, 1)`` -> Dense ``(in, out)``; Linear ``(out, in)`` -> ``(in, out)``;
GroupNorm ``weight`` -> ``scale``.

Example:
  >>> from cfjax.nets import torch_import, unet_config
  >>> cfg = unet_config("small32")  # the fixtures' "small" model
  >>> net = torch_import.load_guided_diffusion(
  ...     "../shared/fixtures/guided_diffusion/model_small.npz", cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from cfjax._validate import CfjaxInputError
from cfjax.nets import registry

# ResBlock / AttentionBlock submodules: torch name -> cfjax attribute path.
_SUBMODULES = {
    "in_layers.0": ("in_norm", "norm"),
    "in_layers.2": ("in_conv",),
    "emb_layers.1": ("emb_linear",),
    "out_layers.0": ("out_norm", "norm"),
    "out_layers.3": ("out_conv",),
    "skip_connection": ("skip",),
    "norm": ("norm", "norm"),
    "qkv": ("qkv",),
    "proj_out": ("proj_out",),
    "op": ("op",),      # Downsample conv
    "conv": ("conv",),  # Upsample conv
}
_TOP = {
    "time_embed.0": ("time_embed_0",),
    "time_embed.2": ("time_embed_2",),
    "out.0": ("out_norm", "norm"),
    "out.2": ("out_conv",),
    "label_emb": ("label_emb",),
}


class ImportError_(CfjaxInputError):
  """A state dict that cannot be imported (unsafe file, wrong keys or shapes)."""


def torch_key_to_path(key: str) -> tuple[tuple, str] | None:
  """Maps a guided-diffusion key to ``(module path, torch leaf name)``; None if unknown."""
  module, _, leaf = key.rpartition(".")
  if leaf not in ("weight", "bias"):
    return None
  if module in _TOP:
    return _TOP[module], leaf
  parts = module.split(".")
  if parts[0] in ("input_blocks", "output_blocks") and len(parts) >= 3:
    if not (parts[1].isdigit() and parts[2].isdigit()):
      return None
    prefix = (parts[0], int(parts[1]), "layers", int(parts[2]))
    rest = ".".join(parts[3:])
  elif parts[0] == "middle_block" and len(parts) >= 2 and parts[1].isdigit():
    prefix = ("middle_block", "layers", int(parts[1]))
    rest = ".".join(parts[2:])
  else:
    return None
  if rest == "":  # a bare conv, e.g. input_blocks.0.0
    return prefix, leaf
  if rest not in _SUBMODULES:
    return None
  return prefix + _SUBMODULES[rest], leaf


def torch_load_weights_only(path: Path, what: str = ""):
  """``torch.load(path, weights_only=True)`` on the CPU: tensors and containers only, never
  arbitrary pickled objects; a clear error when torch is missing or the file is refused."""
  try:
    import torch
  except ModuleNotFoundError as e:
    raise ImportError_("reading PyTorch files needs torch: pip install 'cfjax[torch]'") from e
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError on truncated zips, ...
    raise ImportError_(
        f"{path} cannot be loaded {what} with torch.load(weights_only=True) (refused or failed; cfjax "
        f"never unpickles arbitrary objects): {type(e).__name__}: {str(e)[:300]}") from e


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a ``.pt``/``.pth`` (torch, weights only) or ``.npz`` state dict into numpy arrays."""
  path = Path(path)
  if not path.is_file():
    raise ImportError_(f"state dict {path} does not exist")
  if path.suffix == ".npz":
    try:
      with np.load(path, allow_pickle=False) as z:
        return {k: np.asarray(z[k]) for k in z.files}
    except ValueError as e:
      raise ImportError_(f"{path} holds objects, not plain arrays; refusing to unpickle it: {e}") from e
    except Exception as e:  # noqa: BLE001 - zipfile/bad data
      raise ImportError_(f"{path} is not a readable .npz file: {e}") from e
  obj = torch_load_weights_only(path, "as a plain tensor state dict")
  import torch  # installed: torch_load_weights_only needs it
  if not isinstance(obj, Mapping):
    raise ImportError_(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
  out = {}
  for k, v in obj.items():
    if not isinstance(v, torch.Tensor):
      raise ImportError_(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
    out[str(k)] = v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
  return out


def _set(tree: dict, path: tuple, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _get(tree, path: tuple):
  for p in path:
    if not isinstance(tree, dict) or p not in tree:
      return None
    tree = tree[p]
  return tree


def convert_guided_diffusion(state_dict: Mapping[str, Any], config: dict) -> dict:
  """Converts a guided-diffusion state dict to cfjax params for ``config`` (an ``adm_unet`` config).

  Raises:
    CfjaxInputError: listing every unknown, missing and mis-shaped key.
  """
  template = registry.abstract_params(config)
  params: dict = {}
  problems = []
  used = set()
  for key, value in state_dict.items():
    mapped = torch_key_to_path(key)
    if mapped is None:
      problems.append(f"unexpected key {key!r} {tuple(np.shape(value))}")
      continue
    module, leaf = mapped
    target = _get(template, module)
    if not isinstance(target, dict):
      problems.append(f"unexpected key {key!r} {tuple(np.shape(value))} (no such module in this config)")
      continue
    if leaf == "bias":
      name = "bias"
    else:
      name = next((n for n in ("kernel", "scale", "embedding") if n in target), None)
    if name is None or name not in target:
      problems.append(f"unexpected key {key!r} (module has {sorted(target)})")
      continue
    v = np.asarray(value, dtype=np.float32)
    if name == "kernel":
      if v.ndim == 4:
        v = v.transpose(2, 3, 1, 0)        # OIHW -> HWIO
      elif v.ndim == 3 and v.shape[-1] == 1:
        v = v[:, :, 0].T                   # Conv1d(k=1) (out, in, 1) -> Dense (in, out)
      elif v.ndim == 2:
        v = v.T                            # Linear (out, in) -> (in, out)
    want = tuple(target[name].shape)
    if v.shape != want:
      problems.append(f"{key!r}: shape {tuple(np.shape(value))} does not fit {'/'.join(map(str, module + (name,)))} {want}")
      continue
    _set(params, module + (name,), v)
    used.add(module + (name,))
  for path, leaf in jax.tree_util.tree_leaves_with_path(template):
    p = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path)
    if p not in used:
      problems.append(f"missing key for {'/'.join(map(str, p))} {tuple(leaf.shape)}")
  if problems:
    shown = "\n  ".join(problems[:40])
    more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
    raise ImportError_(f"state dict does not match the {config.get('arch')} config "
                       f"({len(problems)} problems):\n  {shown}{more}")
  return params


def load_guided_diffusion(path: str | os.PathLike, config: dict) -> registry.Network:
  """Reads a guided-diffusion ``.pt``/``.npz`` state dict and returns the cfjax network."""
  params = convert_guided_diffusion(read_state_dict(path), config)
  return registry.build(config, params=params)
