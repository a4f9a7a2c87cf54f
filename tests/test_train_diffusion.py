"""DDPM training: the loss falls, runs resume exactly, EMA, sample grids, one compiled step, CLI.

Every run here uses the same tiny UNet, batch size, learning rate and EMA, so the train step is
one graph (the persistent compilation cache shares it between runs).
"""

from __future__ import annotations

import json

import chex
import jax
import numpy as np
import pytest
from PIL import Image

from cfjax import checkpoint, cli
from cfjax._validate import CfjaxInputError
from cfjax import diffusion as dd
from cfjax.nets import unet_config
from cfjax.nets.registry import make_apply
from cfjax.training import diffusion
from cfjax.training.loop import TrainCheckpoints

TINY = unet_config("squares32", channel_mult=[1, 2], attention_resolutions=[])
COMMON = dict(dataset="squares", net=TINY, batch_size=8, lr=1e-3, ema=0.9, image_size=32,
              sample_respacing="5", log_every=5, checkpoint_every=5, filter_images=0,
              progress=False)


@pytest.fixture(scope="session")
def run30(tmp_path_factory):
  out = tmp_path_factory.mktemp("ddpm30")
  result = diffusion.train(out=out, steps=30, **{**COMMON, "sample_every": 15, "filter_images": 4})
  return out, result


def test_loss_decreases(run30):
  out, _ = run30
  records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
  train = [r for r in records if "loss" in r]
  assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
  first, last = train[0], train[-1]
  assert last["mse"] < 0.7 * first["mse"], (first, last)
  assert last["loss"] < first["loss"], (first, last)
  assert all(np.isfinite(r["vb"]) and r["vb"] >= 0 for r in train)


def test_ema_differs_and_is_saved(run30):
  out, result = run30
  state = result["state"]
  diffs = jax.tree.leaves(jax.tree.map(lambda e, p: float(np.abs(e - p).max()), state["ema"],
                                       state["params"]))
  assert max(diffs) > 1e-4
  net, meta = checkpoint.load(out / "model", expect={"arch": "adm_unet"})
  chex.assert_trees_all_close(net.params, state["ema"])
  assert meta["kind"] == "diffusion"
  assert meta["diffusion"] == {"steps": 1000, "schedule": "linear"}
  assert meta["train_steps"] == 30


def test_sample_grids_written(run30):
  out, result = run30
  names = sorted(p.name for p in (out / "samples").glob("*.png"))
  assert names == ["step_0000015.png", "step_0000030.png"]
  img = np.asarray(Image.open(result["grid"]))
  side = (4 * (32 + 2) + 2) * 4  # 16 samples in a 4x4 grid, 2-px gaps, upscaled 4x
  assert img.shape == (side, side, 3)
  assert img.std() > 1.0  # not a blank image


def test_filter_metrics_written(run30):
  out, result = run30
  stored = json.loads((out / "metrics.json").read_text())
  f = stored["filter"]
  assert f["num_images"] == 8 and f["tau"] == 5 and f["respacing"] == "50"
  for k in ("interior_red_mae", "background_mae", "border_mae", "interior_red_shift"):
    assert np.isfinite(f[k]) and 0 <= f[k] <= 255
  assert 0 <= f["frac_interior_kept_16"] <= 1
  assert np.isclose(stored["final_loss"], result["metrics"]["final_loss"])


def test_train_step_compiled_once(run30):
  _, result = run30
  assert result["step_fn"]._cache_size() == 1


def test_resume_continues_from_saved_step(tmp_path):
  def stop_at_7(step, state):
    if step == 7:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    diffusion.train(out=tmp_path / "a", steps=10, hooks=[stop_at_7], **COMMON)
  ckpts = TrainCheckpoints(tmp_path / "a" / "checkpoints")
  assert ckpts.latest_step() == 7
  ckpts.close()
  seen = []
  resumed = diffusion.train(out=tmp_path / "a", steps=10, hooks=[lambda s, st: seen.append(s)],
                            **COMMON)
  assert seen == [8, 9, 10]
  assert int(resumed["state"]["step"]) == 10
  # Same batches, same timesteps and noise: the interrupted run ends where an uninterrupted one does.
  full = diffusion.train(out=tmp_path / "b", steps=10, **COMMON)
  chex.assert_trees_all_close(resumed["state"]["params"], full["state"]["params"], atol=1e-6)
  chex.assert_trees_all_close(resumed["state"]["ema"], full["state"]["ema"], atol=1e-6)
  # A larger ``steps`` extends the run; a smaller one than what is saved is an error.
  seen.clear()
  diffusion.train(out=tmp_path / "b", steps=12, hooks=[lambda s, st: seen.append(s)], **COMMON)
  assert seen == [11, 12]
  with pytest.raises(CfjaxInputError, match="past steps=5"):
    diffusion.train(out=tmp_path / "b", steps=5, **COMMON)


def test_step_not_retraced_after_restore(tmp_path):
  tx = diffusion.optimizer(1e-3)
  raw = diffusion.make_train_step(make_apply(TINY), tx, dd.make_schedule(1000), ema=0.9, jit=False)
  step = jax.jit(chex.assert_max_traces(raw, n=1))
  batch = {"image": np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)}
  state, _ = step(diffusion.init_state(TINY, tx, 0), batch)
  state, _ = step(state, batch)
  ckpts = TrainCheckpoints(tmp_path / "ck")
  ckpts.save(2, state)
  restored = ckpts.restore(diffusion.init_state(TINY, tx, 0))
  ckpts.close()
  state, metrics = step(restored, batch)  # raises if the restored state's types force a retrace
  assert int(state["step"]) == 3 and np.isfinite(float(metrics["loss"]))


def test_ema_decay_warmup():
  import jax.numpy as jnp
  assert np.isclose(float(diffusion.ema_decay(jnp.int32(0), 0.9999)), 0.1)
  assert np.isclose(float(diffusion.ema_decay(jnp.int32(10 ** 6), 0.9999)), 0.9999)


def test_cli_records_command_and_resumes(tmp_path, capsys):
  args = ["train-diffusion", "--dataset", "squares", "--image-size", "32", "--config", "squares32",
          "--channel-mult", "1,2", "--attention-resolutions", "", "--steps", "2", "--batch-size", "8",
          "--lr", "1e-3", "--ema", "0.9", "--sample-respacing", "5", "--filter-images", "0",
          "--out", str(tmp_path / "run"), "--no-progress"]
  assert cli.main(args) == 0
  _, meta = checkpoint.load(tmp_path / "run" / "model")
  assert meta["command"].startswith("cfjax train-diffusion --dataset squares")
  assert "--channel-mult 1,2" in meta["command"]
  assert cli.main(args) == 0  # the same command again: nothing left to train, same model
  assert TrainCheckpoints(tmp_path / "run" / "checkpoints").latest_step() == 2
  changed = [a if a != "1e-3" else "2e-3" for a in args]
  assert cli.main(changed) == 2
  assert "different configuration" in capsys.readouterr().err


def test_rejects_fixed_variance_net(tmp_path):
  with pytest.raises(CfjaxInputError, match="out_channels"):
    diffusion.train(out=tmp_path, steps=1, **{**COMMON, "net": {**TINY, "out_channels": 3}})
