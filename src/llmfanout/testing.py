"""Helpers for testing code that uses llmfanout: script an :class:`EchoProvider` with these,
and make retry waits instant with :func:`set_testing`."""

from __future__ import annotations

from collections.abc import Mapping

from ._base._public import publish
from ._base._types import LLMResponse
from ._core._retry import TESTING
from .providers._echo import EchoCall, EchoProvider, ErrorResponse, ResponseQueueExhausted

__all__ = [
    "EchoCall",
    "EchoProvider",
    "ErrorResponse",
    "ResponseQueueExhausted",
    "is_testing",
    "set_testing",
    "text_response",
]


class _Restore:
    """What :func:`set_testing` returns: as a context manager, it restores the old mode."""

    __slots__ = ("_previous",)

    def __init__(self, previous: bool) -> None:
        self._previous = previous

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc_info: object) -> None:
        TESTING.instant = self._previous


def set_testing(testing: bool) -> _Restore:
    """Turn testing mode on or off for the whole process; usable as a context manager.

    In testing mode every retry wait (backoff, and a server's ``retry_after``) takes no
    time, and a 429 starts no cooldown on the executor's rate limit, so a test of retry
    behaviour never sleeps. Attempts are still counted and hooks still run; each wait
    still yields to the event loop once, so cancellation lands as usual.
    ``with set_testing(True): ...`` restores the previous mode on the way out; a plain
    call leaves it set (call ``set_testing(False)`` to undo it).
    """
    if not isinstance(testing, bool):
        raise TypeError(f"set_testing() takes True or False, not {testing!r}")
    previous = TESTING.instant
    TESTING.instant = testing
    return _Restore(previous)


def is_testing() -> bool:
    """Whether testing mode (see :func:`set_testing`) is on."""
    return TESTING.instant


def text_response(
    content: str,
    *,
    model: str = "test-model",
    finish_reason: str | None = "stop",
    usage: Mapping[str, int] | None = None,
) -> LLMResponse:
    """An ``LLMResponse`` with ``content``, for an :class:`EchoProvider` script."""
    return LLMResponse(content, model=model, finish_reason=finish_reason, usage=usage)


publish(__name__, globals(), __all__)
