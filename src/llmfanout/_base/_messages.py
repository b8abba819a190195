"""Chat messages: roles, content parts, tool calls, and reading them from plain mappings.

The shapes follow OpenAI's Chat Completions format, which every SDK and most datasets use:
``{"role": "user", "content": "..."}`` or a list of content parts (``text``, ``image_url``),
an assistant's ``tool_calls`` and a tool's ``tool_call_id``. Each provider maps these
values to its own wire format. Errors name the place at fault (``messages[2].content[1]``)
so the task's tag can be put in front of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeAlias

import attrs

Role = Literal["system", "user", "assistant", "tool"]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})
IMAGE_DETAILS = frozenset({"auto", "low", "high"})
# OpenAI part types we pass through unchanged (another provider refuses them by name).
OTHER_PART_TYPES = frozenset({"input_audio", "file"})
MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})


def a_kind(value: object) -> str:
    """``value``'s type with its article, for messages: "an int", "a dict", "an LLMTask"."""
    name = type(value).__name__
    if name[:2].isupper():  # an acronym is read letter by letter: "an LLMTask", "a URL"
        article = "an" if name[0] in "AEFHILMNORSX" else "a"
    else:
        article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {name}"


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- content parts -------------------------------------------------------------------------


def _check_text(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"TextPart.text must be a str, not {type(value).__name__}")


@attrs.frozen
class TextPart:
    """A text content part: ``{"type": "text", "text": ...}``."""

    text: str = attrs.field(validator=_check_text)


def check_image_url(url: object, where: str) -> str:
    """``url`` if it is an http(s) URL or a ``data:<type>;base64,`` URL; raise otherwise."""
    if not isinstance(url, str):
        raise TypeError(f"{where} must be a str URL, not {type(url).__name__}")
    if url.startswith(("https://", "http://")) and len(url) > len("https://"):
        return url
    if url.startswith("data:"):
        header, comma, data = url.partition(",")
        if comma and header.endswith(";base64") and "/" in header and data:
            return url
        raise ValueError(
            f"{where} is a data: URL not of the form 'data:image/png;base64,<data>'; "
            "encode the image as base64 with its media type"
        )
    raise ValueError(
        f"{where} is {_short(url)}; give an https:// URL or a data:image/...;base64, URL"
    )


@attrs.frozen
class ImagePart:
    """An image content part: ``{"type": "image_url", "image_url": {"url": ..., "detail": ...}}``.

    ``url`` is an ``https://`` address or a ``data:image/png;base64,...`` URL; ``detail``
    (``"auto"``, ``"low"``, ``"high"``) is OpenAI's resolution hint.
    """

    url: str = attrs.field()
    detail: str | None = attrs.field(default=None)

    @url.validator
    def _check_url(self, attribute: Any, value: object) -> None:
        check_image_url(value, "ImagePart.url")

    @detail.validator
    def _check_detail(self, attribute: Any, value: object) -> None:
        if value is not None and value not in IMAGE_DETAILS:
            raise ValueError(f"ImagePart.detail is {value!r}; use 'auto', 'low' or 'high'")

    def data(self) -> tuple[str, str] | None:
        """``(media_type, base64_data)`` of a ``data:`` URL, or None for an address."""
        if not self.url.startswith("data:"):
            return None
        header, _, data = self.url.partition(",")
        return header[len("data:") : -len(";base64")], data


def _as_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    return dict(value)


@attrs.frozen
class OtherPart:
    """A content part of another OpenAI type (``input_audio``, ``file``), sent as given."""

    type: str
    data: Mapping[str, Any] = attrs.field(converter=_as_dict)


ContentPart: TypeAlias = TextPart | ImagePart | OtherPart
Content: TypeAlias = str | tuple[ContentPart, ...]


