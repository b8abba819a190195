"""What a span or a metric says about a call, in the GenAI semantic conventions' names.

Pure functions of the provider, the request, the answer or the error: no OpenTelemetry
here, so the rules (what is recorded, what never is) are testable on their own. Nothing
secret can come out: the provider is described by its name and its server's host and
port only (never its URL, which may carry credentials, nor its headers); an error by
its type or HTTP status, never its message; any text that comes from the server (the
model it names, its finish reasons, the answer when content is captured) passes the
provider's redactor first, so a server echoing the key records ``***``.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Attributes = dict[str, Any]

OPERATION = "chat"
"""``gen_ai.operation.name`` of every call: a chat completion (OpenAI, Anthropic, echo)."""

_KNOWN = {"openai": "openai", "anthropic": "anthropic"}


def provider_name(provider: object) -> str:
    """``gen_ai.provider.name``: the conventions' value for our providers, else ours."""
    name = getattr(provider, "provider_name", None)
    if isinstance(name, str) and name in _KNOWN:
        return _KNOWN[name]
    kind = type(provider).__name__
    if kind == "EchoProvider":
        return "llmfanout.echo"
    return name if isinstance(name, str) and name else kind.lower()


def server(provider: object) -> tuple[str, int] | None:
    """``(server.address, server.port)`` from the provider's ``base_url``, if it has one."""
    url = getattr(provider, "base_url", None)
    if not isinstance(url, str):
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return host, port


def redactor(provider: object) -> Callable[[str], str]:
    """The provider's key redactor (the built-in HTTP providers have one), else identity."""
    redact = getattr(getattr(provider, "_redactor", None), "text", None)
    return redact if callable(redact) else _same


def _same(text: str) -> str:
    return text


def base(provider: object) -> Attributes:
    """What every span and metric point of this provider carries (low cardinality)."""
    attributes: Attributes = {
        "gen_ai.operation.name": OPERATION,
        "gen_ai.provider.name": provider_name(provider),
    }
    where = server(provider)
    if where is not None:
        attributes["server.address"], attributes["server.port"] = where
    return attributes


def request_model(provider: object, overrides: Mapping[str, Any] | None) -> str:
    """The model asked for: the call's ``model`` override, else the provider's."""
    model = overrides.get("model") if overrides else None
    if not isinstance(model, str) or not model:
        model = getattr(provider, "model", None)
    return model if isinstance(model, str) and model else "unknown"


_REQUEST = (
    ("max_tokens", "gen_ai.request.max_tokens", int),
    ("max_completion_tokens", "gen_ai.request.max_tokens", int),
    ("temperature", "gen_ai.request.temperature", float),
    ("top_p", "gen_ai.request.top_p", float),
    ("seed", "gen_ai.request.seed", int),
)


def request(overrides: Mapping[str, Any] | None) -> Attributes:
    """The request parameters the conventions name, from the call's overrides."""
    attributes: Attributes = {}
    if not overrides:
        return attributes
    for key, name, kind in _REQUEST:
        value = overrides.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attributes[name] = kind(value)
    return attributes


def response(answer: object, redact: Callable[[str], str]) -> Attributes:
    """The answer's model, finish reason and token usage."""
    attributes: Attributes = {}
    model = getattr(answer, "model", None)
    if model and isinstance(model, str):
        attributes["gen_ai.response.model"] = redact(model)
    reason = getattr(answer, "finish_reason", None)
    if reason and isinstance(reason, str):
        attributes["gen_ai.response.finish_reasons"] = (redact(reason),)
    usage = getattr(answer, "usage", None)
    if usage and isinstance(usage, dict | Mapping):  # a dict first: the ABC check is slow
        for key, name in _USAGE:
            value = usage.get(key)
            if type(value) is int:  # (not a bool)
                attributes[name] = value
    return attributes


_USAGE = (
    ("prompt_tokens", "gen_ai.usage.input_tokens"),
    ("completion_tokens", "gen_ai.usage.output_tokens"),
    ("cached_prompt_tokens", "gen_ai.usage.cache_read.input_tokens"),
    ("cache_write_tokens", "gen_ai.usage.cache_creation.input_tokens"),
)


def error_type(exc: BaseException) -> str:
    """``error.type``: the HTTP status for an answer that had one, ``timeout`` for a time
    limit, else the exception's class name (never its message, which may quote the server)."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool):
        return str(status)
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__qualname__


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of the answer ``exc`` came from, if any."""
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) and not isinstance(status, bool) else None


def input_messages(messages: Sequence[object], redact: Callable[[str], str]) -> str:
    """``gen_ai.input.messages`` (only with ``capture_content=True``): the conventions'
    JSON shape, ``[{"role", "parts": [{"type": "text", "content"}]}]``."""
    shown = []
    for message in messages:
        content = getattr(message, "content", "")
        text = content if isinstance(content, str) else str(content)
        shown.append(
            {
                "role": str(getattr(message, "role", "user")),
                "parts": [{"type": "text", "content": redact(text)}],
            }
        )
    return json.dumps(shown, ensure_ascii=False)


def output_messages(answer: object, redact: Callable[[str], str]) -> str:
    """``gen_ai.output.messages`` (only with ``capture_content=True``)."""
    content = getattr(answer, "content", "")
    text = content if isinstance(content, str) else str(content)
    message: dict[str, Any] = {
        "role": "assistant",
        "parts": [{"type": "text", "content": redact(text)}],
    }
    reason = getattr(answer, "finish_reason", None)
    if isinstance(reason, str):
        message["finish_reason"] = redact(reason)
    return json.dumps([message], ensure_ascii=False)
