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

A key is computed for every call made with a cache on, hits included, so its cost is
a hit's cost: values of the exact JSON types are taken as they are, attrs classes are
read by their field names (looked up once per class), the JSON is written by one
encoder made once, and a provider without ``cache_request`` given plain-text messages
and plain parameters has its description written straight from a template. Each of
those gives the very bytes the general walk gives (tests/cache/test_cache_key.py holds
the reference and checks it by property, and pins a few keys): a key never changes
with a speed-up, so a cache file stays good across versions.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .._base._json import encoder
from .._base._types import LLMMessage

CLIENT_ONLY = frozenset({"on_text", "stream", "stream_options"})
"""Parameters that change how the answer is read, never what it says."""

_VERSION = b"llmfanout-cache-1\x00"


class Unkeyable(ValueError):
    """The request holds a value with no canonical JSON form: it is not cached."""


_PLAIN = frozenset({str, int, bool, type(None)})
"""Types whose values are canonical as they are (exactly these: not subclasses)."""

_FIELDS: dict[type, tuple[str, tuple[str, ...]]] = {}
"""An attrs class's tag and field names, looked up once per class."""


def canonical(value: Any) -> Any:
    """``value`` as plain JSON data in one canonical form (raises :class:`Unkeyable`).

    Plain values of the exact types JSON has are tested first (a request is mostly
    those); anything else goes through :func:`_other`.
    """
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str and not isinstance(key, str):
                raise Unkeyable(f"the key {key!r} is not a string")
            out[key] = item if type(item) in _PLAIN else canonical(item)
        return out
    if kind is list or kind is tuple:
        return [item if type(item) in _PLAIN else canonical(item) for item in value]
    return _other(value)


def _other(value: Any) -> Any:
    if isinstance(value, str | bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Unkeyable(f"the number {value!r} cannot be sent as JSON")
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        return canonical(dict(value))
    if isinstance(value, list | tuple):
        return [canonical(item) for item in value]
    kind = type(value)
    described = _FIELDS.get(kind)
    if described is None:
        if not attrs.has(kind):  # LLMMessage, TextPart, ToolCall... are attrs classes
            raise Unkeyable(f"a {kind.__name__} has no canonical JSON form")
        described = _FIELDS[kind] = (
            "__" + kind.__name__,
            tuple(a.name for a in attrs.fields(kind)),
        )
    tag, names = described
    return {
        tag: {
            name: canonical(field)
            for name in names
            # a field added after keys were fixed, left out while None: old keys stay
            if (field := getattr(value, name)) is not None or name not in _LATE
        }
    }


_LATE = frozenset({"signature"})
"""Fields added to a keyed class after its keys were fixed (``ToolCall.signature``): left
out of the key while None, so every key made before them is the same."""

# The JSON written by one C encoder made once (json's own encode makes one each call);
# no check for cycles: canonical() has walked the value already.
_encode = encoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)


def _hash(text: str, namespace: str) -> str:
    data = b"%s%s\x00%s" % (_VERSION, namespace.encode(), text.encode("utf-8", "surrogatepass"))
    return hashlib.sha256(data).hexdigest()


def digest(description: Mapping[str, Any], namespace: str = "") -> str:
    """The key for a request ``description``: a SHA-256 in hex, salted by ``namespace``."""
    return _hash(_encode(canonical(description)), namespace)


# -- the template for a provider without cache_request ------------------------------------

_str = json.encoder.encode_basestring  # a str as JSON text, as the encoder writes it
_MESSAGE = '{"__LLMMessage":{"content":%s,"name":%s,"role":%s,"tool_call_id":%s,"tool_calls":[]}}'
_TEMPLATE_FITS = tuple(a.name for a in attrs.fields(LLMMessage)) == (
    "role",
    "content",
    "name",
    "tool_calls",
    "tool_call_id",
)
"""The template writes these fields: a new field turns it off (and fails the tests)."""


def _plain_scalar(value: object) -> str | None:
    """``value`` as canonical JSON text if it is a plain scalar, else None."""
    if type(value) is str:
        return _str(value)
    if value is None:
        return "null"
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is float and math.isfinite(value):
        return int.__repr__(int(value)) if value.is_integer() else float.__repr__(value)
    return None


def _plain_text(
    provider: object,
    messages: Sequence[LLMMessage],
    overrides: Mapping[str, Any] | None,
) -> str | None:
    """The canonical JSON of :func:`describe`'s fallback, written from a template, when
    every message is plain text and every parameter a plain scalar; else None."""
    model = _plain_scalar(getattr(provider, "model", None))
    if model is None or not _TEMPLATE_FITS:
        return None
    written = []
    for m in messages:
        if type(m) is not LLMMessage or type(m.content) is not str or m.tool_calls:
            return None
        name, call_id = m.name, m.tool_call_id
        if (name is not None and type(name) is not str) or (
            call_id is not None and type(call_id) is not str
        ):
            return None
        written.append(
            _MESSAGE
            % (
                _str(m.content),
                "null" if name is None else _str(name),
                _str(m.role),
                "null" if call_id is None else _str(call_id),
            )
        )
    params = []
    if overrides:
        if type(overrides) is not dict:
            return None
        for key in sorted(overrides):
            if type(key) is not str:
                return None
            if key in CLIENT_ONLY:
                continue
            value = _plain_scalar(overrides[key])
            if value is None:
                return None
            params.append(f"{_str(key)}:{value}")
    kind = type(provider)
    name = _str(f"{kind.__module__}.{kind.__qualname__}")
    listed, named = ",".join(written), ",".join(params)
    return f'{{"kind":{name},"messages":[{listed}],"model":{model},"params":{{{named}}}}}'


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
        if getattr(provider, "cache_request", None) is None:
            text = _plain_text(provider, messages, overrides)
            if text is not None:
                return _hash(text, namespace)
        return digest(describe(provider, messages, overrides), namespace)
    except (Unkeyable, TypeError, ValueError, RecursionError):  # RecursionError: a cycle
        return None