def to_part(value: object, where: str) -> ContentPart:
    """One content part from a part value or an OpenAI-format mapping."""
    if isinstance(value, TextPart | ImagePart | OtherPart):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{where} is {a_kind(value)}; give a content part such as "
            '{"type": "text", "text": "..."}'
        )
    kind = value.get("type")
    if kind == "text":
        text = value.get("text")
        if not isinstance(text, str):
            raise TypeError(f'{where} is a text part with no "text" string')
        _no_extra_keys(value, {"type", "text"}, where)
        return TextPart(text)
    if kind == "image_url":
        image = value.get("image_url")
        if isinstance(image, str):  # some datasets flatten it
            image = {"url": image}
        if not isinstance(image, Mapping):
            raise TypeError(
                f'{where} is an image_url part with no "image_url" object; give '
                '{"type": "image_url", "image_url": {"url": "https://..."}}'
            )
        _no_extra_keys(value, {"type", "image_url"}, where)
        _no_extra_keys(image, {"url", "detail"}, f"{where}.image_url")
        url = check_image_url(image.get("url"), f"{where}.image_url.url")
        detail = image.get("detail")
        if detail is not None and detail not in IMAGE_DETAILS:
            raise ValueError(
                f"{where}.image_url.detail is {_short(detail)}; use 'auto', 'low' or 'high'"
            )
        return ImagePart(url, detail)
    if kind in OTHER_PART_TYPES:
        return OtherPart(str(kind), value)
    raise ValueError(
        f"{where} has type {_short(kind)}; use 'text' or 'image_url' "
        f"(or {', '.join(sorted(OTHER_PART_TYPES))}, which only OpenAIProvider sends)"
    )


def _no_extra_keys(value: Mapping[Any, Any], allowed: set[str], where: str) -> None:
    extra = [k for k, v in value.items() if k not in allowed and v is not None]
    if extra:
        raise ValueError(
            f"{where} has {_short(extra[0])}, which llmfanout cannot send; "
            f"use only {', '.join(sorted(allowed))}"
        )


def to_content(value: object, where: str) -> Content:
    """A message's content: a string, or a tuple of content parts from a list of them."""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple) and value and all(type(p) in _PART_TYPES for p in value):
        return value  # already ours: the common case when copying a message
    if isinstance(value, list | tuple):
        # No parts is no content: "" keeps one spelling of it, so equal messages compare equal.
        return tuple(to_part(part, f"{where}[{i}]") for i, part in enumerate(value)) or ""
    raise TypeError(f"{where} must be a str or a list of content parts, not {type(value).__name__}")


_PART_TYPES = (TextPart, ImagePart, OtherPart)


# -- tool calls ----------------------------------------------------------------------------


def _arguments(value: object) -> str:
    if isinstance(value, Mapping):  # a parsed object is written back as JSON text
        return json.dumps(value, ensure_ascii=False)
    return value  # type: ignore[return-value]  # the validator refuses the rest


