"""The one registry helper: a name -> object table with clear errors (networks, generators, methods).

Example:
  >>> r = Registry("colour")
  >>> @r.register("red")
  ... def red():
  ...   return 1
  >>> r.names(), r.get("red")()
  (['red'], 1)
"""

from __future__ import annotations

from typing import Any, Callable

from cfjax._validate import unknown_name


class Registry:
  """Names of one kind (``kind`` appears in errors: "unknown network architecture 'x'")."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, Any] = {}

  def add(self, name: str, obj) -> None:
    if name in self._items:
      raise ValueError(f"{self.kind} {name!r} registered twice")
    self._items[name] = obj

  def register(self, name: str, wrap: Callable[[Any], Any] | None = None):
    """Decorator registering the decorated object (or ``wrap(obj)``) under ``name``."""

    def deco(obj):
      self.add(name, obj if wrap is None else wrap(obj))
      return obj

    return deco

  def get(self, name: str):
    if name not in self._items:
      raise unknown_name(self.kind, name, self._items)
    return self._items[name]

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name) -> bool:
    return name in self._items
