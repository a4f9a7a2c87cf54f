"""``cfjax convert-checkpoint``: a PyTorch state dict -> a cfjax (orbax) checkpoint.

Four families of named configs:

* guided-diffusion UNets (``celeba128``, ``celebahq256``, ``imagenet256_uncond``, ``small32``, ...)
  for released ACE / DiME / guided-diffusion ``.pt`` files; meta ``{"kind": "diffusion", ...}``;
* Counterfactual Attacks' MNIST networks (:data:`cfjax.nets.cf_attacks_import.CF_ATTACKS_CONFIGS`):
  ``cf_attacks_mnist_vae`` for ``mnist_autoencoder_weights.pth`` (meta ``{"kind": "generator",
  "generator": "vae", "image_size": 28, "channels": 1, "latent_dim": 64, ...}``) and
  ``cf_attacks_mnist_classifier`` for ``mnist_classifier_weights.pth`` (meta ``{"kind":
  "predictor", "task": "classification", "num_classes": 10, "image_size": 28, ...}``);
* Diff-AE (:mod:`cfjax.nets.diffae_import`): ``diffae`` (the architecture recorded in a Lightning
  ``.ckpt``'s ``hyper_parameters``), a template name (``ffhq256_autoenc``, ``ffhq128_autoenc_130M``,
  ...) or ``diffae:PATH.json`` (TrainConfig fields); EMA weights unless ``--weights model``; meta
  ``{"kind": "generator", "generator": "diffae", "diffusion": {"steps", "schedule", "T_eval"}, ...}``;
* pytorch-fid's InceptionV3 (:mod:`cfjax.nets.inception_import`): ``fid_inception_v3`` for
  ``pt_inception-2015-12-05-6726825d.pth``; meta ``{"kind": "features", "features": "pool3",
  "dim": 2048, ...}``, loaded by :func:`cfjax.metrics.features.feature_extractor`.

Example:
  cfjax convert-checkpoint mnist_autoencoder_weights.pth --config cf_attacks_mnist_vae --out ckpt/mnist_vae
  cfjax convert-checkpoint checkpoints/ffhq256_autoenc/last.ckpt --config diffae --out ckpt/diffae_ffhq256
  cfjax convert-checkpoint pt_inception-2015-12-05-6726825d.pth --config fid_inception_v3 --out ckpt/inception
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def add_parser(sub):
  p = sub.add_parser(
      "convert-checkpoint",
      help="convert a guided-diffusion / ACE / DiME, Counterfactual Attacks, Diff-AE or "
           "pytorch-fid InceptionV3 .pt(h) (or .npz) state dict to a cfjax checkpoint",
      description="Reads the state dict with torch.load(weights_only=True) (never arbitrary "
                  "unpickling), checks every key and shape against the named config, and "
                  "writes an orbax checkpoint that cfjax's loaders accept.")
  p.add_argument("source", help="path of the .pt/.pth (needs `pip install 'cfjax[torch]'`) or .npz file")
  p.add_argument("--config", required=True,
                 help="named UNet config (celeba128, celebahq256, imagenet256_uncond, small32, ...) "
                      "or Counterfactual Attacks config (cf_attacks_mnist_vae, cf_attacks_mnist_classifier) "
                      "or Diff-AE (diffae: from the .ckpt; a template such as ffhq256_autoenc; "
                      "diffae:PATH.json) or pytorch-fid's InceptionV3 (fid_inception_v3)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                 help="override a config entry, e.g. --set num_classes=1000 --set dtype='\"bfloat16\"'")
  p.add_argument("--steps", type=int, help="diffusion steps the model was trained with (default: the config's)")
  p.add_argument("--schedule", choices=["linear", "cosine"], help="beta schedule (default: the config's)")
  p.add_argument("--weights", choices=["ema", "model"], default="ema",
                 help="Diff-AE Lightning checkpoints: the EMA weights (default) or the raw training weights")
  p.add_argument("--out", required=True, help="output checkpoint directory")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(func=run)


def _overrides(items) -> dict:
  from cfjax._validate import CfjaxInputError
  overrides = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise CfjaxInputError(f"--set expects KEY=JSON, got {item!r}")
    try:
      overrides[key] = json.loads(value)
    except json.JSONDecodeError as e:
      raise CfjaxInputError(f"--set {key}: {value!r} is not JSON ({e})") from e
  return overrides


def _cf_attacks(args, overrides: dict, src: Path):
  """``(network, meta)`` of a Counterfactual Attacks state dict."""
  from cfjax._validate import CfjaxInputError
  from cfjax.nets import cf_attacks_import as cfa
  from cfjax.nets.vae import MNIST_MEAN, MNIST_STD
  if args.steps or args.schedule:
    raise CfjaxInputError(f"--steps and --schedule apply to diffusion models, not {args.config}")
  config = cfa.named_config(args.config, **overrides)
  net = cfa.load_cf_attacks(src, config)
  source = {"paper": "Goldwasser & Hooker 2025, Counterfactual Attacks",
            "repository": "jeremy-goldwasser/counterfactual-attacks"}
  if config["arch"] == "cf_vae":
    meta = {"kind": "generator", "generator": "vae", "image_size": config["image_size"],
            "channels": config["channels"], "latent_dim": config["latent_dim"],
            "input_normalization": ({"mean": MNIST_MEAN, "std": MNIST_STD}
                                    if config.get("normalize") else None), **source}
  else:
    meta = {"kind": "predictor", "task": "classification", "num_classes": config["num_classes"],
            "image_size": config["image_size"], "channels": config["channels"], **source}
  return net, meta


def _diffae(args, overrides: dict, src: Path):
  """``(network, meta)`` of a Diff-AE checkpoint or state dict."""
  from cfjax._validate import CfjaxInputError
  from cfjax.nets import diffae_import
  if args.steps or args.schedule:
    raise CfjaxInputError("--steps and --schedule of a Diff-AE come from its config (T, beta_scheduler)")
  config = None if args.config == "diffae" else args.config.removeprefix("diffae:")
  weights = getattr(args, "weights", "ema")
  net, info = diffae_import.load_diffae(src, config, weights=weights, **overrides)
  meta = {"kind": "generator", "generator": "diffae", "diffusion": info["diffusion"],
          "image_size": net.config["image_size"], "latent_dim": net.config["enc_out_channels"],
          "weights": weights, "paper": "Preechakul et al. 2022, Diffusion Autoencoders",
          "repository": "phizaz/diffae"}
  return net, meta


def _fid_inception(args, overrides: dict, src: Path):
  """``(network, meta)`` of pytorch-fid's InceptionV3 weights."""
  from cfjax._validate import CfjaxInputError
  from cfjax.nets import inception_import
  if args.steps or args.schedule:
    raise CfjaxInputError("--steps and --schedule apply to diffusion models, not fid_inception_v3")
  net = inception_import.load_fid_inception(src, **overrides)
  meta = {"kind": "features", "features": "pool3", "dim": 2048,
          "paper": "Heusel et al. 2017, GANs Trained by a Two Time-Scale Update Rule (FID)",
          "repository": "mseitzer/pytorch-fid"}
  return net, meta


