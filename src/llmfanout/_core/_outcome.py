"""What came of a task's attempts: :class:`Ok` or :class:`Failed`, each with the attempts made.

A small frozen value that says what it is (trio's ``outcome`` is the model), instead of a
``(bool, value, attempts)`` tuple that every caller unpacks and asserts on.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import attrs


@attrs.frozen
class Ok:
    """The attempts ended in a value (``attempts`` >= 1 counts them all)."""

    value: Any
    attempts: int


@attrs.frozen
class Failed:
    """The attempts ended in ``error``: the last attempt's, or a hook's that raised."""

    error: Exception
    attempts: int


Outcome: TypeAlias = Ok | Failed
