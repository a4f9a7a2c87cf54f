"""cfjax.metrics: the protocol, the drivers, validity, attributes and similarity on known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax import CfjaxInputError, metrics
from cfjax.metrics.base import kahan_add, kahan_init, kahan_value
from cfjax.pipeline.writer import ResultWriter


def _images(n, seed=0, shape=(6, 6, 3)):
  return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def _split(batch, sizes):
  """The same data as a list of batches of the given sizes."""
  out, start = [], 0
  for s in sizes:
    out.append({k: v[start:start + s] for k, v in batch.items()})
    start += s
  assert start == len(next(iter(batch.values())))
  return out


def _embed(x):
  return x.reshape(x.shape[0], -1)[:, :8]


def _oracle(x):
  return jax.nn.sigmoid(10 * (x.reshape(x.shape[0], -1)[:, :5] - 0.5))


def _classifier(x):
  w = jnp.linspace(-1.0, 1.0, x[0].size, dtype=jnp.float32).reshape(x.shape[1:])
  s = jnp.sum(x * w, axis=(1, 2, 3))
  return jnp.stack([-s, s, 0.5 * s], axis=1)


# -- protocol and drivers ------------------------------------------------------------------
def test_kahan_sum_does_not_drift():
  xs = jnp.full((200_000,), 0.1, jnp.float32)
  naive = jax.lax.scan(lambda s, x: (s + x, None), jnp.float32(0), xs)[0]
  comp = jax.lax.scan(lambda a, x: (kahan_add(a, x), None), kahan_init(), xs)[0]
  exact = 200_000 * float(np.float32(0.1))
  assert abs(float(naive) - exact) > 1.0  # plain float32 drifts by whole units here ...
  assert abs(kahan_value(comp) - exact) < 1e-2  # ... the compensated sum does not


def _all_metrics():
  corr = np.array([1.0, 0.3, -0.2, 0.0, 0.5])
  return [metrics.success_rate(), metrics.flip_rate(_classifier, to_target=True),
          metrics.oracle_mae(tolerance=0.3), metrics.proximity(), metrics.mnac(_oracle),
          metrics.cd(corr, 0, _oracle), metrics.fva(_embed), metrics.s3(_embed),
          metrics.cout(_classifier, num_steps=9), metrics.fid(_embed)]


def _all_batch(n=16):
  x = _images(n, 1)
  ce = np.clip(x + np.random.default_rng(2).normal(0, 0.3, x.shape).astype(np.float32), 0, 1)
  rng = np.random.default_rng(3)
  return {"original": x, "counterfactual": ce, "success": rng.random(n) < 0.7,
          "prediction": rng.random(n).astype(np.float32), "target": rng.integers(0, 3, n)}


def test_streaming_equals_one_shot():
  batch = _all_batch()
  one = metrics.compute(_all_metrics(), batch)
  streamed = metrics.compute(_all_metrics(), _split(batch, [3, 5, 1, 7]))
  unpadded = metrics.compute(_all_metrics(), _split(batch, [3, 5, 1, 7]), pad=False)
  assert set(one) == set(streamed)
  for k in one:
    np.testing.assert_allclose(streamed[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(unpadded[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_padding_bounds_the_number_of_traces():
  traces = []

  def per_example(b):
    traces.append(b["v"].shape)
    return {"v": b["v"]}

  m = metrics.mean_metric("v", per_example, requires=("v",), outputs=("v",))
  v = np.arange(13, dtype=np.float32)
  r = metrics.compute(m, _split({"v": v}, [3, 4, 4, 2]))
  assert r["v"] == pytest.approx(6.0)
  assert len(traces) == 2  # sizes 3 and 4 both run as 4; 2 runs as 2


def test_evaluator_is_an_on_result_callback_joining_inputs_by_id():
  x = _images(6)
  ce = np.clip(x + np.float32(0.1), 0, 1)
  ev = metrics.Evaluator([metrics.proximity(), metrics.success_rate()], data={"original": x})
  for ids in ([4, 0], [5, 1, 3], [2]):  # the engine returns finished examples in any order
    ids = np.array(ids)
    ev({"id": ids, "counterfactual": ce[ids], "success": ids % 2 == 0})
  direct = metrics.compute(metrics.proximity(), {"original": x, "counterfactual": ce})
  assert ev.result()["mae"] == pytest.approx(direct["mae"], rel=1e-6)
  assert ev.result()["success_rate"] == pytest.approx(0.5)


def test_evaluate_results_reads_dicts_npz_and_run_directories(tmp_path):
  x = _images(5)
  res = {"id": np.arange(5), "counterfactual": x[::-1].copy(), "success": np.ones(5, bool),
         "trajectory": np.zeros((5, 3))}
  expected = metrics.compute(metrics.proximity(), {"original": x, "counterfactual": x[::-1]})
  ms = [metrics.proximity()]
  w = ResultWriter(tmp_path / "run", settings={"m": 1})
  w.write({k: v[:2] for k, v in res.items()})
  w.write({k: v[2:] for k, v in res.items()})
  np.savez(tmp_path / "results.npz", **res, original=x, image_id=np.arange(5))
  for source, data in ((res, {"original": x}), (tmp_path / "run", {"original": x}),
                       (tmp_path / "results.npz", None), (tmp_path, None)):
    got = metrics.evaluate_results(source, ms, data=data, batch_size=2)
    assert got["l1"] == pytest.approx(expected["l1"], rel=1e-6)


# -- validity -------------------------------------------------------------------------------
def test_validity_known_answers():
  logits0 = np.array([[2, 0, 0], [2, 0, 0], [0, 3, 0], [0, 0, 1]], np.float32)
  logits1 = np.array([[0, 2, 0], [2, 0, 0], [0, 0, 3], [0, 0, 1]], np.float32)
  b = {"original_prediction": logits0, "prediction": logits1, "target": np.array([1, 1, 2, 0])}
  assert metrics.compute(metrics.flip_rate(to_target=True), b) == {"flip_rate": 0.5, "target_rate": 0.5}
  binary = {"original_prediction": np.array([-1.0, 1.0, 2.0], np.float32),
            "prediction": np.array([[1.0], [2.0], [-0.5]], np.float32)}
  assert metrics.compute(metrics.flip_rate(), binary)["flip_rate"] == pytest.approx(2 / 3)
  reg = {"prediction": np.array([0.1, 0.5, 0.9], np.float32), "target": np.array([0.2, 0.2, 0.2], np.float32)}
  r = metrics.compute(metrics.oracle_mae(tolerance=0.15), reg)
  assert r["oracle_mae"] == pytest.approx((0.1 + 0.3 + 0.7) / 3, rel=1e-6)
  assert r["oracle_within_tolerance"] == pytest.approx(1 / 3)
  x = np.zeros((2, 2, 2, 1), np.float32)
  ce = x.copy()
  ce[0, 0, 0, 0] = 0.3
  ce[0, 1, 1, 0] = 0.4
  p = metrics.compute(metrics.proximity(), {"original": x, "counterfactual": ce})
  assert p["l1"] == pytest.approx(0.7 / 2) and p["l2"] == pytest.approx(0.5 / 2)
  assert p["mae"] == pytest.approx(0.7 / 8)


def test_oracle_regressor_and_classifier_functions():
  x = _images(4)
  ce = np.clip(x + np.float32(0.2), 0, 1)
  reg = lambda im: jnp.mean(im, axis=(1, 2, 3))  # noqa: E731
  t = np.full(4, 0.5, np.float32)
  r = metrics.compute(metrics.oracle_mae(reg), {"counterfactual": ce, "target": t})
  assert r["oracle_mae"] == pytest.approx(np.abs(ce.mean((1, 2, 3)) - 0.5).mean(), rel=1e-5)
  f = metrics.compute(metrics.flip_rate(_classifier), {"original": x, "counterfactual": ce})
  c0, c1 = np.argmax(_classifier(x), 1), np.argmax(_classifier(ce), 1)
  assert f["flip_rate"] == pytest.approx(np.mean(c0 != c1))


# -- attributes -----------------------------------------------------------------------------
def _ace_cd(p, q, query, corrs):
  """ACE's compute_CorrMetric + CD, transcribed with numpy."""
  deltas = (q > 0.5).astype(float) - (p > 0.5).astype(float)
  ours = np.zeros(p.shape[1])
  for i in range(p.shape[1]):
    with np.errstate(invalid="ignore", divide="ignore"):
      cc = np.corrcoef(deltas[:, i], deltas[:, query])
    ours[i] = 0 if np.any(np.isnan(cc)) else cc[0, 1]
  return np.sum(np.abs(ours - corrs))


