"""What a schema asks of the server: OpenAI's ``response_format``, the one spelling we send.

Every provider reads the same override: OpenAI-compatible servers take it as is, and
``AnthropicProvider`` turns a ``json_schema`` one into a forced tool (see
``providers/_anthropic_format.py``). Strict mode needs every object closed and every
property required, so :func:`strict_schema` sends a tightened copy where it can; answers
are still validated against the schema the user gave.
"""

from __future__ import annotations

import copy
from typing import Any

from .._base._encoded import EncodedDict

_NESTED = ("anyOf", "oneOf", "allOf", "prefixItems")
_KEYED = ("properties", "$defs", "definitions", "patternProperties")


def strict_schema(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A copy of ``schema`` fit for strict mode, and whether it could be made so.

    Objects with properties get ``additionalProperties: false`` and every property
    ``required`` (optional fields then come back explicitly, as null where allowed); an
    object that allows other properties on purpose cannot be strict.
    """
    tight = copy.deepcopy(schema)
    return tight, _tighten(tight)


def _tighten(node: Any) -> bool:
    if isinstance(node, list):
        return all([_tighten(item) for item in node])
    if not isinstance(node, dict):
        return True
    ok = True
    if node.get("type") == "object" or "properties" in node:
        extra = node.get("additionalProperties", False)
        if extra is not False:
            ok = False
        else:
            node["additionalProperties"] = False
            node["required"] = list(node.get("properties", {}))
    for key in _KEYED:
        children = node.get(key)
        if isinstance(children, dict):
            ok = all([_tighten(child) for child in children.values()]) and ok
    for key in (*_NESTED, "items", "not", "additionalProperties"):
        if key in node:
            ok = _tighten(node[key]) and ok
    return ok


def response_format(name: str, schema: dict[str, Any] | None) -> EncodedDict:
    """The ``response_format`` override for a schema: ``json_schema`` (strict where the
    schema allows), or ``json_object`` for a callable with no schema; encoded once, as
    every request that carries it splices it in (see ``_base/_encoded.py``)."""
    if schema is None:
        return EncodedDict({"type": "json_object"})
    sent, strict = strict_schema(schema)
    spec = {"name": name, "schema": sent, "strict": strict}
    return EncodedDict({"type": "json_schema", "json_schema": spec})
