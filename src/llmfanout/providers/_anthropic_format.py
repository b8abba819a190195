"""Our messages in Anthropic's Messages API JSON, and tool calls and usage back out of it.

What differs from OpenAI's shape: system messages go to the top-level ``system`` field;
an image is a block with a ``url`` or ``base64`` source; an assistant's tool calls are
``tool_use`` blocks; tool answers are ``tool_result`` blocks at the start of the next
``user`` message (consecutive tool messages share one). A part the API cannot express
is refused with a :class:`~llmfanout.errors.BadRequestError` naming it.

Structured output: OpenAI's ``response_format`` (the one spelling the rest of the library
sends) becomes what the Messages API offers for it: a ``json_schema`` one a single tool
whose ``input_schema`` is the schema, forced with ``tool_choice``, so the tool's input is
the object; a ``json_object`` one a line of the system prompt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .._base._encoded import EncodedDict, EncodedList
from .._base._messages import ImagePart, LLMMessage, OtherPart, TextPart, ToolCall, object_arguments
from ..errors import BadRequestError
from ._sse import Event
from ._streaming import StreamEventError, StreamFormatError, parse

IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
CACHE_KEYS = ("cache_creation_input_tokens", "cache_read_input_tokens")


def _refuse(where: str, problem: str) -> BadRequestError:
    return BadRequestError(f"anthropic: {where} {problem}", provider="anthropic")


def part_to_block(part: TextPart | ImagePart | OtherPart, where: str) -> dict[str, Any]:
    """One content part as an Anthropic content block."""
    if type(part) is TextPart:
        return {"type": "text", "text": part.text}
    if type(part) is ImagePart:
        if part.detail not in (None, "auto"):
            raise _refuse(
                where,
                f"is an image with detail={part.detail!r}, which the Messages API cannot "
                "express; remove detail for AnthropicProvider",
            )
        data = part.data()
        if data is None:
            return {"type": "image", "source": {"type": "url", "url": part.url}}
        media_type, encoded = data
        if media_type not in IMAGE_MEDIA_TYPES:
            raise _refuse(
                where,
                f"is a {media_type!r} data URL; the Messages API takes "
                f"{', '.join(sorted(IMAGE_MEDIA_TYPES))} images",
            )
        source = {"type": "base64", "media_type": media_type, "data": encoded}
        return {"type": "image", "source": source}
    assert type(part) is OtherPart
    raise _refuse(
        where,
        f"is an {part.type!r} part, which the Messages API cannot express; send it with "
        "OpenAIProvider, or use text and image_url parts",
    )


# Alike in shape only (_gemini_format._parts): each API's own wire shape for content.
def _blocks(message: LLMMessage, where: str) -> list[dict[str, Any]]:
    content = message.content
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [part_to_block(p, f"{where}.content[{i}]") for i, p in enumerate(content)]


def _tool_use(call: ToolCall, where: str) -> dict[str, Any]:
    arguments = object_arguments(call)
    if arguments is None:
        raise _refuse(
            where,
            f"has arguments {call.arguments[:60]!r}, not a JSON object, which the Messages "
            "API requires for tool_use input",
        )
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": arguments}


def _system_text(message: LLMMessage, where: str) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    for i, part in enumerate(content):
        if type(part) is not TextPart:
            raise _refuse(
                f"{where}.content[{i}]",
                "is not text; the Messages API's system prompt takes text only",
            )
    return message.text


def messages_to_wire(messages: Sequence[LLMMessage]) -> tuple[list[str], list[dict[str, Any]]]:
    """The system texts, and the ``messages`` array, for ``messages``."""
    system: list[str] = []
    wire: list[dict[str, Any]] = []
    tool_turn: list[dict[str, Any]] | None = None  # the blocks of a user turn of tool results
    for index, m in enumerate(messages):
        where = f"messages[{index}]"
        role = m.role
        if role == "system":
            system.append(_system_text(m, where))
            continue
        if role == "tool":
            if not m.tool_call_id:
                raise _refuse(
                    where,
                    "is a 'tool' message with no tool_call_id; give the id of the tool "
                    "call it answers (the Messages API sends it as a tool_result)",
                )
            content = m.content
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id,
                "content": content if isinstance(content, str) else _blocks(m, where),
            }
            if tool_turn is None:
                tool_turn = []
                wire.append({"role": "user", "content": tool_turn})
            tool_turn.append(result)
            continue
        if role == "user" and tool_turn is not None:
            tool_turn.extend(_blocks(m, where))  # text after the tool results, same turn
            tool_turn = None
            continue
        tool_turn = None
        if m.tool_calls:
            calls = [_tool_use(c, f"{where}.tool_calls[{i}]") for i, c in enumerate(m.tool_calls)]
            wire.append({"role": role, "content": [*_blocks(m, where), *calls]})
        elif type(m.content) is str:
            wire.append({"role": role, "content": m.content})
        else:
            wire.append({"role": role, "content": _blocks(m, where)})
    return system, wire


def tools_to_wire(tools: object) -> object:
    """``tools`` with OpenAI-format function tools rewritten in Anthropic's shape.

    ``{"type": "function", "function": {"name", "description", "parameters"}}`` becomes
    ``{"name", "description", "input_schema"}``, so one tool list serves both providers;
    Anthropic's own tool definitions pass unchanged.
    """
    if not isinstance(tools, list):
        return tools
    wire = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and tool.get("type") == "function":
            converted = {"name": function.get("name")}
            if "description" in function:
                converted["description"] = function["description"]
            converted["input_schema"] = function.get(
                "parameters", {"type": "object", "properties": {}}
            )
            wire.append(converted)
        else:
            wire.append(tool)
    return wire


JSON_ONLY = "Answer with a single JSON object and nothing else."
TOOL_DESCRIPTION = "Give your answer as this tool's input, matching its schema exactly."


def response_format_to_wire(payload: dict[str, Any]) -> str | None:
    """Turn ``payload["response_format"]`` into a forced tool, in place; return a line to
    add to the system prompt, if any. Refuses a schema whose root is not an object (the
    API's tool input is one) with a :class:`~llmfanout.errors.BadRequestError`."""
    given = payload.pop("response_format")
    shared = given.derived if type(given) is EncodedDict else None
    made = None if shared is None else shared.get("anthropic")
    if made is None:
        made = _forced_tool(given)
        if shared is not None:  # made and encoded once per schema, not per call
            shared["anthropic"] = made
    if isinstance(made, str) or made is None:
        return made
    tool, alone, choice = made
    tools = payload.get("tools")
    payload["tools"] = [*tools, tool] if isinstance(tools, list) and tools else alone
    payload["tool_choice"] = choice
    return None


_Forced = tuple[EncodedDict, EncodedList, EncodedDict]


def _forced_tool(given: Any) -> str | _Forced | None:
    """What ``response_format`` ``given`` asks of the Messages API: a system line (or
    None) for ``json_object`` or ``text``; for ``json_schema`` the tool, the tools list
    of it alone, and the ``tool_choice`` forcing it."""
    kind = given.get("type") if isinstance(given, dict) else None
    if kind == "json_object":
        return JSON_ONLY
    if kind != "json_schema":
        if kind == "text":
            return None
        raise _refuse("response_format", f"is {given!r}; give a json_schema or json_object one")
    spec = given.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise _refuse("response_format", "has no json_schema.schema object")
    schema = spec["schema"]
    if schema.get("type", "object") != "object":
        raise _refuse(
            "response_format",
            f"has a schema of type {schema.get('type')!r}; a tool's input is a JSON object, "
            "so give a schema whose root is an object",
        )
    name = spec.get("name") or "response"
    description = spec.get("description", TOOL_DESCRIPTION)
    tool = EncodedDict({"name": name, "description": description, "input_schema": schema})
    return tool, EncodedList([tool]), EncodedDict({"type": "tool", "name": name})


_CHOICES = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}


