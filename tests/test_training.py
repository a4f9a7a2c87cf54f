"""Predictor training: the jitted step, the CLI, resume after interruption, config guard, errors."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfjax.data as data
from cfjax import checkpoint, cli
from cfjax._validate import CfjaxInputError
from cfjax.nets import registry
from cfjax.training import loop, predictor

# One tiny network for every training test: one compiled step graph, shared through the cache.
TINY = dict(arch="small_cnn", width=4)
RUN = dict(dataset="squares", task="regression", image_size=32, batch_size=16, lr=3e-3,
           testbed_kwargs={"rho": 0.0}, log_every=2, progress=False, **TINY)


@pytest.fixture(scope="session")
def batch():
  b = data.load("squares", image_size=32, batch_size=32, shuffle=False)[0]
  return {"image": jnp.asarray(b["image"]), "label": jnp.asarray(b["label"])}


def _setup(task="regression", num_outputs=1):
  config = predictor.net_config("small_cnn", num_outputs=num_outputs, image_size=32, width=4)
  tx = predictor.optimizer(3e-3, 100, schedule="constant")
  return config, tx, predictor.init_state(config, tx, seed=0)


def test_train_step_lowers_loss_and_compiles_once(batch):
  config, tx, state = _setup()
  apply = registry.make_apply(config)
  raw = predictor.make_train_step(apply, tx, "regression", 1, jit=False)
  step = jax.jit(chex.assert_max_traces(raw, n=1))
  losses = []
  for i in range(25):
    # Fresh label arrays each call: same shapes and dtypes must not retrace.
    b = {"image": batch["image"], "label": jnp.array(np.asarray(batch["label"]))}
    state, m = step(state, b)
    losses.append(float(m["loss"]))
  assert int(state["step"]) == 25
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses
  chex.clear_trace_counter()


def test_classification_losses_are_cross_entropies():
  logits = jnp.array([[2.0, -1.0, 0.0]])
  ce = predictor.loss_fn("classification", 3)(logits, jnp.array([0], jnp.int32))
  np.testing.assert_allclose(ce, -jax.nn.log_softmax(logits)[:, 0], rtol=1e-6)
  bce = predictor.loss_fn("classification", 1)(jnp.array([1.5]), jnp.array([1], jnp.int32))
  np.testing.assert_allclose(bce, -jax.nn.log_sigmoid(jnp.array([1.5])), rtol=1e-6)
  mse = predictor.loss_fn("regression", 1)(jnp.array([0.2]), jnp.array([0.5]))
  np.testing.assert_allclose(mse, [0.09], rtol=1e-5)


def _interrupt_at(k):
  def hook(step, state):
    if step == k:
      raise KeyboardInterrupt
  return hook


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
  ref = predictor.train(out=tmp_path / "ref", steps=6, checkpoint_every=4, **RUN)
  with pytest.raises(KeyboardInterrupt):
    predictor.train(out=tmp_path / "run", steps=6, checkpoint_every=4, hooks=[_interrupt_at(3)], **RUN)
  # The interruption checkpointed step 3 and left no final model.
  ckpts = loop.TrainCheckpoints(tmp_path / "run" / "checkpoints")
  assert ckpts.latest_step() == 3
  ckpts.close()
  assert not (tmp_path / "run" / "model").exists()
  seen = []
  resumed = predictor.train(out=tmp_path / "run", steps=6, checkpoint_every=4,
                            hooks=[lambda s, st: seen.append(s)], **RUN)
  assert seen == [4, 5, 6]  # continued from the saved step, did not restart
  assert int(resumed["state"]["step"]) == 6
  chex.assert_trees_all_close(resumed["state"]["params"], ref["state"]["params"], rtol=1e-5, atol=1e-6)
  net, meta = checkpoint.load(resumed["model"])
  chex.assert_trees_all_equal(net.params, jax.tree.map(np.asarray, resumed["state"]["params"]))
  assert meta["task"] == "regression" and meta["dataset"] == "squares"
  # Re-running a finished run does not train again.
  again = predictor.train(out=tmp_path / "run", steps=6, checkpoint_every=4,
                          hooks=[lambda s, st: seen.append(s)], **RUN)
  assert seen == [4, 5, 6] and int(again["state"]["step"]) == 6
  # The same directory with another learning rate is refused, naming the difference.
  with pytest.raises(loop.RunConfigError, match=r"lr: stored 0.003, now 0.01"):
    predictor.train(out=tmp_path / "run", steps=6, checkpoint_every=4, **dict(RUN, lr=1e-2))


def test_different_config_in_same_dir_is_an_error(tmp_path):
  (tmp_path / "run.json").write_text(json.dumps({"dataset": "squares", "lr": 1.0}))
  with pytest.raises(loop.RunConfigError, match="different configuration"):
    predictor.train(out=tmp_path, steps=2, **RUN)


def test_cli_regression_run_records_everything(tmp_path, capsys):
  out = tmp_path / "sq"
  argv = ["train-predictor", "--dataset", "squares", "--task", "regression", "--arch", "small_cnn",
          "--width", "4", "--rho", "1.0", "--image-size", "32", "--steps", "4", "--batch-size", "16",
          "--lr", "0.003", "--eval-every", "2", "--log-every", "2", "--out", str(out), "--no-progress"]
  assert cli.main(argv) == 0
  assert "saved" in capsys.readouterr().out
  net, meta = checkpoint.load(out / "model")
  assert net.config == {"arch": "small_cnn", "num_outputs": 1, "image_size": 32, "width": 4}
  assert meta["command"].startswith("cfjax train-predictor --dataset squares --task regression")
  assert "--rho 1.0" in meta["command"] and f"--out {out}" in meta["command"]
  metrics = json.loads((out / "metrics.json").read_text())
  assert set(metrics) >= {"mae", "mae_lower", "mae_upper", "background_reliance"}
  assert metrics == meta["metrics"]
  records = loop.JsonlLog(out / "log.jsonl").read()
  assert [r["step"] for r in records if "loss" in r] == [2, 4]
  assert [r["step"] for r in records if "eval" in r] == [2, 4]
  # MAE over the 630 grid images equals the mean of the two equal-sized grids.
  assert metrics["mae"] == pytest.approx((metrics["mae_lower"] + metrics["mae_upper"]) / 2, rel=1e-5)


def test_cli_classification_on_shapes(tmp_path):
  out = tmp_path / "sh"
  argv = ["train-predictor", "--dataset", "shapes", "--task", "classification", "--width", "4",
          "--steps", "2", "--batch-size", "16", "--out", str(out), "--no-progress"]
  assert cli.main(argv) == 0
  net, meta = checkpoint.load(out / "model")
  assert net.config["num_outputs"] == 1  # binary: one logit
  assert 0.0 <= meta["metrics"]["accuracy"] <= 1.0


def test_targets_standardise_every_factor():
  t = predictor.Targets.estimate("shapes", "all", image_size=32, examples=1024)
  assert sorted(t.names) == ["background", "shape", "size", "x", "y"]
  b = data.load("shapes", image_size=32, batch_size=1024, shuffle=False)[0]
  y = t.labels(b)
  assert y.shape == (1024, 5) and y.dtype == np.float32
  np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(y.std(0), 1.0, atol=1e-4)
  # Column k is factor k, affinely: standardising keeps the order of the values.
  np.testing.assert_array_equal(np.argsort(y[:, t.names.index("x")], kind="stable"), np.argsort(b["x"], kind="stable"))


def test_cli_targets_train_one_output_per_factor(tmp_path):
  out = tmp_path / "feat"
  argv = ["train-predictor", "--dataset", "squares", "--task", "regression", "--targets", "color_a,color_b",
          "--width", "4", "--image-size", "32", "--steps", "3", "--batch-size", "16", "--out", str(out),
          "--no-progress"]
  assert cli.main(argv) == 0
  net, meta = checkpoint.load(out / "model")
  assert net.config["num_outputs"] == 2
  assert meta["targets"]["names"] == ["color_a", "color_b"]
  assert "--targets color_a,color_b" in meta["command"]
  # color_a is uniform over 256 levels in balanced halves: its standard deviation is near 256/sqrt(12).
  assert meta["targets"]["std"][0] == pytest.approx(256 / 12 ** 0.5, rel=0.05)
  assert {"mae", "r2_color_a", "r2_color_b"} <= set(meta["metrics"])
  assert "background_reliance" not in meta["metrics"]


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "squares", "--task", "regression", "--targets", "color_c"], "unknown attribute of 'squares'"),
    (["--dataset", "shapes", "--task", "classification", "--targets", "all"], "use task 'regression'"),
    (["--dataset", "squarez", "--task", "regression"], "unknown dataset 'squarez'"),
    (["--dataset", "squares", "--task", "regression", "--arch", "resnet19"],
     "unknown predictor architecture 'resnet19'"),
    (["--dataset", "squares", "--task", "classification"], "regression dataset"),
    (["--dataset", "shapes", "--task", "classification", "--attribute", "Smiling"], "no attributes"),
    (["--dataset", "squares", "--task", "regression", "--image-size", "48"], "64 or 32"),
    (["--dataset", "celeb_a", "--task", "classification", "--attribute", "Smilling"],
     "Did you mean 'Smiling'"),
    (["--dataset", "squares", "--task", "regression", "--steps", "0"], "must be positive"),
])
def test_cli_bad_input(tmp_path, capsys, argv, message):
  if "--steps" not in argv:
    argv = [*argv, "--steps", "1"]
  code = cli.main(["train-predictor", *argv, "--out", str(tmp_path / "x"), "--no-progress"])
  assert code == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "x" / "run.json").exists()  # a failed start does not claim the directory


def test_background_reliance_separates_causal_from_shortcut():
  # A "shortcut" model that reads the mean green level (the background: the square has no green
  # inside) and a "causal" one that reads red minus green (zero on the grey background).
  def shortcut(params, x):
    return x[..., 1].mean(axis=(1, 2))

  def causal(params, x):
    return (x[..., 0] - x[..., 1]).mean(axis=(1, 2)) * (32 * 32 / 16)

  s = predictor.background_reliance(shortcut, {}, image_size=32, n=64)
  c = predictor.background_reliance(causal, {}, image_size=32, n=64)
  assert s["bg_flip"] > 0.3 and s["bg_flip_ratio"] > 10
  # Clipping of the pixel noise at dark/bright backgrounds leaks a little into red - green.
  assert c["a_flip"] > 0.3 and c["bg_flip_ratio"] < 0.1
