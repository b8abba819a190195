"""Exceptions llmfanout raises or records in results.

Exception
 +-- TaskAborted                   a task stopped (or never started): the run hit max_errors,
 |                                 or its spend cap (max_cost_usd)
 +-- PacingError                   the server's advertised limits would hold a call past   never
 |                                 its patience
 +-- ValidationFailed              answers never matched the task's schema, re-asks spent never
 +-- ProviderError                 a provider call failed; ``retryable`` says if retrying may help
      +-- APIConnectionError       refused, reset, or dropped mid-response              retried
      |    +-- APITimeoutError     connect, read, write, pool or total timeout          retried
      +-- ResponseFormatError      a 2xx body not as documented, or past max_response_bytes never
      +-- ContentBlockedError      the provider's safety filter withheld the answer       never
      +-- APIStatusError           another error status: 408, 409 retried, 3xx never
           +-- BadRequestError     400, 404, 413, 422, or a request we refuse to send   never
           +-- AuthenticationError 401, 403                                             never
           +-- RateLimitError      429; its ``retry_after`` also pauses a RateLimit     retried
           +-- ServerError         5xx, 529 overloaded                                  retried

Whether an error is retried follows the official OpenAI and Anthropic SDKs: 408, 409, 429,
every 5xx, timeouts and dropped connections are; an ``x-should-retry: true|false`` response
header overrides the status. The executor's ``RetryConfig`` reads ``retryable`` and
``retry_after`` (seconds) from the exception; providers never retry on their own.
``ValidationFailed`` is not retried either: an answer that fails its schema is re-asked
(a follow-up turn carrying the errors), which is counted apart from attempts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._base._advertised import RateLimitInfo

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ContentBlockedError",
    "PacingError",
    "ProviderError",
    "RateLimitError",
    "ResponseFormatError",
    "ServerError",
    "TaskAborted",
    "ValidationFailed",
]


class TaskAborted(Exception):
    """The task did not finish because the run stopped early (``max_errors`` was reached)."""

    retryable = False


class PacingError(Exception):
    """Pacing by the rate limits a server advertises would hold a call past its patience.

    Raised before the call is sent, at once rather than after the wait: the message
    names the advertised budget (its headers and figures) that holds it. Never retried:
    raise ``RetryConfig.patience``, or turn pacing off (``pacing=False``, ``--no-pacing``)
    if the server's figures are wrong.
    """

    retryable = False


class ValidationFailed(Exception):
    """A task's answers never matched its schema, within ``max_reasks`` and its budget.

    Attributes:

    - ``tag``: the task's tag.
    - ``attempts``: one ``(raw_text, errors)`` pair per answer, in order: the text the
      model sent and the validation errors found in it (each ``"path: message"``).
    - ``errors``: the last answer's errors.
    - ``reasks``: follow-up turns sent (``len(attempts) - 1``).
    - ``usage``: tokens summed over every answer (re-asks included), or None.
    - ``stopped_by``: ``"max_reasks"``, ``"token_budget"`` or ``"cost_budget"``.

    Not retried; the run goes on with the other tasks.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        tag: str = "",
        attempts: tuple[tuple[str, tuple[str, ...]], ...] = (),
        usage: Mapping[str, int] | None = None,
        stopped_by: str = "max_reasks",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.tag = tag
        self.attempts = attempts
        self.usage = dict(usage) if usage else None
        self.stopped_by = stopped_by

    @property
    def errors(self) -> tuple[str, ...]:
        """The last answer's validation errors."""
        return self.attempts[-1][1] if self.attempts else ()

    @property
    def reasks(self) -> int:
        """How many follow-up turns were sent."""
        return max(len(self.attempts) - 1, 0)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message,), self.__dict__)


