"""`cfjax train-diffae` and cfjax.training.diffae: Diff-AE's objective, outputs, resume, refusal."""

import dataclasses
import json

import chex

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfjax
from cfjax import diffusion as dd
from cfjax._validate import CfjaxInputError
from cfjax.cli import main
from cfjax.training import diffae, diffusion

TINY = ["--dataset", "squares", "--net", "tiny32", "--batch-size", "4", "--t-eval", "2", "--eval-limit", "4",
        "--checkpoint-every", "2", "--log-every", "1", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("dae") / "run"
  assert main(["train-diffae", *TINY, "--steps", "3", "--out", str(out)]) == 0
  return out


def test_the_run_directory_holds_model_metrics_and_grid(run):
  metrics = json.loads((run / "metrics.json").read_text())
  for key in ("final_loss", "recon_mae_255", "recon_interior_red_mae_255", "semantic_mae_255",
              "semantic_interior_red_twin_gap_255", "recon_interior_red_twin_gap_255_original"):
    assert np.isfinite(metrics[key]), key
  assert (run / "recon.png").stat().st_size > 500
  meta = json.loads((run / "model" / "cfjax.json").read_text())["meta"]
  assert meta["generator"] == "diffae" and meta["diffusion"]["T_eval"] == 2
  assert meta["command"].startswith("cfjax train-diffae --dataset squares")


def test_the_trained_model_loads_as_a_generator(run):
  g = cfjax.load_generator(run)
  assert g.image_shape == (32, 32, 3) and g.latent_shape == (32 + 32 * 32 * 3,)
  x = jnp.full((32, 32, 3), 0.5)
  z = g.encode(g.params, x, None)
  assert g.decode(g.params, z, None).shape == (32, 32, 3)


def test_rerunning_resumes_and_a_changed_run_is_refused(run, capsys):
  log_before = (run / "log.jsonl").read_text()
  assert main(["train-diffae", *TINY, "--steps", "3", "--out", str(run)]) == 0
  records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
  assert max(r["step"] for r in records if "loss" in r) == 3  # no step was redone past 3
  assert log_before in (run / "log.jsonl").read_text()
  assert main(["train-diffae", *TINY, "--steps", "3", "--lr", "0.01", "--out", str(run)]) == 2
  assert "lr" in capsys.readouterr().err


def test_a_warm_start_continues_a_saved_model_at_its_step(run, tmp_path, capsys):
  """--init: params and EMA from the saved model, step (data stream, EMA warm-up) continued, and
  not loaded again when the run resumes; a model of another net or data, or one already past
  --steps, is refused before training."""
  out = tmp_path / "ws"
  assert main(["train-diffae", *TINY, "--steps", "4", "--init", str(run), "--out", str(out)]) == 0
  steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
  assert steps[0] == 4  # only step 4 was trained
  meta = json.loads((out / "model" / "cfjax.json").read_text())["meta"]
  assert meta["train_steps"] == 4 and meta["init"] == str(run) and "--init" in meta["command"]
  # extending the run resumes from its checkpoint: the --init model is not loaded again (it may
  # since have been replaced by one past --steps)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(diffae, "warm_start", lambda *a: pytest.fail("--init loaded on resume"))
    assert main(["train-diffae", *TINY, "--steps", "5", "--init", str(run), "--out", str(out)]) == 0
  steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
  assert steps[:3] == [4, 4, 5]  # step 4, its evaluation, then step 5 only
  from cfjax.nets.loading import load_network
  saved, _ = load_network(run)
  tx = diffusion.optimizer(1e-4)
  cfg = diffae.DiffaeTrainConfig(dataset="squares", out=str(tmp_path / "x"), net="tiny32", batch_size=4,
                                 steps=9, init=str(run))
  state = diffae.warm_start(cfg, diffae.net_config("tiny32", 32), tx)
  assert int(state["step"]) == 3
  chex.assert_trees_all_close(state["params"], saved.params)
  chex.assert_trees_all_close(state["ema"], saved.params)
  for bad, match in (({"steps": 3}, "already has 3 steps"), ({"batch_size": 8}, "was trained on"),
                     ({"net": "squares32"}, "is not a 'squares32' network")):
    with pytest.raises(CfjaxInputError, match=match):
      diffae.warm_start(dataclasses.replace(cfg, **bad), diffae.net_config(bad.get("net", "tiny32"), 32), tx)


@pytest.mark.parametrize("p2_gamma", [0.0, 1.0])
def test_the_objective_is_the_conditioned_epsilon_mse(p2_gamma):
  """One step's loss is Diff-AE's: mean (noise - eps(x_t, t, encoder(x0)))^2, no vb term; with P2
  weighting each example's MSE is scaled by (1 + SNR(t))^-gamma, and the logged mse is not."""
  from cfjax.nets import registry
  config = diffae.net_config("tiny32", 32)
  apply, encode = registry.make_apply(config), registry.make_apply(config, "encode")
  tx = diffusion.optimizer(1e-4)
  state = diffusion.init_state(config, tx, 0)
  sched = dd.make_schedule(1000)
  step = diffusion.make_train_step(apply, tx, sched, condition=lambda p, x0: {"cond": encode(p, x0)},
                                   p2_gamma=p2_gamma)
  batch = {"image": jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))}
  _, m = step(state, batch)
  key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), 0)
  kt, kn = jax.random.split(key)
  x0 = batch["image"] * 2 - 1
  t = jax.random.randint(kt, (2,), 0, 1000, dtype=jnp.int32)
  noise = jax.random.normal(kn, x0.shape, jnp.float32)
  eps = apply(state["params"], dd.q_sample(sched, x0, t, noise), t, encode(state["params"], x0))
  mse = jnp.mean((noise - eps) ** 2, axis=(1, 2, 3))
  abar = np.asarray(sched.alphas_cumprod, np.float64)[np.asarray(t)]
  weight = (1.0 + abar / (1.0 - abar)) ** -p2_gamma
  np.testing.assert_allclose(m["loss"], np.mean(weight * np.asarray(mse)), rtol=1e-5)
  np.testing.assert_allclose(m["mse"], jnp.mean(mse), rtol=1e-5)
  assert "vb" not in m


def test_bad_settings_are_refused_before_training(tmp_path):
  with pytest.raises(CfjaxInputError, match="T_eval must be in"):
    diffae.train(diffae.DiffaeTrainConfig(dataset="squares", out=str(tmp_path), net="tiny32", T_eval=0))
  with pytest.raises(CfjaxInputError, match="p2_gamma must be"):
    diffae.train(diffae.DiffaeTrainConfig(dataset="squares", out=str(tmp_path), net="tiny32", p2_gamma=-1))
  with pytest.raises(CfjaxInputError, match="unknown Diff-AE config"):
    diffae.train(diffae.DiffaeTrainConfig(dataset="squares", out=str(tmp_path), net="nonesuch"))


def test_a_signal_stops_training_at_the_next_step_boundary():
  """SIGTERM only sets a flag (raising in the handler could land in a callback that swallows it);
  the hook raises at the next step, where the training loop checkpoints; handlers are restored."""
  import os
  import signal

  from cfjax.commands._training import interruptible
  before = signal.getsignal(signal.SIGTERM)
  with interruptible() as stop:
    stop(1, None)
    os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="before step 3"):
      stop(2, None)
  assert signal.getsignal(signal.SIGTERM) is before
