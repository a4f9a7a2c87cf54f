"""UNet layer implementations side by side: the earlier GroupNorm and attention against cfjax's.

Two layers of the ADM UNet (``cfjax/nets/layers.py``, used by ``cfjax/nets/unet.py``) are
written for XLA:CPU, after an op-level profile of the ACE iteration:

* GroupNorm: ``nnx.GroupNorm`` reshapes activations to (..., groups, channels per group), whose
  minor dimension of 1-2 channels XLA:CPU vectorises poorly; :func:`cfjax.nets.layers.group_norm`
  takes per-channel sums and folds the normalisation and affine maps into one per-channel
  ``(x - mean) * a + b``.
* Attention: autodiff of ``softmax(q k^T) v`` forms ``sum(dw * w)`` over the tokens x tokens
  weights, which XLA:CPU fused with a contraction into a slow loop;
  :func:`cfjax.nets.layers.attention` has a hand-written VJP with the row sums ``sum(do * o)``.

This script swaps the earlier implementations back in (defined below, as they were) and times the
variants in one process, alternating calls, on the program that matters: the ACE advance (one
attack iteration: gradient through the 5-step chain, small32 UNet with the fixtures' weights,
bundled shapes classifier) at 8 slots on one device and 16 slots on two. It also times each layer
alone (forward + VJP at small32's shapes) and records how far each variant's outputs are from the
current one's. JSON and plot: ``benchmarks/results/bench_layers[_quick].{json,png}``.

Usage:
  python benchmarks/bench_layers.py [--quick] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets XLA_FLAGS before jax is imported)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cfjax.nets import unet as unet_module  # noqa: E402

VARIANTS = {"earlier": ("nnx", "autodiff"), "group_norm": ("cfjax", "autodiff"),
            "attention": ("nnx", "cfjax"), "current": ("cfjax", "cfjax")}


def _attention_autodiff(q, k, v):
  """The earlier attention core (autodiff gradient)."""
  w = jax.nn.softmax(jnp.einsum("bhtc,bhsc->bhts", q, k).astype(jnp.float32), axis=-1)
  return jnp.einsum("bhts,bhsc->bhtc", w.astype(v.dtype), v)


def _group_norm_nnx(self, x, emb_scale=None, emb_shift=None):
  """The earlier GroupNorm32: ``nnx.GroupNorm`` then the scale-shift."""
  y = self.norm(x.astype(jnp.float32))
  if emb_scale is not None:
    y = y * (1 + emb_scale[:, None, None].astype(jnp.float32)) + emb_shift[:, None, None].astype(jnp.float32)
  return y.astype(x.dtype)


@contextlib.contextmanager
def variant(name: str):
  """Traces the UNet with the named layer implementations (only while tracing matters)."""
  gn, att = VARIANTS[name]
  saved = unet_module.GroupNorm32.__call__, unet_module.attention
  if gn == "nnx":
    unet_module.GroupNorm32.__call__ = _group_norm_nnx
  if att == "autodiff":
    unet_module.attention = _attention_autodiff
  try:
    yield
  finally:
    unet_module.GroupNorm32.__call__, unet_module.attention = saved


def ace_programs(names, slots: int, devices: int, predictor, net, tau: int):
  """One compiled ACE advance program per variant, with its parameters and a started state."""
  import bench_ace
  from cfjax.engine import Engine
  x, t = bench_ace.shapes_data(slots, 32, predictor)
  progs = {}
  for name in names:
    with variant(name):
      eng = Engine(bench_ace.ace_method(predictor, net, tau=tau, iterations=50), num_slots=slots,
                   steps_per_call=1, devices=jax.devices()[:devices])
      state, mask = common.filled_slots(eng, x, t, jax.random.key(0))
      t0 = time.perf_counter()
      compiled = eng._advance.lower(eng.params, state, mask).compile()
      compile_s = time.perf_counter() - t0
    progs[name] = {"run": compiled, "params": eng.params, "state": state, "mask": mask, "compile_s": compile_s}
    common.log(f"  compiled {name} ({slots} slots, {devices} device(s)) in {compile_s:.1f} s")
  return progs


def time_alternating(progs: dict, repeats: int) -> dict:
  """Warm-up, then ``repeats`` rounds calling each variant once per round (state carried on)."""
  first = {}
  for name, p in progs.items():
    state, _ = common.block(p["run"](p["params"], p["state"], p["mask"]))
    first[name] = [np.asarray(a) for a in jax.tree.leaves(state)  # copies: the state is donated below
                   if jnp.issubdtype(a.dtype, jnp.floating) and a.size]
    p["state"] = state
  times = {name: [] for name in progs}
  for _ in range(repeats):
    for name, p in progs.items():
      t0 = time.perf_counter()
      p["state"], _ = common.block(p["run"](p["params"], p["state"], p["mask"]))
      times[name].append(time.perf_counter() - t0)
  ref = first["current"]
  rows = {}
  for name, ts in times.items():
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(first[name], ref))
    rows[name] = {"seconds_per_iteration_median": statistics.median(ts), "seconds_per_iteration_min": min(ts),
                  "times": ts, "compile_s": progs[name]["compile_s"],
                  "max_abs_state_difference_vs_current_after_one_iteration": diff}
  return rows


def layer_times(repeats: int) -> list[dict]:
  """Each layer alone, forward + VJP, at small32's shapes (batch 8), both implementations."""
  from flax import nnx
  rows = []
  key = jax.random.key(1)
  for shape in [(8, 32, 32, 64), (8, 16, 16, 64), (8, 32, 32, 96)]:
    c = shape[-1]
    gn = unet_module.GroupNorm32(c, rngs=nnx.Rngs(0))
    x, ct = jax.random.normal(key, shape), jax.random.normal(jax.random.key(2), shape)
    for impl, call in [("nnx", _group_norm_nnx), ("cfjax", unet_module.GroupNorm32.__call__)]:
      f = jax.jit(lambda x, ct, call=call: jax.vjp(lambda x: call(gn, x), x)[1](ct)[0])
      rows.append({"layer": "group_norm", "shape": shape, "impl": impl,
                   "seconds_forward_vjp": common.time_calls(lambda: f(x, ct), repeats=repeats)["min_s"]})
  for shape in [(8, 2, 256, 32), (8, 2, 64, 32)]:
    q, k, v, do = (jax.random.normal(jax.random.key(i), shape) / math.sqrt(math.sqrt(shape[-1])) for i in range(4))
    for impl, att in [("autodiff", _attention_autodiff), ("cfjax", unet_module.attention)]:
      f = jax.jit(lambda q, k, v, do, att=att: jax.vjp(att, q, k, v)[1](do))
      rows.append({"layer": "attention", "shape": shape, "impl": impl,
                   "seconds_forward_vjp": common.time_calls(lambda: f(q, k, v, do), repeats=repeats)["min_s"]})
  return rows


