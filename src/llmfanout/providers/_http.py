"""HTTPProvider: what the OpenAI and Anthropic providers share.

One constructor (the options in :class:`~._config.HTTPOptions`), a transport per event
loop (:mod:`._transport`), the call path ``complete -> _payload -> send -> _response``,
and two primitives for the other endpoints of an API: :meth:`HTTPProvider.request` (a
whole response) and :meth:`HTTPProvider.stream` (a body read chunk by chunk). A
subclass says only how its API's JSON looks: ``_auth_headers``, ``_payload`` and
``_response``.

The API key lives in one private header block. Nothing built here formats it: errors
carry no request, chain no exception that holds one, and any text that comes from
outside (a body, a header, a socket error) passes through the provider's redactor.

About 600 lines, on purpose: one class, the base every HTTP provider shares (options,
lifecycle, the whole and the streamed call, the request and stream primitives); the
transports, errors, secrets, SSE and stream folding it uses live in their own modules.
"""

from __future__ import annotations

import enum
import inspect
import json
import logging
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self

import anyio
import attrs

from .._base._advertised import parse_rate_limit_headers
from .._base._encoded import dumps
from .._base._perloop import PerLoop
from .._base._types import LLMMessage, LLMResponse, ToolCall
from .._base._version import VERSION
from ..errors import APIConnectionError, BadRequestError, ProviderError, ResponseFormatError
from ._config import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT,
    DEFAULT_TOTAL_TIMEOUT,
    check_base_url,
    check_headers,
    check_model,
    check_params,
    check_positive_int,
    check_seconds,
    check_variable,
    check_verify,
    make_timeout,
)
from ._errors import (
    format_error,
    one_line,
    request_id,
    should_retry,
    status_error,
    status_error_class,
    transport_error,
)
from ._secrets import Redactor, Secret, SecretHeaders, resolve_api_key
from ._sse import Event, LineTooLong, SSEDecoder
from ._streaming import (
    ERROR_STATUS,
    ON_TEXT,
    Accumulator,
    StreamEventError,
    StreamFormatError,
)
from ._transports._base import (
    BodyStream,
    Request,
    Response,
    Timeouts,
    Transport,
    TransportError,
)
from ._transports._choose import new_transport
from ._transports._origin import Origin

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("llmfanout")

_REDACT_ANSWERS_FROM = 8  # key length from which successful bodies are searched too

# Headers that select the API's behaviour and carry no credential: part of a cache key.
_KEYED_HEADERS = ("anthropic-version", "anthropic-beta", "openai-organization", "openai-project")
# Parameters that change how the answer is read, never what it says: not in a cache key.
_READING_ONLY = ("stream", "stream_options", ON_TEXT)


# From the version constant, not importlib.metadata: that costs ~20 ms of every start.
USER_AGENT = f"llmfanout/{VERSION}"


class _Made(enum.Enum):
    NOT_YET = enum.auto()  # this event loop has no transport yet


