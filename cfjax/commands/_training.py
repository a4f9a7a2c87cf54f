"""What the ``cfjax train-*`` commands share: the canonical command line and interruptible runs."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import threading
from typing import Sequence


def command_line(command: str, args: argparse.Namespace, options: Sequence[str]) -> str:
  """The canonical command line that reproduces ``args``: every run option in ``options`` spelled out.

  Example:
    >>> command_line("train-vae", argparse.Namespace(steps=10, rho=None, out="r"), ("rho", "steps", "out"))
    'cfjax train-vae --steps 10 --out r'
  """
  parts = ["cfjax", command]
  for name in options:
    value = getattr(args, name)
    if value is not None:
      parts += ["--" + name.replace("_", "-"), str(value)]
  return shlex.join(parts)


def _interrupt(signum, frame):
  raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interruptible():
  """SIGINT and SIGTERM become KeyboardInterrupt while a training runs, so that the training loop
  checkpoints the current step before exiting (a background job started with ``nohup ... &``
  ignores SIGINT, and ``kill`` sends SIGTERM). Outside the main thread it changes nothing."""
  main = threading.current_thread() is threading.main_thread()  # signal handlers need it
  previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
