"""The re-ask: an answer that failed its schema, sent back with its errors as a new turn.

The answer goes back as the model gave it: as text (OpenAI's ``response_format``), or as
the tool call it made (Anthropic's forced tool), answered then by a tool message, since
the Messages API wants every ``tool_use`` answered by a ``tool_result`` in the next turn.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._base._types import LLMMessage, LLMResponse, ToolCall

REASK_HEAD = "Your answer did not match the required JSON schema:"
REASK_TAIL = "Answer again with only the corrected JSON, matching the schema exactly."


def answer_text(response: LLMResponse, name: str) -> tuple[str, ToolCall | None]:
    """The text to validate: the arguments of the tool call named ``name`` (a forced
    tool), else the answer's content."""
    for call in response.tool_calls:
        if call.name == name:
            return call.arguments, call
    return response.content, None


def reask_text(errors: Sequence[str]) -> str:
    """The follow-up turn's words: the errors, one a line, and what to do."""
    lines = "\n".join(f"- {error}" for error in errors)
    return f"{REASK_HEAD}\n{lines}\n{REASK_TAIL}"


def reask_turn(
    response: LLMResponse, raw: str, call: ToolCall | None, errors: Sequence[str]
) -> tuple[LLMMessage, LLMMessage]:
    """The two messages to add: the answer as given, and the errors to fix."""
    text = reask_text(errors)
    if call is not None:
        answer = LLMMessage("assistant", response.content, tool_calls=(call,))
        return answer, LLMMessage("tool", text, tool_call_id=call.id)
    return LLMMessage("assistant", raw), LLMMessage("user", text)
