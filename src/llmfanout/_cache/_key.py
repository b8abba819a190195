"""The cache key: a hash of the canonical request, everything that reaches the wire.

A provider says what it would send through ``cache_request`` (see
:class:`~llmfanout._base._types.Cacheable`): its kind, its endpoint (origin and path of
the base URL) and the JSON body built from the messages and the merged parameters,
without the options that never reach the wire (``on_text``, the client-side ``stream``
choice). A provider without it is described by its class, its ``model`` and the
messages and overrides as given. The description is serialised canonically (sorted
keys, integral floats as integers, one float format, tuples as lists) and hashed with
the namespace, so the same request in any key order gets the same key and any change
that can reach the wire gets another. Nothing secret is in it: no header but a few
named protocol ones, never a key.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .._base._types import LLMMessage

CLIENT_ONLY = frozenset({"on_text", "stream", "stream_options"})
"""Parameters that change how the answer is read, never what it says."""

_VERSION = b"llmfanout-cache-1\x00"


class Unkeyable(ValueError):
    """The request holds a value with no canonical JSON form: it is not cached."""


def canonical(value: Any) -> Any:
    """``value`` as plain JSON data in one canonical form (raises :class:`Unkeyable`)."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Unkeyable(f"the number {value!r} cannot be sent as JSON")
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise Unkeyable(f"the key {key!r} is not a string")
            out[key] = canonical(item)
        return out
    if isinstance(value, list | tuple):
        return [canonical(item) for item in value]
    if attrs.has(type(value)):  # LLMMessage, TextPart, ToolCall...
        return {"__" + type(value).__name__: canonical(attrs.asdict(value, recurse=False))}
    raise Unkeyable(f"a {type(value).__name__} has no canonical JSON form")


def digest(description: Mapping[str, Any], namespace: str = "") -> str:
    """The key for a request ``description``: a SHA-256 in hex, salted by ``namespace``."""
    data = json.dumps(
        canonical(description),
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
    )
    h = hashlib.sha256(_VERSION)
    h.update(namespace.encode())
    h.update(b"\x00")
    h.update(data.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def describe(
    provider: object,
    messages: Sequence[LLMMessage],
    overrides: Mapping[str, Any] | None,
) -> Mapping[str, Any]:
    """What ``provider`` would send for this call, as data (see the module docstring)."""
    described = getattr(provider, "cache_request", None)
    if described is not None:
        request: Mapping[str, Any] = described(messages, overrides)
        return request
    params = {k: v for k, v in (overrides or {}).items() if k not in CLIENT_ONLY}
    kind = type(provider)
    return {
        "kind": f"{kind.__module__}.{kind.__qualname__}",
        "model": getattr(provider, "model", None),
        "messages": list(messages),
        "params": params,
    }


def request_key(
    provider: object,
    messages: Sequence[LLMMessage],
    overrides: Mapping[str, Any] | None,
    namespace: str = "",
) -> str | None:
    """The key of one call, or None when it cannot be keyed (it then goes uncached)."""
    try:
        return digest(describe(provider, messages, overrides), namespace)
    except (Unkeyable, TypeError, ValueError):
        return None
