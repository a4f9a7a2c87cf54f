"""Metric factories by name, for configuration at the edges (a CLI, a benchmark config).

Example:
  >>> from cfjax import metrics
  >>> "fid" in metrics.known_metrics()
  True
  >>> metrics.make("proximity").name
  'proximity'
"""

from __future__ import annotations

from cfjax._registry import Registry
from cfjax.metrics import attributes, realism, similarity, testbeds, transition, validity
from cfjax.metrics.base import Metric

_METRICS = Registry("metric")
for _module, _names in (
    (validity, ("success_rate", "flip_rate", "oracle_mae", "proximity")),
    (attributes, ("mnac", "cd")),
    (similarity, ("fva", "s3", "cosine_similarity", "diversity")),
    (transition, ("cout",)),
    (realism, ("fid", "sfid")),
    (testbeds, ("region_change", "squares_factor_change", "shapes_background_change", "ideal_distance")),
):
  for _name in _names:
    _METRICS.add(_name, getattr(_module, _name))


def known_metrics() -> list[str]:
  """Names :func:`make` accepts."""
  return _METRICS.names()


def make(name: str, *args, **kwargs) -> Metric:
  """Builds the metric registered as ``name`` (its factory's arguments pass through)."""
  return _METRICS.get(name)(*args, **kwargs)
