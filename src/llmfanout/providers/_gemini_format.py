"""Our messages in Gemini's ``generateContent`` JSON, and text, tool calls and usage back out.

Pure code, no I/O. What differs from OpenAI's shape: system messages go to the
``systemInstruction`` field; the assistant's role is ``model``; a message is a ``Content``
of ``parts`` (``text``, ``inlineData`` for a ``data:`` image, ``fileData`` for an image
address, ``functionCall``, ``functionResponse``); a tool's answer is a
``functionResponse`` part naming the function (found from the ``tool_call_id``) in a
``user`` turn; sampling options live in ``generationConfig`` under camelCase names. A
part Gemini cannot express is refused with a :class:`~llmfanout.errors.BadRequestError`
naming it, before anything is sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .._base._messages import ImagePart, LLMMessage, OtherPart, TextPart, ToolCall, object_arguments
from ..errors import BadRequestError
from ._sse import Event
from ._streaming import StreamEventError, parse

BLOCKING_FINISH = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
)
"""Finish reasons that mean the answer was withheld (raised as ContentBlockedError)."""

FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"}
"""Gemini's finish reasons in OpenAI's words; the others are kept, in lower case."""

TOP_LEVEL = frozenset(
    {
        "contents",
        "tools",
        "toolConfig",
        "safetySettings",
        "systemInstruction",
        "generationConfig",
        "cachedContent",
        "labels",
    }
)
"""Request fields that go into the body as given; any other parameter is generation config."""

_RENAMED = {
    "max_tokens": "maxOutputTokens",
    "max_completion_tokens": "maxOutputTokens",
    "stop": "stopSequences",
    "n": "candidateCount",
    "tool_config": "toolConfig",
    "safety_settings": "safetySettings",
    "cached_content": "cachedContent",
    "system_instruction": "systemInstruction",
    "generation_config": "generationConfig",
}
_NOT_SENT = frozenset({"model", "stream"})
_PART_KEYS = frozenset(
    {
        "text",
        "inlineData",
        "fileData",
        "functionCall",
        "functionResponse",
        "executableCode",
        "codeExecutionResult",
        "thought",
        "thoughtSignature",
        "videoMetadata",
    }
)
_MEDIA_BY_SUFFIX = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".heic": "image/heic",
    ".heif": "image/heif",
}
_CAMEL = re.compile(r"_([a-z0-9])")
SYNTHETIC_ID = "gemini-call-"
"""The prefix of a tool call id we made up (Gemini sent none); such ids are not sent back."""


def _refuse(where: str, problem: str) -> BadRequestError:
    return BadRequestError(f"gemini: {where} {problem}", provider="gemini")


def camel(name: str) -> str:
    """``max_output_tokens`` as ``maxOutputTokens`` (Gemini's JSON spelling)."""
    return _CAMEL.sub(lambda m: m.group(1).upper(), name)


def part_to_wire(part: TextPart | ImagePart | OtherPart, where: str) -> dict[str, Any]:
    """One content part as a Gemini ``Part``."""
    if type(part) is TextPart:
        return {"text": part.text}
    if type(part) is ImagePart:
        data = part.data()
        if data is not None:
            media_type, encoded = data
            return {"inlineData": {"mimeType": media_type, "data": encoded}}
        file_data = {"fileUri": part.url}
        suffix = part.url.rsplit("?", 1)[0].rsplit(".", 1)[-1].lower()
        media = _MEDIA_BY_SUFFIX.get("." + suffix)
        if media is not None:
            file_data["mimeType"] = media
        return {"fileData": file_data}
    assert type(part) is OtherPart
    given = dict(part.data)
    if _PART_KEYS.intersection(given):  # already a Gemini part: sent as it is
        return {k: v for k, v in given.items() if k != "type"}
    raise _refuse(
        where,
        f"is an {part.type!r} part, which Gemini cannot express; use text and image_url "
        "parts, or give the Gemini part itself (a dict with 'inlineData', 'fileData'...)",
    )


# Alike in shape only (_anthropic_format._blocks): each API's own wire shape for content.
def _parts(message: LLMMessage, where: str) -> list[dict[str, Any]]:
    content = message.content
    if isinstance(content, str):
        return [{"text": content}] if content else []
    return [part_to_wire(p, f"{where}.content[{i}]") for i, p in enumerate(content)]


def tool_call_to_wire(call: ToolCall, where: str) -> dict[str, Any]:
    """One tool call as a ``functionCall`` part (its arguments must be a JSON object)."""
    arguments = object_arguments(call)
    if arguments is None:
        raise _refuse(
            where,
            f"has arguments {call.arguments[:60]!r}, not a JSON object, which Gemini "
            "requires for a functionCall's args",
        )
    function: dict[str, Any] = {"name": call.name, "args": arguments}
    if not call.id.startswith(SYNTHETIC_ID):
        function["id"] = call.id
    if call.signature is None:
        return {"functionCall": function}
    return {"functionCall": function, "thoughtSignature": call.signature}


def _function_response(message: LLMMessage, name: str) -> dict[str, Any]:
    text = message.text
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    response = value if isinstance(value, dict) else {"result": text}
    function: dict[str, Any] = {"name": name, "response": response}
    call_id = message.tool_call_id
    if call_id and not call_id.startswith(SYNTHETIC_ID):
        function["id"] = call_id
    return {"functionResponse": function}


def messages_to_wire(
    messages: Sequence[LLMMessage],
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The ``systemInstruction`` (None without system messages) and the ``contents``."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the answers
    tool_turn: list[dict[str, Any]] | None = None
    for index, m in enumerate(messages):
        where = f"messages[{index}]"
        role = m.role
        if role == "system":
            for i, part in enumerate(_parts(m, where)):
                if "text" not in part:
                    raise _refuse(
                        f"{where}.content[{i}]", "is not text; Gemini's systemInstruction is text"
                    )
                system.append(part)
            continue
        if role == "tool":
            name = m.name or names.get(m.tool_call_id or "")
            if not name:
                raise _refuse(
                    where,
                    "is a 'tool' message whose function Gemini cannot tell: give the "
                    "tool_call_id of an earlier assistant tool call, or name= the function",
                )
            if tool_turn is None:
                tool_turn = []
                contents.append({"role": "user", "parts": tool_turn})
            tool_turn.append(_function_response(m, name))
            continue
        if role == "user" and tool_turn is not None:
            tool_turn.extend(_parts(m, where))  # text after the tool answers, same turn
            tool_turn = None
            continue
        tool_turn = None
        parts = _parts(m, where)
        for i, call in enumerate(m.tool_calls):
            names[call.id] = call.name
            parts.append(tool_call_to_wire(call, f"{where}.tool_calls[{i}]"))
        contents.append({"role": "model" if role == "assistant" else "user", "parts": parts})
    return ({"parts": system} if system else None), contents


def tools_to_wire(tools: object) -> object:
    """``tools`` with OpenAI-format function tools gathered into one ``functionDeclarations``.

    ``{"type": "function", "function": {"name", "description", "parameters"}}`` becomes a
    declaration; Gemini's own tools (``{"functionDeclarations": [...]}``,
    ``{"googleSearch": {}}``...) pass unchanged.
    """
    if not isinstance(tools, list):
        return tools
    declarations: list[dict[str, Any]] = []
    native: list[Any] = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and tool.get("type") == "function":
            declaration = {k: function[k] for k in ("name", "description") if k in function}
            if "parameters" in function:
                declaration["parameters"] = function["parameters"]
            declarations.append(declaration)
        else:
            native.append(tool)
    return ([{"functionDeclarations": declarations}] if declarations else []) + native


_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}


def tool_choice_to_wire(choice: object) -> dict[str, Any]:
    """OpenAI's ``tool_choice`` as Gemini's ``toolConfig``."""
    if isinstance(choice, str) and choice in _MODES:
        return {"functionCallingConfig": {"mode": _MODES[choice]}}
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            config = {"mode": "ANY", "allowedFunctionNames": [function["name"]]}
            return {"functionCallingConfig": config}
    raise _refuse(
        "tool_choice",
        f"is {choice!r}; give 'auto', 'required', 'none', or "
        "{'type': 'function', 'function': {'name': ...}} (or a Gemini toolConfig)",
    )


def request_body(messages: Sequence[LLMMessage], params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``generateContent`` body for ``messages`` with our parameters.

    ``max_tokens`` becomes ``generationConfig.maxOutputTokens``, ``stop`` ``stopSequences``,
    any other unknown key (``temperature``, ``top_k``, ``response_mime_type``...) a
    camelCase ``generationConfig`` field; Gemini's own top-level fields pass as given;
    ``tools`` and ``tool_choice`` in OpenAI's format are rewritten in Gemini's.
    """
    system, contents = messages_to_wire(messages)
    body: dict[str, Any] = {"contents": contents}
    config: dict[str, Any] = {}
    for key, value in params.items():
        if key in _NOT_SENT:
            continue
        name = _RENAMED.get(key, key)
        if name == "tools":
            body["tools"] = tools_to_wire(value)
        elif name == "tool_choice":
            body["toolConfig"] = tool_choice_to_wire(value)
        elif name == "generationConfig" and isinstance(value, Mapping):
            config.update(value)
        elif name in TOP_LEVEL:
            body[name] = value
        elif name == "stopSequences" and isinstance(value, str):
            config[name] = [value]
        else:
            config[camel(name)] = value
    if system is not None:
        given = body.get("systemInstruction")
        if isinstance(given, Mapping) and isinstance(given.get("parts"), list):
            system = {"parts": [*given["parts"], *system["parts"]]}
        body["systemInstruction"] = system
    if config:
        body["generationConfig"] = config
    return body


def text_and_tool_calls(parts: object) -> tuple[str, tuple[ToolCall, ...]]:
    """The text parts joined (thoughts left out), and the ``functionCall`` parts as calls.

    A call without an id (Gemini often sends none) gets ``gemini-call-<index>``, which is
    not sent back to Gemini, so its answer can still refer to it here. A part's
    ``thoughtSignature`` becomes the call's ``signature``, sent back with it.
    """
    texts: list[str] = []
    calls: list[ToolCall] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if isinstance(text, str) and not part.get("thought"):
            texts.append(text)
        function = part.get("functionCall")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            call_id = function.get("id")
            if not isinstance(call_id, str) or not call_id:
                call_id = f"{SYNTHETIC_ID}{len(calls)}"
            arguments = json.dumps(function.get("args") or {}, ensure_ascii=False)
            signature = part.get("thoughtSignature")
            signature = signature if isinstance(signature, str) and signature else None
            calls.append(ToolCall(call_id, function["name"], arguments, signature))
    return "".join(texts), tuple(calls)


def usage_from(usage: object) -> dict[str, int] | None:
    """``usageMetadata`` under our keys (the originals kept beside them).

    ``completion_tokens`` counts the answer and the model's thinking
    (``candidatesTokenCount`` + ``thoughtsTokenCount``), as both are billed as output;
    ``cached_prompt_tokens`` is ``cachedContentTokenCount`` (counted in the prompt too).
    """
    if not isinstance(usage, dict):
        return None
    counts = {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
    prompt = counts.get("promptTokenCount")
    output = counts.get("candidatesTokenCount")
    thoughts = counts.get("thoughtsTokenCount", 0)
    if prompt is not None:
        counts["prompt_tokens"] = prompt
    if output is not None or thoughts:
        counts["completion_tokens"] = (output or 0) + thoughts
    if "totalTokenCount" in counts:
        counts["total_tokens"] = counts["totalTokenCount"]
    elif prompt is not None and "completion_tokens" in counts:
        counts["total_tokens"] = prompt + counts["completion_tokens"]
    if "cachedContentTokenCount" in counts:
        counts["cached_prompt_tokens"] = counts["cachedContentTokenCount"]
    return counts or None


def finish_reason(raw: object) -> str | None:
    """A finish reason in OpenAI's words where there is one (``stop``, ``length``)."""
    if not isinstance(raw, str):
        return None
    return FINISH_REASONS.get(raw, raw.lower())


def blocked_reason(body: Mapping[str, Any]) -> str | None:
    """Why the answer was withheld (``"SAFETY"``...), or None when it was not."""
    feedback = body.get("promptFeedback")
    if isinstance(feedback, dict) and isinstance(feedback.get("blockReason"), str):
        return str(feedback["blockReason"])
    candidates = body.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        reason = candidates[0].get("finishReason")
        if reason in BLOCKING_FINISH:
            return str(reason)
    return None


class GeminiStream:
    """Folds ``streamGenerateContent?alt=sse`` events into one ``generateContent`` body.

    Each event is a whole ``GenerateContentResponse`` holding the next pieces: the text
    and function-call parts of candidate 0 are gathered; ``usageMetadata``,
    ``modelVersion`` and ``responseId`` are taken from the latest event. Gemini sends no
    end marker: the answer is whole once an event carries a ``finishReason`` (or a
    ``promptFeedback.blockReason``); a body that ends before one is a cut stream.
    """

    terminal = "a candidate's finishReason"

    def __init__(self) -> None:
        self.done = False
        self._parts: list[dict[str, Any]] = []
        self._text: list[str] = []
        self._head: dict[str, Any] = {}
        self._candidate: dict[str, Any] = {}

    def feed(self, event: Event) -> str | None:
        """Take one event (see :class:`~._streaming.Accumulator`)."""
        chunk = parse(event)
        error = chunk.get("error")
        if error:
            detail = error if isinstance(error, dict) else {"message": str(error)}
            kind = detail.get("status") or detail.get("code")
            raise StreamEventError(
                {"error": {"type": str(kind) if kind else None, "message": detail.get("message")}}
            )
        for key in ("usageMetadata", "modelVersion", "responseId", "promptFeedback"):
            if key in chunk:
                self._head[key] = chunk[key]
        feedback = chunk.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            self.done = True
            return None
        progress: str | None = None
        for candidate in chunk.get("candidates") or ():
            if not isinstance(candidate, dict) or candidate.get("index", 0) != 0:
                continue
            for key, value in candidate.items():
                if key != "content":
                    self._candidate[key] = value
            content = candidate.get("content")
            for part in content.get("parts") or () if isinstance(content, dict) else ():
                if not isinstance(part, dict):
                    continue
                text = part.get("text")
                if isinstance(text, str) and set(part) <= {"text", "thoughtSignature"}:
                    self._text.append(text)  # plain text: joined into one part at the end
                    if text:
                        progress = (progress or "") + text
                    continue
                self._flush_text()
                self._parts.append(part)
                progress = progress or ""
            if candidate.get("finishReason"):
                self.done = True
        return progress

    def _flush_text(self) -> None:
        if self._text:
            self._parts.append({"text": "".join(self._text)})
            self._text = []

    def body(self) -> dict[str, Any]:
        """The ``generateContent`` body the stream amounts to."""
        self._flush_text()
        body = dict(self._head)
        if self._candidate or self._parts:
            candidate = {
                **self._candidate,
                "content": {"role": "model", "parts": list(self._parts)},
            }
            body["candidates"] = [candidate]
        return body
