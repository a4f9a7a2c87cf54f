"""A cheap method for engine tests: example i runs ``target`` iterations of random steps.

Its result is a pure function of (key, id, target), so any change in batching, slot position or
device count that altered the random numbers an example sees would show up exactly.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from cfjax.methods import Method
from cfjax.methods.models import TargetSpec, image_validator


def countdown(max_steps: int = 50, sleep: float = 0.0) -> Method:
  def init(params, x, target, key):
    return {"x": x, "n": target, "it": jnp.int32(0), "key": key, "trace": jnp.float32(0)}

  def step(params, s):
    z = jax.random.normal(jax.random.fold_in(s["key"], s["it"]), s["x"].shape)
    go = s["it"] < s["n"]
    if sleep:  # a slow step, so that a run can be killed half-way
      jax.debug.callback(lambda: time.sleep(sleep))
    x = jnp.where(go, s["x"] + params["scale"] * z, s["x"])
    return {**s, "x": x, "it": s["it"] + go.astype(jnp.int32),
            "trace": s["trace"] + jnp.where(go, z.sum(), 0.0)}

  def done(s):
    return s["it"] >= jnp.minimum(s["n"], max_steps)

  def result(params, s):
    success = s["it"] >= s["n"]
    return {"x": s["x"], "iterations": s["it"], "trace": s["trace"], "counterfactual": s["x"],
            "prediction": s["trace"], "success": success, "status": (~success).astype(jnp.int32)}

  params = {"scale": jnp.float32(0.01)}
  # Targets are iteration counts, checked like class indices of an 8-class output.
  validate = image_validator((8, 8, 3), TargetSpec("classification", (8,), 8))
  return Method(init, step, done, result, params, max_steps, "countdown", {"max_steps": max_steps},
                validate)


if __name__ == "__main__":
  # python tests/toy_method.py OUT N [SLEEP [PROCESS_ID NUM_PROCESSES PORT]]: a resumable run,
  # optionally slow (the SIGKILL test) or one process of a jax.distributed run on localhost.
  import os
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  import cfjax
  out, n = sys.argv[1], int(sys.argv[2])
  if len(sys.argv) > 4:
    pid, nproc, port = (int(a) for a in sys.argv[4:7])
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                               process_id=pid)
    assert jax.process_index() == pid and jax.process_count() == nproc
  x = np.linspace(0, 1, n * 8 * 8 * 3, dtype=np.float32).reshape(n, 8, 8, 3)
  targets = (np.arange(n) % 7 + 1).astype(np.int32)
  m = countdown(sleep=float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
  cfjax.explain(m, x, targets, key=jax.random.key(0), num_slots=4, steps_per_call=1, out_dir=out,
                 progress=False)
  print("finished", flush=True)
