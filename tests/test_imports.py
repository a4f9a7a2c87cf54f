"""Every cfjax module imports first, on its own: an import cycle shows only for some import orders."""

import subprocess
import sys

_SCRIPT = r"""
import importlib, pkgutil, sys
import cfjax
names = sorted(m.name for m in pkgutil.walk_packages(cfjax.__path__, "cfjax."))
failed = []
for name in names:
  for loaded in [m for m in sys.modules if m == "cfjax" or m.startswith("cfjax.")]:
    del sys.modules[loaded]
  try:
    importlib.import_module(name)
  except Exception as e:  # noqa: BLE001
    failed.append(f"{name}: {type(e).__name__}: {e}")
print(len(names))
print("\n".join(failed))
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
  out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr
  count, *failed = out.stdout.strip().split("\n")
  assert int(count) > 50
  assert not [f for f in failed if f], "\n".join(failed)
