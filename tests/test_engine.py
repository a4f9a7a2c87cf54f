"""The continuous-batching engine: determinism across batching/devices, refill, resume, errors."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import cfjax
from cfjax import CfjaxInputError, engine, pipeline

sys.path.insert(0, str(Path(__file__).parent))
from toy_method import countdown  # noqa: E402

N = 13
X = np.linspace(0, 1, N * 8 * 8 * 3, dtype=np.float32).reshape(N, 8, 8, 3)
T = (np.arange(N) % 7 + 1).astype(np.int32)  # example i needs T[i] iterations


@pytest.fixture(scope="module")
def method():
  return countdown()


@pytest.fixture(scope="module")
def reference(method):
  return cfjax.explain(method, X, T, key=jax.random.key(0), num_slots=4, steps_per_call=1,
                        progress=False, return_stats=True)


def test_every_example_once_with_its_own_iterations(reference):
  res, stats = reference
  np.testing.assert_array_equal(res["id"], np.arange(N))
  np.testing.assert_array_equal(res["iterations"], T)
  assert stats["num_done"] == N


def test_continuous_batching_follows_the_mean(reference):
  _, stats = reference
  # Fixed batches of 4 would need sum over batches of max(T) calls; refilling needs about
  # sum(T) / slots plus a tail.
  fixed = sum(int(T[i:i + 4].max()) for i in range(0, N, 4))
  assert stats["calls"] < fixed, (stats["calls"], fixed)
  assert stats["calls"] >= int(np.ceil(T.sum() / 4))


@pytest.mark.parametrize("slots,devices,k", [(2, 1, 1), (8, 2, 3), (6, 2, 2)])
def test_identical_across_slots_devices_and_k(method, reference, slots, devices, k):
  order = np.random.RandomState(slots).permutation(N)
  res = cfjax.explain(method, X[order], T[order], ids=order, key=jax.random.key(0), num_slots=slots,
                       steps_per_call=k, devices=jax.local_devices()[:devices], progress=False)
  ref = reference[0]
  np.testing.assert_array_equal(res["id"], ref["id"])
  # The same random numbers, bit for bit, whatever the batching.
  np.testing.assert_array_equal(res["x"], ref["x"])
  np.testing.assert_array_equal(res["trace"], ref["trace"])


@pytest.mark.parametrize("result_slots", [1, 3, 8])
def test_results_are_computed_in_full_buffers(method, reference, result_slots):
  """Finished examples wait in the result buffer: one result call per full buffer plus the tail."""
  res, stats = cfjax.explain(method, X, T, key=jax.random.key(0), num_slots=4, steps_per_call=2,
                              result_slots=result_slots, progress=False, return_stats=True)
  assert stats["result_calls"] == -(-N // stats["result_slots"])
  assert stats["num_done"] == N
  for k in ("id", "x", "trace"):
    np.testing.assert_array_equal(res[k], reference[0][k])


def test_engine_compiles_once_across_runs(method):
  eng = engine.Engine(method, num_slots=4, steps_per_call=2)
  for seed in range(2):
    eng.run(engine.iterate_examples(X, T), key=jax.random.key(seed), progress=False)
  assert eng.trace_counts == {"init": 1, "advance": 1, "stash": 1, "result": 1}


def test_steps_per_call_defaults_to_the_methods_and_stops_at_max_steps(method):
  """A method declares its own steps per call (diffusion methods 1); more than max_steps is pointless."""
  assert engine.Engine(method, num_slots=2).steps_per_call == min(method.steps_per_call, method.max_steps)
  assert engine.Engine(method._replace(steps_per_call=1), num_slots=2).steps_per_call == 1
  assert engine.Engine(method, num_slots=2, steps_per_call=3).steps_per_call == 3
  assert engine.Engine(method._replace(max_steps=2), num_slots=2, steps_per_call=4).steps_per_call == 2


def test_engines_of_one_program_share_its_executables(method, reference):
  """Another engine for the same program (other parameter values, same structure and shapes)
  runs the executables the first one compiled; a different structure gets its own."""
  import jax.numpy as jnp
  from cfjax.engine import runner
  executables = lambda: {id(e) for e in runner._PROGRAMS.values()}  # noqa: E731
  before = executables()
  twice = method._replace(params={"scale": jnp.float32(0.02)})
  res = cfjax.explain(twice, X, T, key=jax.random.key(0), num_slots=4, steps_per_call=1, progress=False)
  assert executables() == before
  np.testing.assert_allclose(res["x"] - X, 2 * (reference[0]["x"] - X), rtol=1e-5, atol=1e-6)
  other = method._replace(params={"scale": jnp.float32(0.01), "unused": jnp.zeros(3)})
  res = cfjax.explain(other, X, T, key=jax.random.key(0), num_slots=4, steps_per_call=1, progress=False)
  assert executables() - before
  np.testing.assert_array_equal(res["x"], reference[0]["x"])


def test_resume_skips_finished(tmp_path, method, reference):
  out = tmp_path / "run"
  first = cfjax.explain(method, X[:5], T[:5], key=jax.random.key(0), num_slots=4, out_dir=out,
                         progress=False)
  assert len(first["id"]) == 5
  res, stats = cfjax.explain(method, X, T, key=jax.random.key(0), num_slots=4, out_dir=out,
                              progress=False, return_stats=True)
  assert stats["num_done"] == N - 5
  np.testing.assert_array_equal(res["x"], reference[0]["x"])


def test_a_different_run_in_the_same_directory_is_refused(tmp_path, method):
  out = tmp_path / "run"
  cfjax.explain(method, X[:3], T[:3], key=jax.random.key(0), out_dir=out, progress=False)
  with pytest.raises(CfjaxInputError, match="different run"):
    cfjax.explain(method, X[:3], T[:3], key=jax.random.key(1), out_dir=out, progress=False)


def test_sigkill_loses_nothing_and_repeats_nothing(tmp_path, reference):
  out = tmp_path / "killed"
  script = Path(__file__).parent / "toy_method.py"
  env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
  proc = subprocess.Popen([sys.executable, str(script), str(out), str(N), "0.05"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.time() + 120
  shards = out / "shards"
  while time.time() < deadline:
    if shards.is_dir() and len(list(shards.glob("p0-*.npz"))) >= 2:
      break
    if proc.poll() is not None:
      pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  partial = pipeline.read_results(out)
  assert 0 < len(partial["id"]) < N
  done = subprocess.run([sys.executable, str(script), str(out), str(N)], env=env,
                        capture_output=True, timeout=300)
  assert done.returncode == 0, done.stderr.decode()[-2000:]
  res = pipeline.read_results(out)
  np.testing.assert_array_equal(res["id"], np.arange(N))  # each id exactly once
  np.testing.assert_array_equal(res["x"], reference[0]["x"])


def test_bad_inputs_fail_before_compiling(method):
  key = jax.random.key(0)
  with pytest.raises(CfjaxInputError, match="rank 4"):
    cfjax.explain(method, X[0], T[:1], key=key, progress=False)
  with pytest.raises(CfjaxInputError, match=r"\[0, 255\]|divide by 255"):
    cfjax.explain(method, X * 255, T, key=key, progress=False)
  with pytest.raises(CfjaxInputError, match="uint8"):
    cfjax.explain(method, (X * 255).astype(np.uint8), T, key=key, progress=False)
  bad = X.copy()
  bad[3, 0, 0, 0] = np.nan
  with pytest.raises(CfjaxInputError, match=r"NaN.*\[3\]"):
    cfjax.explain(method, bad, T, key=key, progress=False)
  with pytest.raises(CfjaxInputError, match="empty"):
    cfjax.explain(method, X[:0], T[:0], key=key, progress=False)
  with pytest.raises(CfjaxInputError, match="integer class targets"):
    cfjax.explain(method, X, T.astype(np.float32), key=key, progress=False)
  with pytest.raises(CfjaxInputError, match="unique"):
    cfjax.explain(method, X[:2], T[:2], ids=[1, 1], key=key, progress=False)


def test_two_processes_with_jax_distributed_split_the_work(tmp_path, reference):
  import socket
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  out = tmp_path / "dist"
  script = Path(__file__).parent / "toy_method.py"
  env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent), JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, str(script), str(out), str(N), "0", str(i), "2", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-2000:]
  # Each process wrote its own share (ids i with i % 2 == process index) ...
  for i in range(2):
    shard_ids = np.concatenate([np.load(f)["id"] for f in sorted((out / "shards").glob(f"p{i}-*.npz"))])
    assert set(shard_ids.tolist()) == {j for j in range(N) if j % 2 == i}
  # ... and together they equal the single-process run exactly.
  res = pipeline.read_results(out)
  np.testing.assert_array_equal(res["id"], np.arange(N))
  np.testing.assert_array_equal(res["x"], reference[0]["x"])


def test_only_refilled_slots_are_initialised(method, reference):
  """Initialisation runs on compact batches of the refilled examples: with one example per init
  call there is exactly one call per example, and the results are those of any other batching."""
  res, stats = cfjax.explain(method, X, T, key=jax.random.key(0), num_slots=4, steps_per_call=1,
                             init_slots=1, devices=jax.local_devices()[:1], progress=False,
                             return_stats=True)
  assert stats["init_calls"] == N and stats["init_slots"] == 1
  np.testing.assert_array_equal(res["x"], reference[0]["x"])
  res3, stats3 = cfjax.explain(method, X, T, key=jax.random.key(0), num_slots=4, steps_per_call=1,
                               init_slots=3, devices=jax.local_devices()[:1], progress=False,
                               return_stats=True)
  assert stats3["init_calls"] < N
  np.testing.assert_array_equal(res3["trace"], reference[0]["trace"])


def test_results_stream_to_the_callback(tmp_path, method, reference):
  """Every finished batch reaches on_result once, after it is written; resumed runs stream only
  what they compute."""
  seen = []
  out = tmp_path / "run"

  def on_result(batch):
    # Written before the callback sees it: the stored shards already hold this batch.
    assert set(batch["id"].tolist()) <= set(pipeline.read_results(out)["id"].tolist())
    seen.append(batch)

  res = cfjax.explain(method, X[:6], T[:6], key=jax.random.key(0), num_slots=4, result_slots=2,
                      out_dir=out, progress=False, on_result=on_result)
  ids = np.concatenate([b["id"] for b in seen])
  assert sorted(ids.tolist()) == list(range(6)) and len(seen) == 3
  stored = pipeline.read_results(out)
  np.testing.assert_array_equal(stored["id"], ids[np.argsort(ids)])
  seen.clear()
  res = cfjax.explain(method, X, T, key=jax.random.key(0), num_slots=4, out_dir=out, progress=False,
                      on_result=on_result)
  assert sorted(np.concatenate([b["id"] for b in seen]).tolist()) == list(range(6, N))
  np.testing.assert_array_equal(res["x"], reference[0]["x"])


def test_a_result_without_the_required_keys_is_refused(method):
  broken = method._replace(result=lambda p, s: {"x": s["x"], "iterations": s["it"]})
  with pytest.raises(CfjaxInputError, match="breaks the result contract.*counterfactual"):
    cfjax.explain(broken, X[:2], T[:2], key=jax.random.key(0), progress=False)