def tool_choice_to_wire(choice: object) -> object:
    """OpenAI's ``tool_choice`` (``"auto"``, ``"required"``, ``"none"``, a named function)
    in Anthropic's shape; Anthropic's own spelling passes unchanged."""
    if isinstance(choice, str) and choice in _CHOICES:
        return dict(_CHOICES[choice])
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, dict) and "name" in function:
            return {"type": "tool", "name": function["name"]}
    return choice


def text_and_tool_calls(blocks: list[Any]) -> tuple[str, tuple[ToolCall, ...]]:
    """The text blocks joined, and the ``tool_use`` blocks as tool calls."""
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if isinstance(call_id, str) and isinstance(name, str):
                arguments = json.dumps(block.get("input", {}), ensure_ascii=False)
                calls.append(ToolCall(call_id, name, arguments))
    return "".join(texts), tuple(calls)


def usage_from(usage: object) -> dict[str, int] | None:
    """Anthropic's token counts under our keys (the originals kept beside them).

    ``prompt_tokens`` counts cached input too, as OpenAI's does; the cached part is in
    ``cached_prompt_tokens`` (cache reads) and ``cache_write_tokens`` (cache writes).
    """
    if not isinstance(usage, dict):
        return None
    counts = {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
    input_tokens = counts.get("input_tokens")
    output_tokens = counts.get("output_tokens")
    if input_tokens is not None:
        counts["prompt_tokens"] = input_tokens + sum(counts.get(k, 0) for k in CACHE_KEYS)
    if output_tokens is not None:
        counts["completion_tokens"] = output_tokens
    if input_tokens is not None and output_tokens is not None:
        counts["total_tokens"] = counts["prompt_tokens"] + output_tokens
    if "cache_read_input_tokens" in counts:
        counts["cached_prompt_tokens"] = counts["cache_read_input_tokens"]
    if "cache_creation_input_tokens" in counts:
        counts["cache_write_tokens"] = counts["cache_creation_input_tokens"]
    return counts or None


class AnthropicStream:
    """Folds Messages API stream events into a ``message`` body.

    ``message_start`` gives the id, model and input usage; each content block is built
    from its ``content_block_start`` and deltas (text, a tool's input as JSON pieces,
    thinking); ``message_delta`` gives the stop reason and the output usage;
    ``message_stop`` ends it. Unknown event types are skipped, as the API asks.
    """

    terminal = "event: message_stop"

    def __init__(self) -> None:
        self.done = False
        self._message: dict[str, Any] = {}
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, list[str]] = {}

    def feed(self, event: Event) -> str | None:
        """Take one event (see :class:`~._streaming.Accumulator`)."""
        data = parse(event)
        kind = data.get("type", event.event)
        if kind == "error":
            raise StreamEventError(data)
        if kind == "message_start":
            message = data.get("message")
            if not isinstance(message, dict):
                raise StreamFormatError("has a message_start event with no message")
            self._message = {k: v for k, v in message.items() if k != "content"}
            return None
        if kind == "content_block_start":
            index, block = data.get("index"), data.get("content_block")
            if not isinstance(index, int) or not isinstance(block, dict):
                raise StreamFormatError("has a content_block_start without index or block")
            self._blocks[index] = dict(block)
            if block.get("type") == "tool_use":
                self._json[index] = []
                return ""
            text = block.get("text")
            return text if isinstance(text, str) and text else None
        if kind == "content_block_delta":
            return self._delta(data)
        if kind == "content_block_stop":
            self._close_block(data.get("index"))
        elif kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict):
                self._message.update(delta)
            usage = data.get("usage")
            if isinstance(usage, dict):  # cumulative counts: they replace the start's
                self._message["usage"] = {**(self._message.get("usage") or {}), **usage}
        elif kind == "message_stop":
            self.done = True
        return None

    def _delta(self, data: dict[str, Any]) -> str | None:
        index, delta = data.get("index"), data.get("delta")
        block = self._blocks.get(index) if isinstance(index, int) else None
        if block is None or not isinstance(delta, dict):
            raise StreamFormatError("has a content_block_delta for a block never started")
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text", "")
            block["text"] = block.get("text", "") + text
            return text or None
        if kind == "input_json_delta":
            self._json.setdefault(index, []).append(delta.get("partial_json", ""))  # type: ignore[arg-type]
            return ""
        if kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
        elif kind == "signature_delta":
            block["signature"] = delta.get("signature")
        return None

    def _close_block(self, index: object) -> None:
        pieces = self._json.pop(index, None) if isinstance(index, int) else None
        if pieces is None:
            return
        text = "".join(pieces)
        try:
            self._blocks[index]["input"] = json.loads(text) if text.strip() else {}  # type: ignore[index]
        except ValueError:
            raise StreamFormatError(f"has tool_use input that is not JSON: {text[:80]!r}") from None

    def body(self) -> dict[str, Any]:
        """The ``message`` body the stream amounts to."""
        blocks = [self._blocks[i] for i in sorted(self._blocks)]
        return {**self._message, "content": blocks}