class HTTPProvider:
    """Base of the HTTP providers: one connection pool per event loop for every call.

    Subclasses set ``provider_name``, ``api_key_env``, ``base_url_env``,
    ``default_base_url`` and ``endpoint``, and say how their API's JSON looks in
    ``_auth_headers``, ``_payload`` and ``_response``.
    """

    provider_name: ClassVar[str] = "http"
    api_key_env: ClassVar[str] = ""
    base_url_env: ClassVar[str] = ""
    default_base_url: ClassVar[str] = ""
    endpoint: ClassVar[str] = ""
    reports_rate_limits: ClassVar[bool] = True
    """Answers carry the server's rate-limit headers (``LLMResponse.rate_limits``), if it
    sends any: the executor sends one call first and paces the rest by its answer."""
    fresh_answers: ClassVar[bool] = True
    """Each ``complete()`` returns an answer made for that call alone (its ``metadata`` a
    dict of its own): a :class:`~llmfanout.Pool` writes the deployment's name into it
    instead of copying the answer."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        total_timeout: float | None = DEFAULT_TOTAL_TIMEOUT,
        max_connections: int = 100,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        default_params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        verify: bool | str | ssl.SSLContext = True,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        import httpx  # parses base_url; imported here so `import llmfanout` stays light

        owner = type(self).__name__
        self.model = check_model(model, owner)
        self.base_url = check_base_url(base_url, self.base_url_env, self.default_base_url, owner)
        self.max_connections = check_positive_int(max_connections, "max_connections", owner)
        self.max_response_bytes = check_positive_int(
            max_response_bytes, "max_response_bytes", owner
        )
        self.timeout = make_timeout(timeout, owner)
        self.total_timeout = (
            None if total_timeout is None else check_seconds(total_timeout, "total_timeout", owner)
        )
        self._timeouts = Timeouts.from_httpx(self.timeout, self.total_timeout)
        self.default_params = check_params(default_params, "default_params", owner)
        extra_headers = check_headers(headers, owner)
        self.verify = check_verify(verify, owner)
        if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
            raise TypeError(
                f"{owner}: http_client must be an httpx.AsyncClient, "
                f"not {type(http_client).__name__}"
            )
        variable = check_variable(api_key_env, "api_key_env", owner)
        secret = Secret(resolve_api_key(api_key, variable or self.api_key_env, owner))
        # What a 401 or 403 asks the user to check: where the key came from, not the key.
        self._key_source = (
            f"the API key ({variable})"
            if variable
            else f"the API key ({self.api_key_env} or api_key=)"
        )
        self._redactor = Redactor(secret)
        self._redact_answers = len(secret) >= _REDACT_ANSWERS_FROM
        url = httpx.URL(self.base_url)
        self._origin = Origin.of(url)
        self._prefix = url.raw_path.decode("ascii").rstrip("/")
        self._target = self._prefix + self.endpoint
        self._url = self.base_url + self.endpoint
        self._headers = SecretHeaders(
            {
                "content-type": "application/json",
                "accept": "application/json",
                "accept-encoding": "gzip, deflate",
                "user-agent": USER_AGENT,
                **self._auth_headers(str(secret)),
                **extra_headers,
            }
        )
        self._given_client = http_client
        # Headers made afresh for each request (a bearer token a callable renews); off
        # unless a subclass turns it on, so other providers pay one test per request.
        self._per_request = False
        # One transport per event loop: connections belong to the loop that opened them,
        # so a provider made at module level can serve successive anyio.run() calls.
        self._transports = PerLoop[Transport | None]()  # None: closed in that loop
        self._blocks = PerLoop[int]()  # open ``async with`` blocks in each loop
        self._params = self._initial_params()

    # -- what a subclass says ------------------------------------------------------------

    def _initial_params(self) -> dict[str, Any]:
        """The model and ``default_params``, in the wire's spelling."""
        return {"model": self.model, **self.default_params}

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        raise NotImplementedError

    def _credential(self) -> str:
        """The credential a 401 or 403 asks the user to check: where it came from, never
        its value."""
        return self._key_source

    async def _request_headers(self) -> Mapping[str, str]:
        """Headers made for each request, over the fixed ones (only with ``_per_request``)."""
        raise NotImplementedError

    def _payload(self, messages: Sequence[LLMMessage], params: dict[str, Any]) -> dict[str, Any]:
        """The request body for ``messages`` with ``params``."""
        raise NotImplementedError

    def _response(self, body: Any, response: Response, model: Any) -> LLMResponse:
        """The ``LLMResponse`` a successful body holds; ``ResponseFormatError`` if none.

        ``response`` carries the status, the headers (names in lower case, as the server
        sent them) and the raw body.
        """
        raise NotImplementedError

    def _answer(
        self,
        body: dict[str, Any],
        response: Response,
        model: Any,
        content: str,
        finish_reason: Any,
        usage: dict[str, int] | None,
        tool_calls: tuple[ToolCall, ...],
    ) -> LLMResponse:
        """The ``LLMResponse`` for a body a subclass has read: the model the body names
        (else the one asked for), the raw body and the server's request id in metadata."""
        reported = body.get("model")
        metadata: dict[str, Any] = {"raw": body}
        rid = self._request_id(response)
        if rid:
            metadata["request_id"] = rid
        return LLMResponse(
            content,
            model=reported if isinstance(reported, str) else str(model),
            finish_reason=finish_reason if isinstance(finish_reason, str) else None,
            usage=usage,
            metadata=metadata,
            tool_calls=tool_calls,
        )

    def _accumulator(self) -> Accumulator:
        """A fresh folder of this API's stream events into a whole answer's body."""
        raise NotImplementedError

    def _stream_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The request body for a streamed call (``stream`` already set)."""
        return payload

    def _path(self, params: Mapping[str, Any], *, stream: bool) -> str:
        """The path under ``base_url`` a call goes to (``endpoint``; Gemini's names the model)."""
        return self.endpoint

    # -- lifecycle -----------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    async def __aenter__(self) -> Self:
        """Count the block in: blocks may nest and overlap (a library's inside yours, one
        per task), and only the last one to leave in this loop closes its connections."""
        self._blocks.set(self._blocks.get(0) + 1)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Per loop, as the connections are: another loop's blocks hold other connections.
        left = self._blocks.get(0) - 1
        self._blocks.set(max(left, 0))
        if left <= 0:
            with anyio.CancelScope(shield=True):  # closed even when leaving by cancellation
                await self.aclose()

    async def release_loop(self) -> None:
        """Close the running event loop's pool; a later loop gets a fresh one."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close this event loop's connections; later calls in this loop raise. Idempotent.

        An ``http_client`` you passed in is left open. A later event loop (another
        ``anyio.run``) gets fresh connections.
        """
        transport = self._transports.get(None)
        self._transports.set(None)
        if transport is not None:
            await transport.aclose()

    def _new_transport(self) -> Transport:
        import httpx

        return new_transport(
            httpx.URL(self.base_url),
            self._headers,
            verify=self.verify,
            timeout=self.timeout,
            max_connections=self.max_connections,
            client=self._given_client,
        )

    def _transport(self) -> Transport:
        """This event loop's transport (made on first use); raise once closed."""
        transport = self._transports.get(_Made.NOT_YET)
        if transport is _Made.NOT_YET:
            transport = self._new_transport()
            self._transports.set(transport)
        if transport is None or (self._given_client is not None and self._given_client.is_closed):
            raise ProviderError(
                f"{type(self).__name__}: closed; create a new one, or use it inside "
                "`async with` and finish the run before leaving the block",
                provider=self.provider_name,
            )
        return transport

    # -- calls ---------------------------------------------------------------------------

    async def complete(
        self,
        messages: Sequence[LLMMessage],
        config_overrides: Mapping[str, Any] | None = None,
    ) -> LLMResponse:
        """Send one request; return the answer as an ``LLMResponse``.

        ``config_overrides`` are merged over ``default_params`` (a ``None`` value removes a
        key). ``metadata`` holds the raw JSON body (``"raw"``) and the server's
        ``"request_id"``. Raises a :class:`~llmfanout.errors.ProviderError` subclass on
        failure; cancellation closes the request's connection and propagates.

        With ``stream=True`` (or an ``on_text`` callback) in the parameters, the answer is
        read as server-sent events and returned whole, with ``time_to_first_token_s`` in
        its metadata; see :mod:`._streaming`.
        """
        params = self._merge(config_overrides) if config_overrides else self._params
        if params.get("stream") or ON_TEXT in params:
            return await self._complete_streamed(messages, dict(params), self._accumulator())
        payload = self._payload(messages, params)
        target = self._prefix + self._path(params, stream=False)
        response = await self._send("POST", target, self._encode(payload), None)
        answer = self._response(self._json(response), response, params.get("model"))
        limits = parse_rate_limit_headers(response.headers)
        return answer if limits is None else attrs.evolve(answer, rate_limits=limits)

    def cache_request(
        self,
        messages: Sequence[LLMMessage],
        config_overrides: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """What a call would send, for a cache key (see :class:`~llmfanout._base._types.Cacheable`).

        The provider's name, the endpoint's URL, the body as sent without streaming, and
        the protocol headers that select behaviour; never the key.
        """
        params = self._merge(config_overrides) if config_overrides else self._params
        if any(name in params for name in _READING_ONLY):
            params = {k: v for k, v in params.items() if k not in _READING_ONLY}
        headers = {k: v for k, v in self._headers.items() if k.lower() in _KEYED_HEADERS}
        return {
            "kind": self.provider_name,
            "endpoint": self._url,
            "headers": headers,
            "body": self._payload(messages, dict(params)),
        }

    async def _complete_streamed(
        self,
        messages: Sequence[LLMMessage],
        params: dict[str, Any],
        accumulator: Accumulator,
    ) -> LLMResponse:
        """One call read as a stream; the answer as a whole ``LLMResponse`` (see the module)."""
        on_text = params.pop(ON_TEXT, None)
        if on_text is not None and not callable(on_text):
            raise TypeError(f"{self.provider_name}: on_text must be callable, not {on_text!r}")
        payload = self._stream_payload(self._payload(messages, {**params, "stream": True}))
        decoder = SSEDecoder()
        redact = self._redact_answers
        start = anyio.current_time()
        first: float | None = None
        error: ProviderError | None = None
        async with self.stream("POST", self._path(params, stream=True), json=payload) as response:
            head = Response(response.status, response.reason, response.headers, b"")
            if response.headers.get("content-type", "").startswith("application/json"):
                # A server that does not stream answers whole: take it as it is.
                whole = Response(
                    response.status, response.reason, response.headers, await response.read()
                )
                answer = self._response(self._json(whole), whole, params.get("model"))
                return attrs.evolve(
                    answer,
                    metadata={**answer.metadata, "streamed": False, "time_to_first_token_s": None},
                )
            try:
                async for chunk in response:
                    for event in decoder.feed(chunk):
                        if accumulator.done:
                            break  # events past the terminal one are not read
                        if redact:
                            event = Event(self._redactor.text(event.data), event.event)
                        text = accumulator.feed(event)
                        if text is None:
                            continue
                        if first is None:
                            first = anyio.current_time() - start
                        if text and on_text is not None:
                            outcome = on_text(text)
                            if inspect.isawaitable(outcome):
                                await outcome
                    if accumulator.done:
                        break
            except StreamEventError as exc:
                error = self._event_error(head, exc.data)
            except (StreamFormatError, LineTooLong) as exc:
                error = self._format_error(head, str(exc))
            if accumulator.done:
                # The answer is whole: the call ends now, whatever the body does next. What
                # of it has arrived is taken in; if that ends it, the connection is reused.
                await response.settle()
        if error is None and not accumulator.done:
            error = APIConnectionError(
                f"{self.provider_name}: the answer stream from {self._url} ended before "
                f"its end marker ({accumulator.terminal}), so the answer may be cut short and "
                "is not used; retrying may help",
                provider=self.provider_name,
                request_id=self._request_id(head),
            )
        if error is not None:
            logger.debug("%s", error)
            raise error
        answer = self._response(accumulator.body(), head, params.get("model"))
        metadata = {**answer.metadata, "streamed": True, "time_to_first_token_s": first}
        return attrs.evolve(answer, metadata=metadata)

    def _event_error(self, head: Response, data: dict[str, Any]) -> ProviderError:
        """The error an error event stands for: of the class, and as retryable, as the status
        its type names would be."""
        detail = data.get("error")
        kind = detail.get("type") if isinstance(detail, dict) else None
        said = detail.get("message") if isinstance(detail, dict) else None
        kind = kind if isinstance(kind, str) else None
        message = self._redactor.text(said) if isinstance(said, str) else None
        status = ERROR_STATUS.get(kind or "", 500)
        what = f"{self.provider_name}: the server sent an error mid-answer ({kind or 'no type'}"
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
            request_id=self._request_id(head),
            provider=self.provider_name,
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_response_bytes: int | None = None,
    ) -> Response:
        """Send any request to this provider's API; return the whole 2xx response.

        ``path`` is relative to ``base_url`` (``"/files"``), or an absolute URL on the same
        host. The body is ``json`` (encoded here) or ``content`` (bytes, e.g. a multipart
        form, with its ``content_type``). The auth headers go with it; ``headers`` add to
        or replace the others. The response's ``status``, ``headers`` (lower case) and
        ``content`` (decoded, at most ``max_response_bytes``, default the provider's).

        Raises a :class:`~llmfanout.errors.ProviderError` subclass for an error status
        or no usable response, as :meth:`complete` does.
        """
        target, content, extra = self._request_parts(path, json, content, content_type, headers)
        return await self._send(method.upper(), target, content, extra, max_response_bytes)

    # The same parameters as request(), written out again on purpose (duplicates lists the
    # pair): each public signature reads whole in help() and in an editor's hints.
    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_response_bytes: int | None = None,
    ) -> AsyncIterator[_ProviderStream]:
        """Send a request as :meth:`request` does; yield a 2xx response to read in chunks.

        ``async with provider.stream("POST", "/chat/completions", json=body) as r:`` then
        ``async for chunk in r`` (decoded bytes). Each read has the read timeout, the
        whole exchange the total timeout; the body is capped at ``max_response_bytes``.
        An error status raises before the block runs, with the body read for the error.
        Leaving the block returns the connection to the pool if the body was read to its
        end, and closes it otherwise (a break, an exception, a cancellation).
        """
        target, content, extra = self._request_parts(path, json, content, content_type, headers)
        if self._per_request:
            extra = await self._with_request_headers(extra)
        transport = self._transport()
        limit = max_response_bytes or self.max_response_bytes
        error: ProviderError | None = None
        try:
            request = Request(method.upper(), target, content, extra, self._timeouts, limit)
            async with transport.stream(request) as raw:
                if 200 <= raw.status < 300:
                    yield _ProviderStream(self, raw)
                    return
                body = await raw.read()
                response = Response(raw.status, raw.reason, raw.headers, body)
                error = status_error(
                    self.provider_name, response, self._redactor, self._credential()
                )
        except TransportError as exc:
            error = self._transport_error(exc)
        logger.debug("%s", error)
        raise error

    # -- the machinery -------------------------------------------------------------------

    def _request_parts(
        self,
        path: str,
        json_body: Any,
        content: bytes | None,
        content_type: str | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[str, bytes, Mapping[str, str] | None]:
        owner = f"{type(self).__name__}.request"
        if path.startswith(("http://", "https://")):
            import httpx

            url = httpx.URL(path)
            if Origin.of(url) != self._origin:
                raise ValueError(
                    f"{owner}: {path!r} is not on {self._origin.url}; the API key is only "
                    "sent to base_url's host"
                )
            target = url.raw_path.decode("ascii")
        elif path.startswith("/"):
            target = self._prefix + path
        else:
            raise ValueError(f"{owner}: path {path!r} must start with '/' or be a full URL")
        extra = check_headers(headers, owner) or None
        if json_body is not None:
            if content is not None:
                raise ValueError(f"{owner}: give json= or content=, not both")
            content = self._encode(json_body)
        elif content_type is not None:
            extra = {**(extra or {}), "content-type": content_type}
        return target, content or b"", extra

    async def _send(
        self,
        method: str,
        target: str,
        content: bytes,
        headers: Mapping[str, str] | None,
        max_bytes: int | None = None,
    ) -> Response:
        """Send a request; return a 2xx response, raise a ``ProviderError`` otherwise.

        Errors are raised outside ``except`` blocks, so they chain nothing.
        """
        if self._per_request:
            headers = await self._with_request_headers(headers)
        transport = self._transport()
        error: ProviderError
        try:
            response = await transport.send(
                Request(
                    method,
                    target,
                    content,
                    headers,
                    self._timeouts,
                    max_bytes or self.max_response_bytes,
                )
            )
        except TransportError as exc:
            error = self._transport_error(exc)
        else:
            if 200 <= response.status < 300:
                return response
            error = status_error(self.provider_name, response, self._redactor, self._credential())
        logger.debug("%s", error)
        raise error

    async def _with_request_headers(
        self, headers: Mapping[str, str] | None
    ) -> Mapping[str, str] | None:
        """The request's own headers over those made for each request."""
        made = await self._request_headers()
        return SecretHeaders({**made, **headers}) if headers else made

    def _transport_error(self, failure: TransportError) -> ProviderError:
        return transport_error(
            self.provider_name, failure, self._url, self._timeouts, self._redactor
        )

    def _json(self, response: Response) -> Any:
        """The parsed body of a 2xx response (with the key taken out, should it echo it)."""
        data = response.content
        if self._redact_answers:
            data = self._redactor.data(data)
        try:
            return json.loads(data)
        except ValueError:
            pass
        error: ProviderError = self._format_error(response, "is not JSON")
        raise error

    def _request_id(self, response: Response) -> str | None:
        """The server's request id, redacted."""
        rid = request_id(response.headers)
        return None if rid is None else self._redactor.text(rid)

    def _merge(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """A call's parameters: a new dict, the overrides over the defaults."""
        params = {**self._params, **overrides}
        if any(v is None for v in params.values()):
            params = {k: v for k, v in params.items() if v is not None}
        return params

    def _encode(self, payload: Any) -> bytes:
        try:
            return dumps(payload).encode()
        except (TypeError, ValueError) as exc:
            problem = str(exc)
        raise BadRequestError(
            f"{self.provider_name}: the request cannot be encoded as JSON ({problem}); give "
            "config_overrides of strings, finite numbers, bools, lists and dicts",
            provider=self.provider_name,
        )

    def _format_error(self, response: Response, problem: str) -> ResponseFormatError:
        """A :class:`~llmfanout.errors.ResponseFormatError` for a 2xx body we cannot use."""
        return format_error(self.provider_name, self._url, response, self._redactor, problem)


class _ProviderStream:
    """A 2xx response read chunk by chunk, its failures raised as ``ProviderError``."""

    def __init__(self, provider: HTTPProvider, raw: BodyStream) -> None:
        self._provider = provider
        self._raw = raw
        self.status = raw.status
        self.reason = raw.reason
        self.headers = raw.headers

    def __aiter__(self) -> _ProviderStream:
        return self

    async def __anext__(self) -> bytes:
        error: ProviderError | None = None
        try:
            return await anext(self._raw)
        except TransportError as exc:
            error = self._provider._transport_error(exc)
        logger.debug("%s", error)
        raise error

    async def read(self) -> bytes:
        """The rest of the body (at most ``max_response_bytes``)."""
        return b"".join([chunk async for chunk in self])

    async def settle(self) -> None:
        """Take in what of the body has arrived, without waiting; leaving the block then
        closes the connection unless that was the body's end."""
        await self._raw.settle()
