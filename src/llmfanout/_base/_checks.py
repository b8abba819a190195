"""Small checks shared across modules: one wording for each, so every error reads alike."""

from __future__ import annotations

import importlib.util
import os

import anyio


def whole_number(value: object, name: str, *, minimum: int = 1, hint: str = "") -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``; else a ``ValueError``.

    The message names ``name`` and the value given: ``"max_errors is 0; give a whole number
    >= 1, or None for no limit"`` (``hint`` is appended as written).
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} is {value!r}; give a whole number >= {minimum}{hint}")
    return value


def positive(value: object, name: str, *, unit: str = "seconds", hint: str = "") -> float:
    """``value`` if it is a number (not a bool) > 0; else a ``ValueError`` naming ``unit``.

    NaN is refused too (``not value > 0``); infinity is allowed (no limit).
    """
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} is {value!r}; give {unit} > 0{hint}")
    return value


def unwrap_group(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The lone exception of a group our own task group raised, else the group.

    ``except KeyboardInterrupt`` or ``except MyError`` around a call should work without
    ``except*``; cancellation is left as the backend raised it.
    """
    if len(group.exceptions) == 1 and not isinstance(
        group.exceptions[0], anyio.get_cancelled_exc_class()
    ):
        return group.exceptions[0]
    return group


TRIO_HINT = "pip install 'llmfanout[trio]'"
"""The one way to get trio, said alike by the library and the command line."""


def need_backend(backend: str, owner: str) -> None:
    """Raise ``ImportError`` naming the extra when ``backend`` is trio and trio is missing."""
    if backend == "trio" and importlib.util.find_spec("trio") is None:
        raise ImportError(f"{owner}: backend 'trio' needs trio, an extra: {TRIO_HINT}")


def env_key(variable: str, who: str) -> str:
    """The API key in the environment variable ``variable``; ``ValueError`` naming ``who``
    (``provider 'openai'``, ``deployment 'east'``) and the variable when it is missing."""
    key = os.environ.get(variable, "").strip()
    if not key:
        raise ValueError(
            f"{who} needs an API key in the {variable} environment variable where the job "
            "runs; set it (a local server that needs no key accepts any value, e.g. none)"
        )
    return key