def _check_str_field(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(
            f"{type(instance).__name__}.{attribute.name} must be a str, not {type(value).__name__}"
        )


def _check_optional_str_field(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    if value is not None:
        _check_str_field(instance, attribute, value)


@attrs.frozen
class ToolCall:
    """A tool (function) call the model asked for.

    ``id`` is what the tool's answer refers to (``tool_call_id``); ``arguments`` is the
    JSON text the model produced (a mapping given here is written as JSON). It may not be
    valid JSON: :meth:`parsed_arguments` raises ``ValueError`` then.

    ``signature`` is an opaque token the provider gave with the call and wants back with
    it on the next turn (Gemini's ``thoughtSignature``, which Gemini 3 requires in a tool
    round trip); ``LLMResponse.message()`` keeps it, and providers without such a token
    ignore it.
    """

    id: str = attrs.field(validator=_check_str_field)
    name: str = attrs.field(validator=_check_str_field)
    arguments: str = attrs.field(default="{}", converter=_arguments, validator=_check_str_field)
    signature: str | None = attrs.field(default=None, validator=_check_optional_str_field)

    def parsed_arguments(self) -> Any:
        """``arguments`` parsed as JSON (an empty string reads as ``{}``)."""
        return json.loads(self.arguments) if self.arguments.strip() else {}


def object_arguments(call: ToolCall) -> dict[str, Any] | None:
    """``call``'s arguments as a JSON object, or ``None`` when they are not valid JSON or not
    an object (what Anthropic's ``tool_use`` input and Gemini's ``functionCall`` args must be)."""
    try:
        arguments = call.parsed_arguments()
    except ValueError:
        return None
    return arguments if isinstance(arguments, dict) else None


def to_tool_call(value: object, where: str) -> ToolCall:
    """A tool call from a ``ToolCall`` or a mapping in OpenAI's or the flat shape."""
    if isinstance(value, ToolCall):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{where} is {a_kind(value)}; give a ToolCall or "
            '{"id": ..., "type": "function", "function": {"name": ..., "arguments": ...}}'
        )
    function = value.get("function", value)  # OpenAI's nesting, or flat
    if not isinstance(function, Mapping):
        raise TypeError(f'{where}.function must be an object with "name" and "arguments"')
    call_id, name = value.get("id"), function.get("name")
    arguments = function.get("arguments", "{}")
    for field, given in (("id", call_id), ("name", name)):
        if not isinstance(given, str) or not given:
            raise ValueError(f"{where} has no {field!r}; a tool call needs an id and a name")
    if not isinstance(arguments, str | Mapping):
        raise TypeError(
            f"{where}.arguments must be JSON text or an object, not {type(arguments).__name__}"
        )
    signature = value.get("signature")
    if signature is not None and not isinstance(signature, str):
        raise TypeError(f"{where}.signature must be a str, not {type(signature).__name__}")
    return ToolCall(call_id, name, arguments, signature)  # type: ignore[arg-type]


def _to_tool_calls(value: object) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    if isinstance(value, tuple) and all(type(c) is ToolCall for c in value):
        return value
    if not isinstance(value, list | tuple):
        raise TypeError(f"LLMMessage.tool_calls must be a list of ToolCall, not {a_kind(value)}")
    return tuple(to_tool_call(c, f"LLMMessage.tool_calls[{i}]") for i, c in enumerate(value))


# -- messages ------------------------------------------------------------------------------


def _message_content(value: object) -> Content:
    if isinstance(value, str | list | tuple):
        return to_content(value, "LLMMessage.content")
    raise TypeError(
        f"LLMMessage.content must be a str or a list of content parts, not {type(value).__name__}"
    )


def _check_optional_str(field: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"LLMMessage.{field} must be a str or None, not {a_kind(value)}")


@attrs.frozen(init=False)
class LLMMessage:
    """One chat message: a ``role`` (system, user, assistant or tool) and its content.

    ``content`` is a string or a list of content parts in OpenAI's format (``TextPart``,
    ``ImagePart``, or the equivalent mappings ``{"type": "text", ...}``,
    ``{"type": "image_url", ...}``), kept as a tuple. An assistant message may carry the
    ``tool_calls`` the model made; a tool message answers one of them by its
    ``tool_call_id``. :meth:`from_mapping` (or giving a mapping wherever a message is
    taken) reads ``{"role": ..., "content": ...}``. Raises ``ValueError`` or ``TypeError``
    naming the field at fault.
    """

    role: Role
    content: Content
    name: str | None
    tool_calls: tuple[ToolCall, ...]
    tool_call_id: str | None

    def __init__(
        self,
        role: Role,
        content: str | Sequence[ContentPart | Mapping[str, Any]] = "",
        name: str | None = None,
        *,
        tool_calls: Sequence[ToolCall | Mapping[str, Any]] | None = (),
        tool_call_id: str | None = None,
    ) -> None:
        # Written out rather than attrs validators: a plain text message (the common case,
        # made once per task) costs a few checks, not a call per field.
        if role not in ROLES:
            raise ValueError(f"LLMMessage.role is {role!r}; use one of {', '.join(sorted(ROLES))}")
        if type(content) is not str:
            content = _message_content(content)
        if name is not None:
            _check_optional_str("name", name)
        if tool_calls:
            tool_calls = _to_tool_calls(tool_calls)
            if role != "assistant":
                raise ValueError(
                    f"LLMMessage: a {role!r} message has tool_calls; only an 'assistant' "
                    "message carries them"
                )
        else:
            tool_calls = ()
        if tool_call_id is not None:
            _check_optional_str("tool_call_id", tool_call_id)
            if role != "tool":
                raise ValueError(
                    f"LLMMessage: a {role!r} message has a tool_call_id; only a 'tool' "
                    "message answers a tool call"
                )
        setattr_ = object.__setattr__  # a frozen class: set once, here
        setattr_(self, "role", role)
        setattr_(self, "content", content)
        setattr_(self, "name", name)
        setattr_(self, "tool_calls", tool_calls)
        setattr_(self, "tool_call_id", tool_call_id)

    @property
    def text(self) -> str:
        """The content as text: the string, or the text parts joined (images left out)."""
        content = self.content
        if isinstance(content, str):
            return content
        return "".join(p.text for p in content if isinstance(p, TextPart))

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any], *, where: str = "message") -> LLMMessage:
        """A message from ``{"role", "content", "name", "tool_calls", "tool_call_id"}``.

        Errors start with ``where`` (``messages[2]``, say) and name the key at fault.
        """
        return to_message(value, where)