def test_mnac_and_cd_match_ace():
  rng = np.random.default_rng(0)
  p = rng.random((40, 6)).astype(np.float32)
  q = np.where(rng.random((40, 6)) < 0.3, 1 - p, p).astype(np.float32)
  q[:, 5] = p[:, 5]  # a never-changed attribute: correlation 0, as ACE sets NaN
  b = {"attributes_original": p, "attributes_counterfactual": q}
  labels = rng.random((100, 6)) < 0.5
  corrs = metrics.attribute_correlations(labels, 2)
  expect = np.array([np.corrcoef(labels[:, 2], labels[:, i])[0, 1] for i in range(6)])
  np.testing.assert_allclose(corrs, expect, atol=1e-12)
  r = metrics.compute([metrics.mnac(), metrics.cd(corrs, 2)], _split(b, [10, 25, 5]))
  changed = ((p > 0.5) != (q > 0.5)).sum(1)
  assert r["mnac"] == pytest.approx(changed.mean()) and r["mnac_std"] == pytest.approx(changed.std())
  assert r["cd"] == pytest.approx(_ace_cd(p, q, 2, corrs), abs=1e-6)
  ex = metrics.compute(metrics.mnac(exclude=[2]), b)["mnac"]
  assert ex == pytest.approx(changed.mean() - ((p[:, 2] > 0.5) != (q[:, 2] > 0.5)).mean())


