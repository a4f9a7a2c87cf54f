"""Shared fixtures of the Diff-AE tests: the golden files of the original code and the imported models.

Import the fixtures into a test module with ``from diffae_fixtures import *`` (pytest finds them
there). Layout helpers convert the fixtures' NCHW arrays to cfjax's NHWC and back.
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

DIFFAE = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "diffae"

__all__ = ["diffae_dir", "diffae_net", "nhwc", "nchw", "load_npz"]


def nhwc(a):
  return jnp.asarray(np.moveaxis(np.asarray(a, dtype=np.float32), -3, -1))


def nchw(a):
  return np.moveaxis(np.asarray(a), -1, -3)


def load_npz(path) -> dict:
  with np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def diffae_dir() -> Path:
  if not DIFFAE.is_dir():
    pytest.fail(f"fixtures not found at {DIFFAE}; cfjax expects shared/ beside the checkout")
  return DIFFAE


_NETS: dict = {}


@pytest.fixture(scope="session")
def diffae_net(diffae_dir):
  """``diffae_net(name) -> (Network, info)`` of a fixture model (a32, b64, t32), imported once."""
  from cfjax.nets import diffae_import

  def get(name):
    if name not in _NETS:
      _NETS[name] = diffae_import.load_diffae(diffae_dir / f"model_{name}.npz",
                                              diffae_dir / f"config_{name}.json")
    return _NETS[name]

  return get
