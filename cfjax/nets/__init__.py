"""Flax networks: the ADM UNet, predictors, the Counterfactual Attacks VAE, pytorch-fid's
InceptionV3, importers, loaders.

Every network is registered by name in :mod:`cfjax.nets.registry` and used functionally:
``net = build(config)`` gives ``net.apply(net.params, ...)``.
"""

from cfjax.nets.registry import Network, abstract_params, build, check_params, known_archs, register  # noqa: F401
from cfjax.nets import unet  # noqa: F401  (registers "adm_unet")
from cfjax.nets.unet import timestep_embedding  # noqa: F401
from cfjax.nets.unet_configs import UNET_CONFIGS, diffusion_settings, unet_config  # noqa: F401
from cfjax.nets import torch_import  # noqa: F401
from cfjax.nets import registry  # noqa: F401
from cfjax.nets import predictors  # noqa: F401  (registers "small_cnn", "resnet18", "oracle")
from cfjax.nets import vae  # noqa: F401  (registers "cf_vae", "cf_mnist_cnn")
from cfjax.nets import diffae  # noqa: F401  (registers "diffae")
from cfjax.nets import inception  # noqa: F401  (registers "fid_inception_v3")
from cfjax.nets.predictors import Predictor  # noqa: F401
from cfjax.nets.loading import DiffusionModel, load_diffusion, load_network, load_predictor, resolve_checkpoint  # noqa: F401
