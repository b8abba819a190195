"""A value per running event loop, for objects that outlive a loop.

Limiters and connection pools belong to the event loop that made them, but an executor
or a provider may be created at module level and serve several ``anyio.run`` calls in
turn. anyio's ``RunVar`` would keep an entry per object for the loop's whole life (a
leak for objects made per request); here the owner holds the entries, weakly keyed by
the loop, so each goes away with its loop or with its owner.
"""

from __future__ import annotations

from typing import Generic, TypeVar
from weakref import WeakKeyDictionary

from anyio.lowlevel import current_token

T = TypeVar("T")
D = TypeVar("D")


class PerLoop(Generic[T]):
    """One value of ``T`` per running event loop."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: WeakKeyDictionary[object, T] = WeakKeyDictionary()

    def get(self, default: D) -> T | D:
        """This loop's value, or ``default`` if it has none yet."""
        return self._values.get(current_token().native_token, default)

    def set(self, value: T) -> None:
        """Set this loop's value."""
        self._values[current_token().native_token] = value