def to_message(value: object, where: str) -> LLMMessage:
    """``value`` as an LLMMessage: one already, or a mapping with the same keys."""
    if isinstance(value, LLMMessage):
        return value
    if (
        type(value) is dict
        and len(value) == 2
        and type(value.get("content")) is str
        and (role := value.get("role")) in ROLES
    ):
        return LLMMessage(role, value["content"])  # the common case: nothing else to read
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{where} is {a_kind(value)}; give LLMMessage(role=..., content=...) "
            'or a mapping {"role": ..., "content": ...}'
        )
    role = value.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}.role is {_short(role)}; use one of {', '.join(sorted(ROLES))}")
    extra = [k for k, v in value.items() if k not in MESSAGE_KEYS and v not in (None, [], "")]
    if extra:
        raise ValueError(
            f"{where} has the key {_short(extra[0])}, which llmfanout cannot send; "
            f"use {', '.join(sorted(MESSAGE_KEYS))}"
        )
    raw_calls = value.get("tool_calls")
    content = value.get("content")
    if content is None and (role == "assistant" or raw_calls):
        content = ""  # OpenAI's assistant message with only tool calls has null content
    elif content is None:
        raise ValueError(f'{where} has no "content"; give a string or a list of content parts')
    name, call_id = value.get("name"), value.get("tool_call_id")
    for field, given in (("name", name), ("tool_call_id", call_id)):
        if given is not None and not isinstance(given, str):
            raise TypeError(f"{where}.{field} must be a str, not {a_kind(given)}")
    calls: tuple[ToolCall, ...] = ()
    if raw_calls:
        if not isinstance(raw_calls, list | tuple):
            raise TypeError(f"{where}.tool_calls must be a list, not {a_kind(raw_calls)}")
        calls = tuple(to_tool_call(c, f"{where}.tool_calls[{i}]") for i, c in enumerate(raw_calls))
    if calls and role != "assistant":
        raise ValueError(
            f"{where} is a {role!r} message with tool_calls; only 'assistant' has them"
        )
    if call_id is not None and role != "tool":
        raise ValueError(
            f"{where} is a {role!r} message with a tool_call_id; only 'tool' answers a call"
        )
    return LLMMessage(
        role,
        to_content(content, f"{where}.content"),
        name,
        tool_calls=calls,
        tool_call_id=call_id,
    )


def only_messages(value: object) -> tuple[LLMMessage, ...] | None:
    """``value`` as a tuple if it is a tuple or list of LLMMessage alone, else None.

    The common case, checked without the ABC ``isinstance`` checks and the generator
    that the general path costs: every call and every task goes through here.
    """
    kind = type(value)
    if kind is not tuple and kind is not list:
        return None
    for message in value:  # type: ignore[attr-defined]
        if type(message) is not LLMMessage:
            return None
    return value if kind is tuple else tuple(value)  # type: ignore[return-value,arg-type]


def to_messages(value: object, owner: str) -> tuple[LLMMessage, ...]:
    """A sequence of messages or mappings as a tuple of LLMMessage (errors start ``owner``)."""
    messages = only_messages(value)
    if messages is not None:
        return messages
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise TypeError(
            f"{owner}: messages must be a list of LLMMessage or mappings, not {a_kind(value)}"
        )
    if all(type(m) is LLMMessage for m in value):
        return tuple(value)
    try:
        return tuple(to_message(m, f"messages[{i}]") for i, m in enumerate(value))
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{owner}: {exc}") from None
