"""ADM UNet speed on this machine: compile time, images/s, achieved FLOP/s, chain memory.

For the small 32x32 config (``small32``, the fixtures' model) and the CelebA-128 config
(``celeba128``, random weights with non-zero output convs):

* compile time, forward and forward+backward (gradient w.r.t. the input) images/s at several
  batch sizes, on one device and with the batch split over two forced host devices;
* achieved FLOP/s = XLA's cost-analysis FLOPs / measured time, as a fraction of the measured
  dense float32 matmul FLOP/s (2048^3 on 1 and 2 devices);
* peak temporary memory (``memory_analysis().temp_size_in_bytes``) and time of the gradient
  through a tau-step DDPM chain (tau = 5, 10, 20), "rolled" (``lax.scan`` + ``jax.checkpoint``)
  versus "unrolled".

Writes ``benchmarks/results/bench_unet[_quick].{json,png}``. Never used by tests.

Usage:
  python benchmarks/bench_unet.py --quick      # tiny sizes, about a minute
  python benchmarks/bench_unet.py              # full
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets XLA_FLAGS before jax is imported)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

FULL = {"small32": (1, 4, 16, 64), "celeba128": (1, 4)}
QUICK = {"small32": (1, 4), "celeba128": (1,)}
CHAIN_TAUS = {"full": (5, 10, 20), "quick": (2, 4)}


def throughput(net, batches, *, repeats: int, min_seconds: float, peak: dict, modes) -> list[dict]:
  """Forward / forward+backward images/s per (batch, devices); FLOPs from the 1-device program."""
  size = net.config["image_size"]
  n_dev = len(jax.devices())
  rows = []

  def fwd(p, x, t):
    return net.apply(p, x, t)

  def fwdbwd(p, x, t):
    # Gradient w.r.t. the input image, as ACE's filter needs it.
    return jax.grad(lambda x: jnp.sum(net.apply(p, x, t) ** 2))(x)

  fns = {"forward": fwd, "forward_backward": fwdbwd}
  for b in batches:
    key = jax.random.key(b)
    x = jax.random.uniform(key, (b, size, size, 3), jnp.float32, -1.0, 1.0)
    t = jax.random.randint(jax.random.fold_in(key, 1), (b,), 0, 500, jnp.int32)
    for mode in modes:
      flops_per_image = None
      for nd in (1, n_dev) if (b % n_dev == 0 and n_dev > 1) else (1,):
        p = jax.device_put(net.params, common.replicated(nd))
        xs = jax.device_put(x, common.batch_sharding(nd))
        ts = jax.device_put(t, common.batch_sharding(nd))
        exe, st = common.compile_stats(jax.jit(fns[mode]), p, xs, ts)
        if nd == 1 and st.get("flops"):
          flops_per_image = st["flops"] / b
        tm = common.time_calls(lambda: exe(p, xs, ts), repeats=repeats, min_seconds=min_seconds)
        sec = tm["min_s"]
        row = {"config": net.config["image_size"], "batch": b, "devices": nd, "mode": mode,
               "compile_s": st["compile_s"], "lower_s": st["lower_s"], "seconds_per_call": sec,
               "median_seconds_per_call": tm["median_s"], "images_per_s": b / sec,
               "xla_flops_reported": st.get("flops"), "temp_bytes": st.get("temp_bytes")}
        if flops_per_image:
          achieved = flops_per_image * b / sec
          row.update(flops_per_image=flops_per_image, achieved_flops_per_s=achieved,
                     fraction_of_matmul_same_devices=achieved / peak[f"devices_{nd}"]["flops_per_s"],
                     fraction_of_matmul_machine=achieved / peak["machine_flops_per_s"])
        common.log(f"  {mode:17s} batch {b:3d} dev {nd}: compile {st['compile_s']:.1f}s, "
                   f"{b / sec:8.2f} img/s, {row.get('fraction_of_matmul_machine', float('nan')):.2f} of peak")
        rows.append(row)
  return rows


def chain_memory(net, taus, batch: int, *, time_it: bool) -> list[dict]:
  """Temp memory (and time) of d/dx sum(ddpm_chain(x)) for each tau, rolled vs unrolled."""
  from cfjax.diffusion import ddpm_chain, make_schedule
  size = net.config["image_size"]
  sched = make_schedule(500, "linear", "25")
  key = jax.random.key(7)
  x = jax.random.uniform(key, (batch, size, size, 3), jnp.float32, -1.0, 1.0)
  rows = []
  for tau in taus:
    noises = jax.random.normal(jax.random.fold_in(key, tau), (tau, batch, size, size, 3))
    for mode in ("unrolled", "rolled"):
      def loss(x, p, noises, mode=mode, tau=tau):
        model_fn = lambda h, t: net.apply(p, h, t)  # noqa: E731
        return jnp.sum(ddpm_chain(sched, model_fn, x, tau - 1, noises, mode=mode) ** 2)

      exe, st = common.compile_stats(jax.jit(jax.grad(loss)), x, net.params, noises)
      row = {"tau": tau, "mode": mode, "batch": batch, "compile_s": st["compile_s"],
             "temp_bytes": st.get("temp_bytes"), "temp_mib": (st.get("temp_bytes") or 0) / 2 ** 20,
             "flops": st.get("flops")}
      if time_it:
        tm = common.time_calls(lambda: exe(x, net.params, noises), repeats=2)
        row.update(seconds_per_call=tm["min_s"], seconds_per_unet_step=tm["min_s"] / tau)
      common.log(f"  chain tau {tau:2d} {mode:8s}: temp {row['temp_mib']:8.1f} MiB, "
                 f"compile {st['compile_s']:.1f}s, {row.get('seconds_per_call', float('nan')):.2f}s/call")
      rows.append(row)
  return rows


def plot(res: dict, path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
  ax = axes[0]
  for name, rows in res["throughput"].items():
    for mode, ls in (("forward", "-"), ("forward_backward", "--")):
      for nd, mk in ((1, "o"), (2, "s")):
        pts = sorted((r["batch"], r["images_per_s"]) for r in rows if r["mode"] == mode and r["devices"] == nd)
        if pts:
          ax.plot(*zip(*pts), ls=ls, marker=mk, label=f"{name} {mode} {nd} dev")
  ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="images / s", title="UNet throughput")
  ax.legend(fontsize=7)
  ax = axes[1]
  labels, vals, colors = [], [], []
  for name, rows in res["throughput"].items():
    for r in rows:
      if "fraction_of_matmul_machine" in r:
        labels.append(f"{name} {'F' if r['mode'] == 'forward' else 'FB'} b{r['batch']} d{r['devices']}")
        vals.append(r["fraction_of_matmul_machine"])
        colors.append("C0" if r["devices"] == 1 else "C1")
  ax.barh(range(len(vals)), vals, color=colors)
  ax.set_yticks(range(len(vals)), labels, fontsize=6)
  ax.set(xlabel="achieved FLOP/s / measured matmul FLOP/s (machine)",
         title=f"fraction of matmul peak ({res['matmul']['machine_flops_per_s'] / 1e9:.0f} GFLOP/s)")
  ax = axes[2]
  rows = res["chain_memory"]
  for mode, c in (("unrolled", "C3"), ("rolled", "C2")):
    pts = sorted((r["tau"], r["temp_mib"]) for r in rows if r["mode"] == mode)
    ax.plot(*zip(*pts), marker="o", color=c, label=f"{mode}: temp MiB")
  ax.set(xlabel="tau (UNet steps in the differentiated chain)", ylabel="temp memory (MiB)",
         title=f"grad through DDPM chain, small32, batch {rows[0]['batch']}")
  if "seconds_per_call" in rows[0]:
    ax2 = ax.twinx()
    for mode, c in (("unrolled", "C3"), ("rolled", "C2")):
      pts = sorted((r["tau"], r["seconds_per_call"]) for r in rows if r["mode"] == mode)
      ax2.plot(*zip(*pts), ls=":", marker="x", color=c, label=f"{mode}: s/call")
    ax2.set_ylabel("seconds per gradient call (dotted)")
    ax2.legend(fontsize=7, loc="center right")
  ax.legend(fontsize=7, loc="upper left")
  load = res["load_during"]
  fig.suptitle(f"cfjax UNet on {res['machine']['cpu_count']} CPU cores ({'quick' if res['quick'] else 'full'}); "
               f"other processes used {load['mean_other_cores_used']:.2f} cores on average "
               f"(max {load['max_other_cores_used']:.2f}; DDPM trainings running: up to {load['max_ddpm_trainings']})",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  print(f"wrote {path}")


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="tiny sizes (about a minute)")
  p.add_argument("--configs", nargs="+", default=["small32", "celeba128"], choices=sorted(FULL))
  p.add_argument("--chain-batch", type=int, default=None, help="batch of the chain benchmark")
  p.add_argument("--small-batches", type=int, nargs="+", default=None, help="override small32 batches")
  p.add_argument("--celeba-batches", type=int, nargs="+", default=None, help="override celeba128 batches")
  p.add_argument("--fixture", default=str(common.FIXTURE_UNET), help="small32 weights (.npz)")
  p.add_argument("--out-dir", default=None, help="default benchmarks/results")
  p.add_argument("--note", default="", help="free text stored in the JSON (e.g. reduced run)")
  p.add_argument("--tag", default="", help="suffix of the output names (e.g. 'reduced')")
  args = p.parse_args(argv)
  quick = args.quick
  json_path, png_path = common.output_paths("bench_unet", quick, args.out_dir, args.tag)
  t_start = time.perf_counter()
  res: dict = {"benchmark": "bench_unet", "quick": quick, "note": args.note,
               "machine": common.machine_info(), "load_start": common.machine_load()}
  monitor = common.LoadMonitor().start()
  common.log(f"load: {res['load_start']['loadavg_1_5_15']}, trainings {res['load_start']['ddpm_trainings_running']}")
  res["matmul"] = common.matmul_flops(1024 if quick else 2048, repeats=3 if quick else 5)
  common.log(f"matmul GFLOP/s: " + ", ".join(f"{k} {v['flops_per_s'] / 1e9:.0f}"
                                             for k, v in res["matmul"].items() if k.startswith("dev")))
  batches = dict(QUICK if quick else FULL)
  if args.small_batches:
    batches["small32"] = tuple(args.small_batches)
  if args.celeba_batches:
    batches["celeba128"] = tuple(args.celeba_batches)
  res["settings"] = {"batches": batches, "chain_taus": CHAIN_TAUS["quick" if quick else "full"]}
  res["throughput"], res["models"] = {}, {}
  for name in args.configs:
    net, origin = common.unet(name, fixture=Path(args.fixture))
    n_params = sum(a.size for a in jax.tree.leaves(net.params))
    res["models"][name] = {"weights": origin, "parameters": int(n_params), "image_size": net.config["image_size"]}
    common.log(f"{name}: {n_params / 1e6:.2f} M parameters ({origin})")
    modes = ("forward",) if (quick and name == "celeba128") else ("forward", "forward_backward")
    res["throughput"][name] = throughput(net, batches[name], repeats=2 if quick else 3,
                                         min_seconds=0.0 if quick else 1.0, peak=res["matmul"], modes=modes)
  net, _ = common.unet("small32", fixture=Path(args.fixture))
  chain_batch = args.chain_batch or (2 if quick else 16)
  common.log(f"chain memory (small32, batch {chain_batch})")
  res["chain_memory"] = chain_memory(net, CHAIN_TAUS["quick" if quick else "full"], chain_batch,
                                     time_it=True)
  res["load_during"] = monitor.stop()
  res["load_end"] = common.machine_load()
  res["wall_seconds"] = time.perf_counter() - t_start
  common.write_json(json_path, res)
  plot(res, png_path)
  return res


if __name__ == "__main__":
  main()
