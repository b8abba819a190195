"""Streamed answers: read server-sent events, and still return one ``LLMResponse``.

Each API's events are folded by an accumulator (pure code, fed one :class:`Event` at a
time) into the body the API would have sent without streaming, so the provider's own
``_response`` reads it and a streamed answer looks exactly like a whole one, plus
``metadata["time_to_first_token_s"]``. An answer counts only once its terminal event
arrived (OpenAI's ``data: [DONE]``, Anthropic's ``message_stop``): a body that ends
before it, or breaks, raises a retryable :class:`~llmfanout.errors.APIConnectionError`,
never a short answer taken as whole. An error event mid-stream raises the error its
type names (``overloaded_error`` is a retryable ``ServerError``, as a 529 would be). A
server that ignores ``stream`` and answers with JSON is read as a whole answer
(``metadata["streamed"]`` is then False).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import attrs

from .._base._types import LLMResponse
from ..errors import APIConnectionError, ProviderError
from ._errors import one_line, should_retry, status_error_class
from ._sse import Event, SSEDecoder
from ._transports._pool import Response

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._base._types import LLMMessage
    from ._http import HTTPProvider

logger = logging.getLogger("llmfanout")

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
_ERROR_STATUS = {
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


async def complete_streamed(
    provider: HTTPProvider,
    messages: Sequence[LLMMessage],
    params: dict[str, Any],
    accumulator: Accumulator,
) -> LLMResponse:
    """One call read as a stream; the answer as a whole ``LLMResponse`` (see the module)."""
    on_text = params.pop(ON_TEXT, None)
    if on_text is not None and not callable(on_text):
        raise TypeError(f"{provider.provider_name}: on_text must be callable, not {on_text!r}")
    payload = provider._stream_payload(provider._payload(messages, {**params, "stream": True}))
    decoder = SSEDecoder()
    redact = provider._redact_answers
    start = anyio.current_time()
    first: float | None = None
    error: ProviderError | None = None
    async with provider.stream("POST", provider.endpoint, json=payload) as response:
        head = Response(response.status, response.reason, response.headers, b"")
        if response.headers.get("content-type", "").startswith("application/json"):
            # A server that does not stream answers whole: take it as it is.
            whole = Response(
                response.status, response.reason, response.headers, await response.read()
            )
            answer = provider._response(provider._json(whole), whole, payload.get("model"))
            return attrs.evolve(
                answer,
                metadata={**answer.metadata, "streamed": False, "time_to_first_token_s": None},
            )
        try:
            async for chunk in response:
                for event in decoder.feed(chunk):
                    if accumulator.done:
                        continue  # read on to the body's end, so the connection is reused
                    if redact:
                        event = Event(provider._redactor.text(event.data), event.event)
                    text = accumulator.feed(event)
                    if text is None:
                        continue
                    if first is None:
                        first = anyio.current_time() - start
                    if text and on_text is not None:
                        outcome = on_text(text)
                        if inspect.isawaitable(outcome):
                            await outcome
        except StreamEventError as exc:
            error = _event_error(provider, head, exc.data)
        except StreamFormatError as exc:
            error = provider._format_error(head, str(exc))
        except ProviderError:
            # The body broke after the terminal event: the answer is whole, only the
            # connection's end was not clean (it is closed, not reused).
            if not accumulator.done:
                raise
    if error is None and not accumulator.done:
        error = APIConnectionError(
            f"{provider.provider_name}: the answer stream from {provider._url} ended before "
            f"its end marker ({accumulator.terminal}), so the answer may be cut short and "
            "is not used; retrying may help",
            provider=provider.provider_name,
            request_id=provider._request_id(head),
        )
    if error is not None:
        logger.debug("%s", error)
        raise error
    answer = provider._response(accumulator.body(), head, payload.get("model"))
    metadata = {**answer.metadata, "streamed": True, "time_to_first_token_s": first}
    return attrs.evolve(answer, metadata=metadata)


def _event_error(provider: HTTPProvider, head: Response, data: dict[str, Any]) -> ProviderError:
    """The error an error event stands for: of the class, and as retryable, as the status
    its type names would be."""
    detail = data.get("error")
    kind = detail.get("type") if isinstance(detail, dict) else None
    said = detail.get("message") if isinstance(detail, dict) else None
    kind = kind if isinstance(kind, str) else None
    message = provider._redactor.text(said) if isinstance(said, str) else None
    status = _ERROR_STATUS.get(kind or "", 500)
    what = f"{provider.provider_name}: the server sent an error mid-answer ({kind or 'no type'}"
    what += f": {one_line(message, 300)})" if message else ")"
    retryable = should_retry(status, {})
    if retryable:
        what += "; the answer is not used, and retrying may help"
    return status_error_class(status)(
        what,
        status_code=head.status,
        retryable=retryable,
        error_type=kind,
        error_message=message,
        request_id=provider._request_id(head),
        provider=provider.provider_name,
    )
