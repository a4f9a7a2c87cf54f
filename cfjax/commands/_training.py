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


@contextlib.contextmanager
def interruptible():
  """Yields a training hook that stops the run at the next step boundary after SIGINT or SIGTERM.

  The training loop checkpoints the current step when a hook raises, so an interrupted run
  resumes exactly (a background job started with ``nohup ... &`` ignores SIGINT, and ``kill``
  sends SIGTERM). The signal only sets a flag: raising from the handler could land inside a
  callback that swallows it (e.g. JAX's garbage-collection hook). A second signal raises at once.
  Outside the main thread no handler is installed.

  Example:
    >>> with interruptible() as stop:
    ...   stop(1, None)  # a hook: does nothing until a signal arrives
  """
  received: list[int] = []

  def handler(signum, frame):
    if received:
      raise KeyboardInterrupt(f"signal {signum}")
    received.append(signum)

  def stop(step, state):
    if received:
      raise KeyboardInterrupt(f"signal {received[0]} before step {step + 1}")

  main = threading.current_thread() is threading.main_thread()  # signal handlers need it
  previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
  try:
    yield stop
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
