"""Streamed answers, the pure part: each API's events folded into the body a whole answer has.

``HTTPProvider._complete_streamed`` reads the events off the wire and feeds them, one
:class:`Event` at a time, to an accumulator here, which builds the body the API would have
sent without streaming; the provider's own ``_response`` reads it, so a streamed answer
looks exactly like a whole one, plus ``metadata["time_to_first_token_s"]``. An answer
counts only once its terminal event arrived (OpenAI's ``data: [DONE]``, Anthropic's
``message_stop``): a body that ends before it, or breaks, raises a retryable
:class:`~llmfanout.errors.APIConnectionError`, never a short answer taken as whole. An
error event mid-stream raises the error its type names (``overloaded_error`` is a
retryable ``ServerError``, as a 529 would be). A server that ignores ``stream`` and answers
with JSON is read as a whole answer (``metadata["streamed"]`` is then False).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from ._sse import Event

OnText = Callable[[str], Any]
"""Called with each piece of text as it arrives; may be async."""

ON_TEXT = "on_text"
"""The ``config_overrides`` key of the per-call text callback (never sent)."""


class StreamEventError(Exception):
    """An error event in the stream: its parsed data, ``{"error": {"type", "message"}}``."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__("error event")
        self.data = data


class StreamFormatError(Exception):
    """An event that is not as the API documents it."""


# The status an error event stands for: it decides the error's class and retryability.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "server_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
    # Google's status names (Gemini), as its error bodies and error events carry them
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class Accumulator(Protocol):
    """Folds one API's stream events into the body of a whole answer."""

    @property
    def terminal(self) -> str:
        """How the API marks the end, for error messages."""
        ...

    done: bool

    def feed(self, event: Event) -> str | None:
        """Take one event; return new text, ``""`` for other content, None for none.

        Raises :class:`StreamEventError` for an error event and
        :class:`StreamFormatError` for one it cannot read.
        """
        ...

    def body(self) -> dict[str, Any]:
        """The body the API would have sent without streaming."""
        ...


def parse(event: Event) -> dict[str, Any]:
    """An event's JSON data, which must be an object."""
    try:
        data = json.loads(event.data)
    except ValueError:
        raise StreamFormatError(
            f"has an event whose data is not JSON: {event.data[:80]!r}"
        ) from None
    if not isinstance(data, dict):
        raise StreamFormatError(f"has an event whose data is not an object: {event.data[:80]!r}")
    return data