# -- similarity -----------------------------------------------------------------------------
def test_cosine_fva_s3_known_answers():
  e = lambda x: x.reshape(x.shape[0], -1)  # noqa: E731
  a = np.array([[1, 0], [1, 0], [1, 1]], np.float32).reshape(3, 1, 1, 2)
  b = np.array([[1, 0], [0, 1], [1, 0]], np.float32).reshape(3, 1, 1, 2)
  batch = {"original": a, "counterfactual": b}
  cos = np.array([1.0, 0.0, np.sqrt(0.5)])
  r = metrics.compute([metrics.fva(e), metrics.s3(e)], batch)
  assert r["fva"] == pytest.approx(2 / 3) and r["fs"] == pytest.approx(cos.mean(), rel=1e-6)
  assert r["s3"] == pytest.approx(cos.mean(), rel=1e-6) and r["s3_std"] == pytest.approx(cos.std(), abs=1e-6)


def test_diversity_known_answers():
  vals = np.array([[0.0, 0.2, 0.6], [0.5, 0.5, 0.5]], np.float32)
  ces = np.broadcast_to(vals[:, :, None, None, None], (2, 3, 2, 2, 1)).copy()
  # image 0: pixel distances |0-0.2|, |0-0.6|, |0.2-0.6| over 4 pixels; image 1: identical CEs
  l1 = metrics.compute(metrics.diversity(distance="l1"), {"counterfactuals": ces})["diversity"]
  assert l1 == pytest.approx((4 * (0.2 + 0.6 + 0.4) / 3 + 0) / 2, rel=1e-6)
  l2 = metrics.compute(metrics.diversity(), {"counterfactuals": ces})["diversity"]
  assert l2 == pytest.approx((2 * (0.2 + 0.6 + 0.4) / 3) / 2, rel=1e-6)
  mean_feat = lambda x: jnp.mean(x, axis=(1, 2))  # noqa: E731  (N, C) features
  f = metrics.compute(metrics.diversity(mean_feat, distance="l1"), {"counterfactuals": ces})
  assert f["diversity"] == pytest.approx((0.2 + 0.6 + 0.4) / 3 / 2, rel=1e-6)


