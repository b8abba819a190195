"""An answer as stored bytes and back: content, model, finish reason, usage, tool calls, metadata.

Only what a hit must give back is kept: never the advertised rate limits (a hit sends
nothing, so it must not pace anyone), never a ``cached`` mark (a hit gets its own).
Metadata that is not JSON (a provider's own objects) is left out rather than failing.
"""

from __future__ import annotations

import json
from typing import Any

from .._base._types import LLMResponse, ToolCall

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
# raw_decode: the text is ours (one JSON object, no surrounding space), so json.loads's
# checks around it are skipped.
_loads = json.JSONDecoder().raw_decode


def encode(response: LLMResponse) -> bytes:
    """``response`` as bytes for a store."""
    metadata = {k: v for k, v in response.metadata.items() if k != "cached"}
    record: dict[str, Any] = {"c": response.content, "m": response.model}
    if response.finish_reason is not None:
        record["f"] = response.finish_reason
    if response.usage:
        record["u"] = dict(response.usage)
    if response.tool_calls:
        record["t"] = [
            [c.id, c.name, c.arguments] + ([c.signature] if c.signature is not None else [])
            for c in response.tool_calls
        ]
    if metadata:
        record["d"] = metadata
    try:
        text = _dumps(record)
    except (TypeError, ValueError):
        record.pop("d", None)
        text = _dumps(record)
    return text.encode("utf-8", "surrogatepass")


def decode(data: bytes) -> LLMResponse:
    """The stored answer as an ``LLMResponse`` marked ``metadata["cached"] = True``."""
    record, _ = _loads(data.decode("utf-8", "surrogatepass"))
    metadata = record.get("d") or {}
    metadata["cached"] = True
    calls = record.get("t")
    return LLMResponse(
        record["c"],
        model=record["m"],
        finish_reason=record.get("f"),
        usage=record.get("u"),
        metadata=metadata,
        tool_calls=() if not calls else tuple(ToolCall(*c) for c in calls),
    )
