"""Runs a notebook's code cells top to bottom in one namespace, without Jupyter.

Every code cell is executed with ``exec`` in a shared namespace (the last expression of a cell is
evaluated and shown, as in Jupyter). Each cell's stdout / stderr become "stream" outputs and every
matplotlib figure it leaves open becomes an "image/png" display_data output (Agg backend, saved at
a resolution that keeps each PNG under ``MAX_PNG_BYTES``), then the figures are closed. The
environment variable ``CFJAX_SMOKE`` is set to "1" in smoke mode (the default); cells read it and
shrink their sizes and step counts. With ``--write`` the outputs and execution counts are written
back into the .ipynb (nbformat 4 JSON). A cell that raises stops the run: the error is recorded as
an "error" output and the command exits with status 1.

Usage:
  python notebooks/run.py notebooks/quickstart.ipynb            # smoke run, prints timings
  python notebooks/run.py --write notebooks/*.ipynb             # smoke run, outputs written back
  python notebooks/run.py --full notebooks/throughput.ipynb     # full sizes (CFJAX_SMOKE unset)
"""

from __future__ import annotations

import argparse
import ast
import base64
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

MAX_PNG_BYTES = 60_000
MAX_TEXT_CHARS = 4_000
START_DPI = 90
MIN_DPI = 30


def _lines(text: str) -> list[str]:
  """nbformat's multiline string: a list of lines, each but the last ending in a newline."""
  return text.splitlines(keepends=True)


def _clip(text: str) -> str:
  if len(text) <= MAX_TEXT_CHARS:
    return text
  return text[: MAX_TEXT_CHARS // 2] + "\n[... output clipped ...]\n" + text[-MAX_TEXT_CHARS // 2:]


def _compact_png(data: bytes) -> bytes:
  """The PNG reduced to a 256-colour palette (a third of the bytes of noisy RGB), if smaller."""
  from PIL import Image
  img = Image.open(io.BytesIO(data)).convert("RGB").quantize(colors=256)
  buf = io.BytesIO()
  img.save(buf, format="PNG", optimize=True)
  return min(data, buf.getvalue(), key=len)


def figure_png(fig) -> bytes:
  """The figure as a PNG of at most ``MAX_PNG_BYTES`` (the resolution drops until it fits)."""
  dpi = START_DPI
  while True:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    data = _compact_png(buf.getvalue())
    if len(data) <= MAX_PNG_BYTES or dpi <= MIN_DPI:
      return data
    dpi = max(MIN_DPI, int(dpi * 0.85))


def _figure_outputs() -> list[dict]:
  import matplotlib.pyplot as plt
  outputs = []
  for num in plt.get_fignums():
    fig = plt.figure(num)
    png = base64.b64encode(figure_png(fig)).decode("ascii")
    outputs.append({"output_type": "display_data", "metadata": {},
                    "data": {"image/png": png, "text/plain": [f"<Figure {num}>"]}})
  plt.close("all")
  return outputs


def _shown(value) -> bool:
  """Whether a cell's last value is displayed: not None and not a matplotlib artist."""
  if value is None:
    return False
  items = value if isinstance(value, (list, tuple)) and value else [value]
  return not all(type(v).__module__.startswith("matplotlib") for v in items)


def run_cell(source: str, namespace: dict, filename: str):
  """Executes one cell; returns its last expression's value (or None)."""
  tree = ast.parse(source, filename=filename)
  last = None
  if tree.body and isinstance(tree.body[-1], ast.Expr):
    last = ast.Expression(tree.body.pop().value)
  exec(compile(tree, filename, "exec"), namespace)
  if last is not None:
    return eval(compile(last, filename, "eval"), namespace)
  return None


def run_notebook(path, *, smoke: bool = True, write: bool = False, log=print) -> dict:
  """Runs every code cell of the notebook at ``path``.

  Returns ``{"ok": bool, "seconds": float, "cells": [seconds per code cell]}``; with ``write`` the
  notebook file is rewritten with the new outputs (also when a cell raised, so the error shows).
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  # The persistent compilation cache the test suite uses: a rerun loads the compiled programs.
  # Only takes effect where JAX is not imported yet (a fresh process, as from the command line).
  cache = os.environ.get("CFJAX_JAX_CACHE", str(Path.home() / ".cache" / "cfjax" / "jax_compilation"))
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  path = Path(path).resolve()
  nb = json.loads(path.read_text())
  saved_smoke = os.environ.pop("CFJAX_SMOKE", None)
  if smoke:
    os.environ["CFJAX_SMOKE"] = "1"
  for cell in nb["cells"]:
    if cell["cell_type"] == "code":
      cell["outputs"], cell["execution_count"] = [], None
  namespace = {"__name__": "__main__"}
  count, ok, times = 0, True, []
  t_start = time.perf_counter()
  cwd = os.getcwd()
  with tempfile.TemporaryDirectory() as work:
    # Files a cell writes land in a scratch directory, never beside the notebook.
    os.chdir(work)
    try:
      for cell in nb["cells"]:
        if cell["cell_type"] != "code":
          continue
        count += 1
        cell["execution_count"] = count
        cell["outputs"] = outputs = []
        cell.setdefault("metadata", {})
        source = "".join(cell["source"])
        out, err = io.StringIO(), io.StringIO()
        t0 = time.perf_counter()
        value = None
        try:
          with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            value = run_cell(source, namespace, f"<{path.name} cell {count}>")
        except Exception as e:  # noqa: BLE001  (recorded as the cell's error output)
          ok = False
          tb = traceback.format_exc()
          outputs_error = {"output_type": "error", "ename": type(e).__name__, "evalue": str(e),
                           "traceback": _lines(tb)}
        times.append(time.perf_counter() - t0)
        for name, buf in (("stdout", out), ("stderr", err)):
          text = buf.getvalue()
          if text:
            outputs.append({"output_type": "stream", "name": name, "text": _lines(_clip(text))})
        if ok and _shown(value):
          outputs.append({"output_type": "execute_result", "execution_count": count, "metadata": {},
                          "data": {"text/plain": _lines(_clip(repr(value)))}})
        outputs.extend(_figure_outputs())
        log(f"  cell {count}: {times[-1]:.1f} s")
        if not ok:
          outputs.append(outputs_error)
          log(tb)
          break
    finally:
      os.chdir(cwd)
      plt.close("all")
      os.environ.pop("CFJAX_SMOKE", None)
      if saved_smoke is not None:
        os.environ["CFJAX_SMOKE"] = saved_smoke
  seconds = time.perf_counter() - t_start
  if write:
    nb["nbformat"], nb["nbformat_minor"] = 4, 4
    for cell in nb["cells"]:
      cell.pop("id", None)
    nb.setdefault("metadata", {}).update({
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}})
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
  return {"ok": ok, "seconds": seconds, "cells": times}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("notebooks", nargs="+", help=".ipynb files")
  p.add_argument("--write", action="store_true", help="write the outputs back into the notebooks")
  p.add_argument("--full", action="store_true", help="full sizes: CFJAX_SMOKE is not set")
  args = p.parse_args(argv)
  status = 0
  for nb in args.notebooks:
    print(f"{nb}:", flush=True)
    r = run_notebook(nb, smoke=not args.full, write=args.write,
                     log=lambda s: print(s, file=sys.__stdout__, flush=True))
    print(f"{nb}: {'ok' if r['ok'] else 'FAILED'} in {r['seconds']:.1f} s", flush=True)
    status = status or (0 if r["ok"] else 1)
  return status


if __name__ == "__main__":
  sys.exit(main())
