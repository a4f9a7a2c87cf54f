"""Notebooks stay true to the code: every code cell parses and every cfjax name it uses exists."""

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_refers_to_real_api(path):
  import importlib
  nb = json.loads(path.read_text())
  code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
  tree = ast.parse(code)
  modules = {}
  for node in ast.walk(tree):
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
