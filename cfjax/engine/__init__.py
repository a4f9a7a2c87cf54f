"""Runs any method over a dataset: continuous batching, sharding, resumable output.

Example:
  >>> from cfjax import engine
  >>> sorted(n for n in dir(engine) if not n.startswith("_"))[:3]
  ['Engine', 'ResultWriter', 'explain']
"""

from cfjax.engine.runner import Engine, explain, iterate_examples  # noqa: F401
from cfjax.engine.writer import ResultWriter, read_results  # noqa: F401