def _is_diffae(name: str) -> bool:
  from cfjax.nets.diffae_configs import TRAIN_CONFIGS
  return name == "diffae" or name.startswith("diffae:") or name in TRAIN_CONFIGS


def run(args) -> int:
  from cfjax import checkpoint
  from cfjax.nets import cf_attacks_import, diffusion_settings, torch_import, unet_config

  overrides = _overrides(args.set)
  src = Path(args.source)
  if args.config in cf_attacks_import.CF_ATTACKS_CONFIGS:
    net, meta = _cf_attacks(args, overrides, src)
  elif args.config == "fid_inception_v3":
    net, meta = _fid_inception(args, overrides, src)
  elif _is_diffae(args.config):
    net, meta = _diffae(args, overrides, src)
  else:
    config = unet_config(args.config, **overrides)
    diffusion = diffusion_settings(args.config)
    if args.steps:
      diffusion["steps"] = args.steps
    if args.schedule:
      diffusion["schedule"] = args.schedule
    net = torch_import.load_guided_diffusion(src, config)
    meta = {"kind": "diffusion", "diffusion": diffusion}
  digest = hashlib.sha256(src.read_bytes()).hexdigest()
  meta.update({"source": str(src.resolve()), "source_sha256": digest, "named_config": args.config,
               "command": "cfjax convert-checkpoint " + " ".join(getattr(args, "argv", []) or sys.argv[2:])})
  out = checkpoint.save(args.out, net.config, net.params, meta=meta, overwrite=args.overwrite)
  print(f"wrote {out} ({sum(x.size for x in __import__('jax').tree.leaves(net.params)):,} parameters)")
  return 0