class ProviderError(Exception):
    """A provider call failed. ``str(error)`` says what happened and what to do about it.

    Attributes (None where they do not apply or the server did not send them):

    - ``retryable``: whether another attempt may succeed; the executor never retries False.
    - ``status_code``: the HTTP status, None when no response arrived.
    - ``retry_after``: seconds the server asked us to wait (``retry-after-ms`` or
      ``retry-after``), never negative.
    - ``error_type``, ``error_message``: the provider's own error type and message.
    - ``request_id``: the server's request id, to quote to the provider's support.
    - ``provider``: ``"openai"``, ``"anthropic"``...
    - ``body``: the start of the response body, for debugging.
    - ``headers``: the response's headers (names in lower case), to read rate-limit
      headers and the like.
    - ``rate_limits``: the :class:`~llmfanout.RateLimitInfo` the response's headers
      advertised (a 429's remaining budget and reset, say).
    - ``credential``: which credential the call sent, by where it came from (``"the API
      key (OPENAI_API_KEY or api_key=)"``, ``"the Entra ID token in AZURE_OPENAI_AD_TOKEN"``),
      never its value: what a 401 or 403 asks the user to check.

    No attribute and no message ever holds the API key: messages from the server are
    redacted, and request headers are never kept.
    """

    retryable: bool = False

    # Alike in shape only (_flow/_redislimit.py, _core/_embed.py...): a keyword-only constructor.
    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        request_id: str | None = None,
        provider: str | None = None,
        body: str | None = None,
        headers: Mapping[str, str] | None = None,
        rate_limits: RateLimitInfo | None = None,
        credential: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retryable = type(self).retryable if retryable is None else retryable
        self.retry_after = retry_after
        self.error_type = error_type
        self.error_message = error_message
        self.request_id = request_id
        self.provider = provider
        self.body = body
        self.headers = dict(headers) if headers is not None else None
        self.rate_limits = rate_limits
        self.credential = credential

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields survive pickling (a process pool, a results file).
        return (type(self), (self.message,), self.__dict__)


class APIConnectionError(ProviderError):
    """No usable response arrived: the connection was refused, reset or dropped mid-response.

    Retryable (as the official SDKs decide): the request may never have reached the model.
    """

    retryable = True


class APITimeoutError(APIConnectionError):
    """A connect, read, write, pool or total timeout expired; retryable.

    A read timeout means the server sent nothing for that long: a hung server, or an
    answer slower than the provider's ``timeout`` allows (raise it for long generations).
    """

    retryable = True


class ResponseFormatError(ProviderError):
    """A successful (2xx) response whose body is not the documented JSON, or any response
    larger than the provider's ``max_response_bytes``; not retried.

    Usually ``base_url`` points at something that is not the API (a proxy's HTML page,
    the wrong path), or a compatible server that leaves out a field.
    """

    retryable = False


class ContentBlockedError(ProviderError):
    """The provider answered 200 but withheld the answer: its safety filter blocked the prompt
    (Gemini's ``promptFeedback.blockReason``) or the reply (``finishReason`` ``SAFETY``,
    ``RECITATION``, ``BLOCKLIST``, ``PROHIBITED_CONTENT``, ``SPII``, ``IMAGE_SAFETY``); not
    retried, as the same prompt is blocked again.

    ``error_type`` holds the reason the provider gave (``"SAFETY"``...); ``body`` the start
    of the answer, with its safety ratings.
    """

    retryable = False


class APIStatusError(ProviderError):
    """The server answered with an error status; ``status_code`` says which.

    Raised as is for statuses without a subclass (408 and 409 are retryable; a redirect
    is not followed, so a 3xx means ``base_url`` should be the final address).
    """


class BadRequestError(APIStatusError):
    """400, 404, 413 or 422: the request is wrong (model name, parameters, size); not retried.

    Also raised before sending, with ``status_code`` None, for a request that cannot be
    sent (``stream=True``, a value JSON cannot encode).
    """

    retryable = False


class AuthenticationError(APIStatusError):
    """401 or 403: the API key is missing, wrong, or lacks permission; not retried."""

    retryable = False


class RateLimitError(APIStatusError):
    """429: too many requests or tokens; retried after ``retry_after`` when the server says.

    With a ``RateLimit`` on the executor, a ``RateLimitError`` with ``retry_after`` also
    pauses every new start until then (``status_code`` 429 and ``retry_after`` are what
    the limiter looks at).
    """

    retryable = True


class ServerError(APIStatusError):
    """5xx, including Anthropic's 529 "overloaded": the provider failed; retried."""

    retryable = True