def plot(res: dict, path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cases = list(res["ace_advance"])
  fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 3.6), squeeze=False)
  for ax, case in zip(axes[0], cases):
    rows = res["ace_advance"][case]
    names = list(rows)
    vals = [rows[n]["seconds_per_iteration_median"] for n in names]
    ax.bar(names, vals, color=["0.6" if n == "earlier" else "C0" for n in names])
    for i, v in enumerate(vals):
      ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    if case == "16_slots_2_devices":  # the official code's batch 16 on both cores (bench_ace.PYTORCH)
      ax.axhline(0.95, color="C3", ls="--", lw=1, label="official PyTorch ACE, batch 16")
      ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"ACE iteration, small32, {case}", fontsize=9)
    ax.set_ylabel("seconds per iteration (median)")
    ax.tick_params(axis="x", labelsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="tau 1, 2 slots, 2 repeats")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out-dir", default=None)
  p.add_argument("--tag", default="")
  p.add_argument("--note", default="")
  args = p.parse_args(argv)
  import cfjax
  json_path, png_path = common.output_paths("bench_layers", args.quick, args.out_dir, args.tag)
  t_start = time.perf_counter()
  predictor = cfjax.load_predictor("shapes_classifier")
  net, _ = common.unet("small32", fixture=common.FIXTURE_UNET)
  tau, repeats = (1, 2) if args.quick else (5, args.repeats)
  cases = [(2, 1, list(VARIANTS)), (2, 2, ["earlier", "current"])] if args.quick else \
      [(8, 1, list(VARIANTS)), (16, 2, ["earlier", "current"])]
  res = {"benchmark": "bench_layers", "quick": args.quick, "note": args.note, "machine": common.machine_info(),
         "load_start": common.machine_load(), "settings": {"tau": tau, "repeats": repeats, "variants": VARIANTS},
         "ace_advance": {}}
  for slots, devices, names in cases:
    common.log(f"ACE advance, {slots} slots, {devices} device(s): {', '.join(names)}")
    rows = time_alternating(ace_programs(names, slots, devices, predictor, net, tau), repeats)
    res["ace_advance"][f"{slots}_slots_{devices}_devices"] = rows
  common.log("layers alone")
  res["layers"] = layer_times(repeats)
  res["load_end"] = common.machine_load()
  res["wall_seconds"] = time.perf_counter() - t_start
  common.write_json(json_path, common.rounded(res))
  plot(res, png_path)
  common.log(f"wrote {json_path} and {png_path}")
  return res


if __name__ == "__main__":
  main()
