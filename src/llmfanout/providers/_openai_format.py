"""Our messages in OpenAI's Chat Completions JSON, and tool calls and usage back out of it.

Structured output is OpenAI's own ``response_format`` (``json_schema``, strict), passed
through as given; for a server that refuses ``json_schema`` the provider falls back to
``json_object`` with the schema in the prompt (:func:`json_object_request`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .._base._encoded import EncodedDict
from .._base._messages import ImagePart, LLMMessage, OtherPart, TextPart, ToolCall
from ..errors import ProviderError
from ._sse import Event
from ._streaming import StreamEventError, StreamFormatError, parse

USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def part_to_wire(part: TextPart | ImagePart | OtherPart) -> dict[str, Any]:
    """One content part as OpenAI's JSON."""
    if type(part) is TextPart:
        return {"type": "text", "text": part.text}
    if type(part) is ImagePart:
        image: dict[str, Any] = {"url": part.url}
        if part.detail is not None:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    assert type(part) is OtherPart
    return dict(part.data)


def tool_call_to_wire(call: ToolCall) -> dict[str, Any]:
    """One tool call as it appears in an assistant message."""
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def message_to_wire(message: LLMMessage) -> dict[str, Any]:
    """One message as OpenAI's JSON."""
    content = message.content
    wire: dict[str, Any] = {
        "role": message.role,
        "content": content if isinstance(content, str) else [part_to_wire(p) for p in content],
    }
    if message.name:
        wire["name"] = message.name
    if message.tool_calls:
        wire["tool_calls"] = [tool_call_to_wire(c) for c in message.tool_calls]
        if not content:
            # An answer that is only tool calls: "" rather than the null OpenAI sends, which
            # llama.cpp's server refuses (500); OpenAI, vLLM, Ollama and LiteLLM take "".
            wire["content"] = ""
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    return wire


def messages_to_wire(messages: Sequence[LLMMessage]) -> list[dict[str, Any]]:
    """The ``messages`` array; plain text messages take a short path (the common case)."""
    return [
        {"role": m.role, "content": m.content}
        if type(m.content) is str and not (m.name or m.tool_calls or m.tool_call_id is not None)
        else message_to_wire(m)
        for m in messages
    ]


def tool_calls_from(raw: object) -> tuple[ToolCall, ...]:
    """The function calls in an answer's ``tool_calls`` list (other kinds stay in ``raw``).

    A call without an id (some compatible servers leave it out) gets ``call_<index>``, so
    that its answer can still refer to it.
    """
    if not isinstance(raw, list):
        return ()
    calls = []
    for index, item in enumerate(raw):
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            continue
        call_id = item.get("id") or f"call_{index}"
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # some compatible servers send the object itself
            arguments = json.dumps(arguments, ensure_ascii=False)
        text = arguments if isinstance(arguments, str) else ""
        calls.append(ToolCall(str(call_id), function["name"], text))
    return tuple(calls)


def usage_from(usage: object) -> dict[str, int] | None:
    """Token counts under our keys, with ``cached_prompt_tokens`` where OpenAI reports them."""
    if not isinstance(usage, dict):
        return None
    counts = {k: v for k in USAGE_KEYS if isinstance(v := usage.get(k), int)}
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        cached = details.get("cached_tokens")
        if isinstance(cached, int) and not isinstance(cached, bool):
            counts["cached_prompt_tokens"] = cached
    return counts or None


class OpenAIStream:
    """Folds Chat Completions stream chunks into a ``chat.completion`` body.

    Text deltas are joined; tool calls are assembled by their ``index`` (the id and name
    come first, the arguments in pieces); usage comes from the last chunk when
    ``stream_options.include_usage`` is set. Only choice 0 is read, as for whole answers.
    """

    terminal = "data: [DONE]"

    def __init__(self) -> None:
        self.done = False
        self._text: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self._finish: str | None = None
        self._head: dict[str, Any] = {}
        self._usage: Any = None

    def feed(self, event: Event) -> str | None:
        """Take one event (see :class:`~._streaming.Accumulator`)."""
        if event.data.strip() == "[DONE]":
            self.done = True
            return None
        chunk = parse(event)
        if chunk.get("error"):
            raise StreamEventError(chunk)
        for key in ("id", "model", "created", "system_fingerprint"):
            if key in chunk and key not in self._head:
                self._head[key] = chunk[key]
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        progress: str | None = None
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._text.append(text)
                progress = (progress or "") + text
            for call in delta.get("tool_calls") or ():
                self._add_call(call)
                progress = progress or ""
            if isinstance(choice.get("finish_reason"), str):
                self._finish = choice["finish_reason"]
        return progress

    def _add_call(self, call: Any) -> None:
        if not isinstance(call, dict):
            raise StreamFormatError(f"has a tool call delta that is not an object: {call!r}")
        index = call.get("index", 0)
        slot = self._calls.setdefault(
            index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if isinstance(call.get("id"), str):
            slot["id"] = call["id"]
        function = call.get("function") or {}
        for key in ("name", "arguments"):
            piece = function.get(key)
            if isinstance(piece, str):
                slot["function"][key] += piece

    def body(self) -> dict[str, Any]:
        """The ``chat.completion`` body the stream amounts to."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self._text)}
        if self._calls:
            message["tool_calls"] = [self._calls[i] for i in sorted(self._calls)]
        choice = {"index": 0, "message": message, "finish_reason": self._finish}
        body = {**self._head, "object": "chat.completion", "choices": [choice]}
        if self._usage is not None:
            body["usage"] = self._usage
        return body


# -- structured output -----------------------------------------------------------------------

SCHEMA_PROMPT = (
    "Answer with a single JSON object, and nothing else, that matches this JSON Schema:\n"
)


def wants_json_schema(params: Mapping[str, Any] | None) -> bool:
    """Whether the call asks for ``response_format`` of type ``json_schema``."""
    given = params.get("response_format") if params else None
    return isinstance(given, dict) and given.get("type") == "json_schema"


def refuses_json_schema(error: ProviderError) -> bool:
    """Whether a 400/422 answer says the server does not take ``json_schema`` (many
    OpenAI-compatible servers do not): its message names ``response_format`` or it."""
    if error.status_code not in (400, 422):
        return False
    said = " ".join(
        str(part) for part in (error.error_message, error.body, error.message) if part
    ).lower()
    return "json_schema" in said or "response_format" in said


def json_object_request(
    messages: Sequence[LLMMessage], params: Mapping[str, Any]
) -> tuple[list[LLMMessage], dict[str, Any]]:
    """The fallback for a server that refuses ``json_schema``: ``json_object`` mode, with
    the schema in a system message first (JSON mode wants "JSON" said in the prompt)."""
    given = params["response_format"]
    shared = given.derived if type(given) is EncodedDict else None
    prompt = None if shared is None else shared.get("openai:json_object")
    if prompt is None:
        spec = given.get("json_schema") or {}
        schema = json.dumps(spec.get("schema", {}), ensure_ascii=False, separators=(",", ":"))
        prompt = LLMMessage("system", SCHEMA_PROMPT + schema)
        if shared is not None:  # made once per schema, as the fragment itself
            shared["openai:json_object"] = prompt
    return [prompt, *messages], {**params, "response_format": {"type": "json_object"}}
