"""cfjax: counterfactual explanations of image models in JAX.

Layers (bottom to top): ``diffusion`` (network-free DDPM maths), ``nets`` (Flax networks and
PyTorch importers), ``methods`` (explainers as pure per-example functions), ``engine`` (compiled,
continuously batched, sharded runs), ``data`` (testbeds and tfds loaders), ``training``.
"""

__version__ = "0.1.0"

from cfjax._validate import CfjaxInputError  # noqa: F401
