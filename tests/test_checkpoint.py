"""Network checkpoints (cfjax.checkpoint) and training-state checkpoints (training.loop)."""

import json
import shutil
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cfjax import checkpoint, nets
from cfjax._validate import CfjaxInputError
from cfjax.training import loop

CNN = {"arch": "small_cnn", "num_outputs": 3, "image_size": 16, "width": 4, "stages": 2, "hidden": 8}
RESNET = {"arch": "resnet18", "num_outputs": 1, "width": 4}


@pytest.fixture(scope="session")
def cnn():
  return nets.build(CNN, seed=3)


@pytest.fixture(scope="session")
def saved(cnn, tmp_path_factory):
  path = tmp_path_factory.mktemp("ckpt") / "model"
  checkpoint.save(path, cnn.config, cnn.params, meta={"task": "classification", "n": 3})
  return path


def _copy(saved, tmp_path) -> Path:
  dst = tmp_path / "copy"
  shutil.copytree(saved, dst)
  return dst


def _largest_array_file(path: Path) -> Path:
  files = [p for p in (path / "params").rglob("*") if p.is_file() and "metadata" not in p.name.lower()]
  return max(files, key=lambda p: p.stat().st_size)


def test_round_trip_is_exact_with_int_keys(cnn, saved):
  net, meta = checkpoint.load(saved)
  assert meta == {"task": "classification", "n": 3}
  assert net.config == cnn.config
  # nnx.List indices are int keys: they must come back as ints, not strings.
  assert sorted(net.params["trunk"]["stages"]) == [0, 1]
  chex.assert_trees_all_equal(net.params, cnn.params)
  x = jnp.full((2, 16, 16, 3), 0.5)
  chex.assert_trees_all_equal(net.apply(net.params, x), cnn.apply(cnn.params, x))


def test_round_trip_resnet(tmp_path):
  net = nets.build(RESNET, seed=1)
  checkpoint.save(tmp_path / "r", net.config, net.params)
  back, _ = checkpoint.load(tmp_path / "r", expect={"arch": "resnet18"})
  chex.assert_trees_all_equal(back.params, net.params)


def test_save_refuses_overwrite_and_wrong_params(cnn, saved, tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match="exists"):
    checkpoint.save(saved, cnn.config, cnn.params)
  bad = jax.tree.map(lambda a: a, cnn.params)
  bad["out"]["kernel"] = jnp.zeros((8, 5))
  with pytest.raises(CfjaxInputError, match=r"expected shape \(8, 3\), got \(8, 5\)"):
    checkpoint.save(tmp_path / "bad", cnn.config, bad)


def test_expect_mismatch(saved):
  with pytest.raises(checkpoint.CheckpointError, match="expected 'resnet18', checkpoint has 'small_cnn'"):
    checkpoint.load(saved, expect={"arch": "resnet18"})


def test_architecture_mismatch(saved, tmp_path):
  path = _copy(saved, tmp_path)
  rec = json.loads((path / "cfjax.json").read_text())
  rec["config"]["width"] = 8  # the stored arrays are for width 4
  (path / "cfjax.json").write_text(json.dumps(rec))
  with pytest.raises(checkpoint.CheckpointError, match="does not match architecture 'small_cnn'"):
    checkpoint.load(path)


def test_flipped_bytes_are_detected(saved, tmp_path):
  path = _copy(saved, tmp_path)
  f = _largest_array_file(path)
  raw = bytearray(f.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  f.write_bytes(bytes(raw))
  with pytest.raises(checkpoint.CheckpointError, match="corrupted or truncated"):
    checkpoint.load(path)


def test_truncated_file_is_detected(saved, tmp_path):
  path = _copy(saved, tmp_path)
  f = _largest_array_file(path)
  f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  with pytest.raises(checkpoint.CheckpointError, match="corrupted or truncated"):
    checkpoint.load(path)


def test_missing_file_and_bad_record(saved, tmp_path):
  path = _copy(saved, tmp_path)
  _largest_array_file(path).unlink()
  with pytest.raises(checkpoint.CheckpointError, match="incomplete"):
    checkpoint.load(path)
  (path / "cfjax.json").write_text("{not json")
  with pytest.raises(checkpoint.CheckpointError, match="corrupted"):
    checkpoint.load(path)
  with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
    checkpoint.load(tmp_path / "nowhere")
  pt = tmp_path / "model.pt"
  pt.write_bytes(b"x")
  with pytest.raises(checkpoint.CheckpointError, match="PyTorch"):
    checkpoint.load(pt)


# ---- training-state checkpoints (orbax CheckpointManager) ----

@pytest.fixture(scope="session")
def train_state(cnn):
  tx = optax.adamw(1e-3)
  return {"params": cnn.params, "opt_state": tx.init(cnn.params), "step": jnp.array(7, jnp.int32),
          "rng": jax.random.key_data(jax.random.key(0))}


def test_train_state_round_trip(train_state, tmp_path):
  ckpts = loop.TrainCheckpoints(tmp_path / "c", max_to_keep=2)
  for step in (1, 2, 3):
    ckpts.save(step, train_state)
  assert ckpts.latest_step() == 3
  assert sorted(ckpts.manager.all_steps()) == [2, 3]
  assert sorted(p.name for p in (tmp_path / "c").glob(".sha256.*")) == [".sha256.2.json", ".sha256.3.json"]
  back = ckpts.restore(train_state)
  ckpts.close()
  # Same tree structure (optax NamedTuples, int keys), same arrays.
  assert jax.tree.structure(back) == jax.tree.structure(train_state)
  chex.assert_trees_all_equal(back, train_state)


def test_train_state_corruption_and_mismatch(train_state, tmp_path):
  ckpts = loop.TrainCheckpoints(tmp_path / "c")
  ckpts.save(5, train_state)
  with pytest.raises(checkpoint.CheckpointError, match="does not match this run's state"):
    ckpts.restore({"params": train_state["params"], "step": train_state["step"]})
  files = [p for p in (tmp_path / "c" / "5").rglob("*") if p.is_file()]
  f = max(files, key=lambda p: p.stat().st_size)
  raw = bytearray(f.read_bytes())
  raw[-1] ^= 0x55
  f.write_bytes(bytes(raw))
  with pytest.raises(checkpoint.CheckpointError, match="corrupted or truncated"):
    ckpts.restore(train_state)
  ckpts.close()
  empty = loop.TrainCheckpoints(tmp_path / "empty")
  with pytest.raises(checkpoint.CheckpointError, match="no training checkpoint"):
    empty.restore(train_state)
  empty.close()


def test_run_config_guard_and_jsonl(tmp_path):
  cfg = {"lr": 1e-3, "steps": 10, "eval_every": 5}
  assert loop.check_run_config(tmp_path, cfg) == cfg
  loop.check_run_config(tmp_path, dict(cfg, eval_every=2), ignore=("eval_every",))
  with pytest.raises(loop.RunConfigError, match=r"lr: stored 0.001, now 0.01"):
    loop.check_run_config(tmp_path, dict(cfg, lr=1e-2))
  log = loop.JsonlLog(tmp_path / "log.jsonl")
  log.write({"step": 1, "loss": np.float32(0.5), "v": jnp.arange(2)})
  with open(log.path, "a") as f:
    f.write('{"step": 2, "lo')  # a torn line from a crash
  assert log.read() == [{"loss": 0.5, "step": 1, "v": [0, 1]}]
