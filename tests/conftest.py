"""Test set-up: two forced CPU devices, strict numerics, a persistent compilation cache.

The environment must be set before JAX initialises its backend, hence at import time here.
"""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

# Outside the checkout, shared by every test process and every run (override with CFJAX_JAX_CACHE).
_CACHE = Path(os.environ.get("CFJAX_JAX_CACHE", Path.home() / ".cache" / "cfjax" / "jax_compilation"))
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_enable_x64", False)

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "guided_diffusion"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
  if not FIXTURES.is_dir():
    pytest.fail(f"fixtures not found at {FIXTURES}; cfjax expects shared/ beside the checkout")
  return FIXTURES


@pytest.fixture(scope="session")
def unet_small(fixtures_dir):
  """The fixtures' "small" guided-diffusion UNet, imported from its .npz state dict (shared)."""
  from cfjax.nets import torch_import, unet_config
  return torch_import.load_guided_diffusion(fixtures_dir / "model_small.npz", unet_config("small32"))


CF_ATTACKS = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "cf_attacks"


@pytest.fixture(scope="session")
def cf_attacks_dir() -> Path:
  """Fixtures of the official Counterfactual Attacks code (MNIST VAE, classifier, attack)."""
  if not CF_ATTACKS.is_dir():
    pytest.fail(f"fixtures not found at {CF_ATTACKS}; cfjax expects shared/ beside the checkout")
  return CF_ATTACKS
