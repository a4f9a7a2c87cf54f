"""`cfjax train-vae` and cfjax.training.vae: the paper's loss, outputs, resume, refusal, learning."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax import checkpoint
from cfjax._validate import CfjaxInputError
from cfjax.cli import main
from cfjax.training import loop, vae

TINY = ["--dataset", "shapes", "--image-size", "32", "--latent-dim", "8", "--batch-size", "8",
        "--eval-limit", "16", "--checkpoint-every", "5", "--log-every", "5", "--no-progress"]


def _train(out, steps, **kwargs):
  return vae.train(dataset="shapes", out=out, image_size=32, latent_dim=8, steps=steps,
                   batch_size=8, eval_limit=16, checkpoint_every=5, log_every=5, progress=False,
                   **kwargs)


def test_sobel_edge_is_the_notebooks_sobel_loss():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional

  def sobel_loss(output):  # the notebook's definition (single channel)
    sx = torch.tensor([[[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]]], dtype=output.dtype)
    sy = torch.tensor([[[[-1, -2, -1], [0, 0, 0], [1, 2, 1]]]], dtype=output.dtype)
    ex, ey = F.conv2d(output, sx, padding=1), F.conv2d(output, sy, padding=1)
    return torch.sqrt(torch.clamp(ex ** 2 + ey ** 2, min=1e-8)).mean()

  x = np.random.default_rng(0).random((3, 3, 12, 12)).astype(np.float32)
  ours = vae.sobel_edge(jnp.asarray(x.transpose(0, 2, 3, 1)))
  # One channel: the notebook's function; RGB: its mean over the channels (depthwise).
  np.testing.assert_allclose(vae.sobel_edge(jnp.asarray(x[:, :1].transpose(0, 2, 3, 1))),
                             float(sobel_loss(torch.from_numpy(x[:, :1]))), rtol=1e-6)
  per_channel = [float(sobel_loss(torch.from_numpy(x[:, c:c + 1]))) for c in range(3)]
  np.testing.assert_allclose(ours, np.mean(per_channel), rtol=1e-6)


def test_loss_parts_and_weights():
  x = jnp.full((2, 8, 8, 3), 0.5)
  out = x + 0.1
  mu, logvar = jnp.zeros((2, 4)), jnp.zeros((2, 4))
  loss, parts = vae.vae_loss(out, x, mu, logvar, edge_weight=0.2, l1_weight=4.0, kl_weight=0.0)
  np.testing.assert_allclose(parts["mse"], 0.01, rtol=1e-5)
  np.testing.assert_allclose(parts["l1"], 0.1, rtol=1e-5)
  np.testing.assert_allclose(parts["kl"], 0.0, atol=1e-7)
  np.testing.assert_allclose(loss, 0.01 + 0.2 * parts["edge"] + 0.4, rtol=1e-6)
  _, parts = vae.vae_loss(out, x, jnp.ones((2, 4)), logvar)
  np.testing.assert_allclose(parts["kl"], 2.0, rtol=1e-6)  # 0.5 * sum(mu^2) over 4 dims
  loss_kl, _ = vae.vae_loss(out, x, jnp.ones((2, 4)), logvar, kl_weight=0.5)
  np.testing.assert_allclose(loss_kl - loss, 1.0, rtol=1e-5)


def test_reconstruction_metrics_on_squares_masks():
  images = np.zeros((2, 8, 8, 3), np.float32)
  mask = np.zeros((2, 8, 8), bool)
  mask[:, 2:4, 2:4] = True
  recon = images.copy()
  recon[0][mask[0]] = [0.5, 0.0, 0.0]  # red interior only in the reconstruction of image 0
  m = vae.reconstruction_metrics(recon, images, mask, np.array(["lower", "upper"]))
  np.testing.assert_allclose(m["interior_red_mae_255"], 0.5 * 255 / 2)
  np.testing.assert_allclose(m["interior_red_mae_255_lower"], 0.5 * 255)
  assert m["interior_red_mae_255_upper"] == 0.0 and m["mae_255_upper"] == 0.0


def test_train_vae_writes_everything_and_refuses_another_config(tmp_path, capsys):
  out = tmp_path / "run"
  assert main(["train-vae", *TINY, "--steps", "5", "--out", str(out)]) == 0
  assert "recon.png" in capsys.readouterr().out
  for name in ("run.json", "log.jsonl", "metrics.json", "recon.png", "model/cfjax.json"):
    assert (out / name).is_file(), name
  assert (out / "recon.png").stat().st_size > 1000
  metrics = json.loads((out / "metrics.json").read_text())
  assert {"final_loss", "mae_255", "mse"} <= set(metrics)
  net, meta = checkpoint.load(out / "model")
  assert net.config == {"arch": "cf_vae", "image_size": 32, "channels": 3, "latent_dim": 8}
  assert {k: meta[k] for k in ("kind", "generator", "image_size", "channels", "latent_dim", "dataset")} == {
      "kind": "generator", "generator": "vae", "image_size": 32, "channels": 3, "latent_dim": 8,
      "dataset": "shapes"}
  assert meta["command"].startswith("cfjax train-vae --dataset shapes") and meta["metrics"] == metrics
  assert meta["loss"] == {"edge_weight": 0.2, "l1_weight": 4.0, "kl_weight": 0.0}
  recon = net.apply(net.params, jnp.full((2, 32, 32, 3), 0.5))
  chex.assert_shape(recon, (2, 32, 32, 3))
  # Another configuration in the same directory is refused, naming what changed.
  assert main(["train-vae", *TINY, "--steps", "5", "--lr", "0.002", "--out", str(out)]) == 2
  assert "lr: stored 0.001, now 0.002" in capsys.readouterr().err


def test_resume_continues_to_the_uninterrupted_result(tmp_path):
  whole = _train(tmp_path / "whole", 10)

  def stop_at_5(step, state):
    if step == 5:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    _train(tmp_path / "cut", 10, hooks=[stop_at_5])
  resumed = _train(tmp_path / "cut", 10)
  steps = [r["step"] for r in loop.JsonlLog(tmp_path / "cut" / "log.jsonl").read() if "loss" in r]
  assert steps == [5, 10]  # the second invocation started at step 5
  chex.assert_trees_all_close(resumed["state"]["params"], whole["state"]["params"], atol=1e-6)
  assert int(resumed["state"]["step"]) == 10


def test_loss_decreases(tmp_path):
  r = vae.train(dataset="squares", out=tmp_path / "sq", image_size=32, latent_dim=8, steps=60,
                batch_size=16, eval_limit=20, log_every=10, checkpoint_every=0, progress=False)
  losses = [rec["loss"] for rec in loop.JsonlLog(tmp_path / "sq" / "log.jsonl").read() if "loss" in rec]
  assert len(losses) == 6 and losses[-1] < 0.75 * losses[0], losses
  assert {"interior_red_mae_255", "interior_red_mae_255_lower", "mae_255_upper"} <= set(r["metrics"])
  assert np.isfinite(jax.tree.leaves(r["state"]["params"])[0]).all()


def test_bad_options_are_refused_before_the_run_directory_exists(tmp_path):
  with pytest.raises(CfjaxInputError, match="image_size must be one of"):
    vae.train(dataset="shapes", out=tmp_path / "a", image_size=24, steps=1, progress=False)
  with pytest.raises(CfjaxInputError, match="loss weights non-negative"):
    vae.train(dataset="shapes", out=tmp_path / "b", l1_weight=-1, steps=1, progress=False)
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
