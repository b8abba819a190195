"""JSON encoded once: a request fragment shared by many calls, spliced into each body.

A structured task sends its schema in every request (OpenAI's ``response_format``,
Anthropic's forced tool): a nested object of a kilobyte, the same for 100k calls.
Encoding it into each body cost more than validating the answer. :class:`EncodedDict`
and :class:`EncodedList` are a ``dict`` and a ``list`` as any reader sees them (a
provider rewriting the request, a cache key, a batch file), which also carry their JSON
text, made once; :func:`dumps` writes that text where one stands at the top level of a
body, instead of walking the value again. They are read-only (a change raises
``TypeError``): one is shared by every request that sends it, and its text is not remade;
``dict(it)`` or ``list(it)`` is a copy to change.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import Any, NoReturn

# Made once: json.dumps given options other than its defaults makes an encoder per call.
_text = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _read_only(self: object, *args: object, **kwargs: object) -> NoReturn:
    raise TypeError(
        f"{type(self).__name__} is shared by every request that sends it and cannot be "
        "changed; change a copy (dict(it), list(it))"
    )


class EncodedDict(dict[str, Any]):
    """A JSON object and its text, made once. ``derived`` holds what a provider made of
    it (its own spelling of the same request), once per provider kind."""

    __slots__ = ("derived", "text")

    def __init__(self, value: dict[str, Any]) -> None:
        super().__init__(value)
        self.text = _text(value)
        self.derived: dict[str, Any] = {}

    def __reduce__(self) -> tuple[type[EncodedDict], tuple[dict[str, Any]]]:
        return EncodedDict, (dict(self),)  # copied and pickled by value, not by setitem


class EncodedList(list[Any]):
    """A JSON array and its text, made once."""

    __slots__ = ("text",)

    def __init__(self, value: list[Any]) -> None:
        super().__init__(value)
        self.text = _text(value)

    def __reduce__(self) -> tuple[type[EncodedList], tuple[list[Any]]]:
        return EncodedList, (list(self),)


def _refuse_changes(cls: type, names: str) -> None:
    """Make each method of ``names`` (those that change a dict or a list in place) raise."""
    for name in names.split():
        setattr(cls, name, _read_only)


_refuse_changes(EncodedDict, "__setitem__ __delitem__ __ior__ clear pop popitem setdefault update")
_refuse_changes(
    EncodedList,
    "__setitem__ __delitem__ __iadd__ __imul__ append clear extend insert pop remove reverse sort",
)

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
