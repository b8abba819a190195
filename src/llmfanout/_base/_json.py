"""JSON text from the C encoder behind ``json.dumps``, built once rather than per call.

``json.JSONEncoder.encode`` builds a fresh C encoder on every call, with a dict for its
check for cycles: about 2 µs a call on a short object, which a job writing a row per
task, or hashing a request per call, pays every time. :func:`encoder` builds one once
and checks on a sample that it writes exactly what ``json`` writes; where CPython's
``_json`` is missing, takes other arguments or writes otherwise, it is ``json``'s own.

For values this library builds itself (output rows, cache keys): the encoder does not
look for cycles, so a value that contains itself raises ``RecursionError`` rather than
``ValueError``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["encoder"]

_SAMPLE = {"b": [1, 2.5, None, True, -0.0], "a": 'é\u2603\n"\\', "c": {"z": "", "y": {}}}


def encoder(
    *,
    ensure_ascii: bool = True,
    separators: tuple[str, str] = (", ", ": "),
    sort_keys: bool = False,
    allow_nan: bool = True,
) -> Callable[[Any], str]:
    """``json.JSONEncoder(...).encode`` for these options, its C encoder made once."""
    reference = json.JSONEncoder(
        ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys, allow_nan=allow_nan
    )
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return reference.encode
    item_separator, key_separator = separators
    strings = (
        json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    )
    try:
        iterencode: Callable[[Any, int], Any] = make(
            None,  # markers: no check for cycles (see the module's docstring)
            reference.default,
            strings,
            None,  # indent
            key_separator,
            item_separator,
            sort_keys,
            False,  # skipkeys
            allow_nan,
        )
        if "".join(iterencode(_SAMPLE, 0)) != reference.encode(_SAMPLE):
            return reference.encode
    except Exception:  # another interpreter's _json: json's own is right, if slower
        return reference.encode

    def encode(value: Any) -> str:
        return "".join(iterencode(value, 0))

    return encode