# -- bad input: clear errors before anything compiles ---------------------------------------
def test_bad_input_is_refused_before_tracing():
  x = _images(4)
  calls = []

  def wrong_embedding(im):
    calls.append(type(im))
    return im.reshape(im.shape[0], -1, 3)  # (N, HW, 3): not (N, D)

  ev = metrics.Evaluator([metrics.s3(wrong_embedding)])
  with pytest.raises(CfjaxInputError, match=r"embedding must map .* \(N, D\)"):
    ev({"original": x, "counterfactual": x})
  assert calls and all(issubclass(c, jax.core.Tracer) for c in calls)  # shape-evaluated, never run
  with pytest.raises(CfjaxInputError, match="same leading"):
    metrics.compute(metrics.proximity(), {"original": x, "counterfactual": x[:3]})
  with pytest.raises(CfjaxInputError, match="needs batch keys counterfactual"):
    metrics.compute(metrics.proximity(), {"original": x})
  with pytest.raises(CfjaxInputError, match="must lie in"):
    metrics.compute(metrics.proximity(), {"original": x * 2 - 1, "counterfactual": x})
  with pytest.raises(CfjaxInputError, match="same shape"):
    metrics.compute(metrics.proximity(), {"original": x, "counterfactual": x[:, :5]})
  with pytest.raises(CfjaxInputError, match="saw no examples"):
    metrics.compute(metrics.success_rate(), {"success": np.ones(2, bool), "valid": np.zeros(2, bool)})
  p = np.full((4, 3), 0.7, np.float32)
  with pytest.raises(CfjaxInputError, match="correlations have 5"):
    metrics.compute(metrics.cd(np.zeros(5), 0), {"attributes_original": p, "attributes_counterfactual": p})
  with pytest.raises(CfjaxInputError, match="exclude holds"):
    metrics.compute(metrics.mnac(exclude=[3]), {"attributes_original": p, "attributes_counterfactual": p})
  with pytest.raises(CfjaxInputError, match="K >= 2"):
    metrics.compute(metrics.diversity(), {"counterfactuals": x[:, None]})
  with pytest.raises(CfjaxInputError, match="unique"):
    metrics.Evaluator([metrics.proximity(), metrics.proximity()])
  with pytest.raises(CfjaxInputError, match="reports"):
    twin = metrics.cosine_similarity(_embed, name="s3")._replace(name="other")
    metrics.compute([metrics.s3(_embed), twin], {"original": x, "counterfactual": x})


def test_evaluator_streams_a_real_explain_run():
  import sys
  from pathlib import Path
  sys.path.insert(0, str(Path(__file__).parent))
  from toy_method import countdown

  import cfjax
  n = 10
  x = np.linspace(0.2, 0.8, n * 8 * 8 * 3, dtype=np.float32).reshape(n, 8, 8, 3)
  targets = (np.arange(n) % 7 + 1).astype(np.int32)
  ms = [metrics.success_rate(), metrics.proximity()]
  ev = metrics.Evaluator(ms, data={"original": x})
  res = cfjax.explain(countdown(), x, targets, key=jax.random.key(0), num_slots=4, steps_per_call=1,
                      progress=False, on_result=ev)
  streamed = ev.result()
  assert ev.num_examples == n
  after = metrics.evaluate_results(res, ms, data={"original": x})
  for k in ("success_rate", "l1", "l2", "mae"):
    assert streamed[k] == pytest.approx(after[k], rel=1e-5)
  assert streamed["l2"] > 0


def test_metrics_by_name():
  assert metrics.make("success_rate").name == "success_rate"
  assert {"fid", "sfid", "cout", "mnac", "cd", "fva", "s3", "diversity"} <= set(metrics.known_metrics())
  with pytest.raises(CfjaxInputError, match="Did you mean 'proximity'"):
    metrics.make("proximty")


@pytest.mark.parametrize("module", ["", "base", "evaluate", "validity", "attributes", "similarity",
                                    "transition", "realism", "testbeds", "registry"])
def test_docstring_examples_run(module):
  import doctest
  import importlib
  mod = importlib.import_module(f"cfjax.metrics.{module}".rstrip("."))
  result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
  assert result.failed == 0 and result.attempted > 0
