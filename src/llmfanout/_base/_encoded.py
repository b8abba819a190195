"""JSON encoded once: a request fragment shared by many calls, spliced into each body.

A structured task sends its schema in every request (OpenAI's ``response_format``,
Anthropic's forced tool): a nested object of a kilobyte, the same for 100k calls.
Encoding it into each body cost more than validating the answer. :class:`EncodedDict`
and :class:`EncodedList` are a ``dict`` and a ``list`` as any reader sees them (a
provider rewriting the request, a cache key, a batch file), which also carry their JSON
text, made once; :func:`dumps` writes that text where one stands at the top level of a
body, instead of walking the value again. Treat them as read-only: the text is not
remade.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import Any

# Made once: json.dumps given options other than its defaults makes an encoder per call.
_text = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class EncodedDict(dict[str, Any]):
    """A JSON object and its text, made once. ``derived`` holds what a provider made of
    it (its own spelling of the same request), once per provider kind."""

    __slots__ = ("derived", "text")

    def __init__(self, value: dict[str, Any]) -> None:
        super().__init__(value)
        self.text = _text(value)
        self.derived: dict[str, Any] = {}


class EncodedList(list[Any]):
    """A JSON array and its text, made once."""

    __slots__ = ("text",)

    def __init__(self, value: list[Any]) -> None:
        super().__init__(value)
        self.text = _text(value)


_ENCODED = (EncodedDict, EncodedList)


def dumps(payload: Any) -> str:
    """``payload`` as compact JSON (``ensure_ascii=False``, no NaN); in an object, the
    encoded values at its top level are spliced in as they are (they come last: key order
    means nothing in JSON).

    Raises ``TypeError``/``ValueError`` as ``json.dumps`` does.
    """
    if not isinstance(payload, dict):
        return _text(payload)
    for value in payload.values():  # a loop, not a list: most bodies have none
        if type(value) in _ENCODED:
            break
    else:
        return _text(payload)
    spliced = [(key, value) for key, value in payload.items() if type(value) in _ENCODED]
    rest = _text({key: value for key, value in payload.items() if type(value) not in _ENCODED})
    tail = ",".join(f"{encode_basestring(key)}:{value.text}" for key, value in spliced)
    return f"{rest[:-1]}{',' if len(rest) > 2 else ''}{tail}}}"
