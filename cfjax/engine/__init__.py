"""Runs any method over examples: continuous batching, compact refills, sharding.

Example:
  >>> from cfjax import engine
  >>> sorted(n for n in dir(engine) if not n.startswith("_"))
  ['Engine', 'iterate_examples', 'runner']
"""

from cfjax.engine.runner import Engine, iterate_examples  # noqa: F401
