"""Notebooks stay true to the code: every code cell parses, every cfjax name it uses exists, and
every notebook runs top to bottom in smoke mode (``notebooks/run.py``, ``CFJAX_SMOKE=1``)."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
RUNNER = ROOT / "notebooks" / "run.py"


def test_the_four_notebooks_exist():
  names = {p.name for p in NOTEBOOKS}
  assert {"quickstart.ipynb", "throughput.ipynb", "attribution.ipynb",
          "spurious_correlation.ipynb"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_refers_to_real_api(path):
  import importlib
  nb = json.loads(path.read_text())
  code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
  tree = ast.parse(code)
  modules = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name == "cfjax":
          modules[alias.asname or "cfjax"] = importlib.import_module("cfjax")
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cfjax"):
      mod = importlib.import_module(node.module)
      for alias in node.names:
        obj = getattr(mod, alias.name, None)
        if obj is None:
          obj = importlib.import_module(f"{node.module}.{alias.name}")
        modules[alias.asname or alias.name] = obj
  assert modules, "the notebook imports nothing from cfjax"
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
      assert hasattr(modules[node.value.id], node.attr), f"{node.value.id}.{node.attr} does not exist"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path):
  """Every code cell runs without raising, on the bundled models, in a fresh process (so a
  notebook can set XLA_FLAGS before importing JAX); the notebook file is not rewritten."""
  before = path.read_bytes()
  env = dict(os.environ)
  # As from a shell: the runner sets CFJAX_SMOKE, a notebook its own XLA_FLAGS.
  env.pop("CFJAX_SMOKE", None)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, str(RUNNER), str(path)], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
  assert path.read_bytes() == before


def test_runner_captures_streams_figures_and_errors(tmp_path):
  """The runner's outputs: stdout as a stream, the last expression as a result, each figure as a
  small PNG, SMOKE visible to the cells; a raising cell stops the run and is recorded."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("nb_run", RUNNER)
  run = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(run)

  def cell(src):
    return {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": [src]}

  nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# t"]},
                  cell("import os\nSMOKE = os.environ.get('CFJAX_SMOKE') == '1'\nprint('smoke', SMOKE)"),
                  cell("import matplotlib.pyplot as plt\nimport numpy as np\n"
                       "plt.imshow(np.random.rand(64, 64, 3))\n1 + 1"),
                  cell("raise ValueError('boom')"), cell("print('never')")],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 4}
  p = tmp_path / "t.ipynb"
  p.write_text(json.dumps(nb))
  r = run.run_notebook(p, smoke=True, write=True, log=lambda s: None)
  assert not r["ok"]
  cells = json.loads(p.read_text())["cells"]
  assert cells[1]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": ["smoke True\n"]}]
  kinds = [o["output_type"] for o in cells[2]["outputs"]]
  assert kinds == ["execute_result", "display_data"], kinds
  assert cells[2]["outputs"][0]["data"]["text/plain"] == ["2"]
  png = cells[2]["outputs"][1]["data"]["image/png"]
  assert len(png) * 3 / 4 <= run.MAX_PNG_BYTES
  assert cells[3]["outputs"][-1]["output_type"] == "error" and cells[3]["outputs"][-1]["ename"] == "ValueError"
  assert cells[4]["outputs"] == [] and [c.get("execution_count") for c in cells[1:]] == [1, 2, 3, None]
