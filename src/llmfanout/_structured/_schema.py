"""A task's schema: a pydantic model, a JSON Schema dict or a callable, behind one face.

:func:`schema_for` reads what the user gave into a :class:`Schema`, once per distinct
object (100k tasks sharing one model share one ``Schema``): its name, the JSON Schema sent
to the server (None for a callable), and :meth:`Schema.check`, which turns an answer's
text into the validated object or a list of errors (``"path: message"``). pydantic and
jsonschema are optional: each is imported here, when a schema of its kind is first read,
with an ``ImportError`` naming the extra to install.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

from .._base._encoded import EncodedDict
from ._fastcheck import compile_check
from ._request import response_format
from ._trim import trim_errors

_NAME = re.compile(r"[^a-zA-Z0-9_-]")
_CACHE_SIZE = 256


@attrs.frozen(eq=False)
class Checked:
    """An answer checked: ``value`` when ``errors`` is empty."""

    value: Any
    errors: tuple[str, ...]


@attrs.frozen(eq=False)
class Schema:
    """What a task's answers must match.

    ``kind`` is ``"pydantic"``, ``"jsonschema"`` or ``"callable"``; ``name`` is safe for an
    API's schema or tool name; ``json_schema`` is sent to the server (None: the callable
    has none, and the server is asked for a JSON object only); ``request`` is the
    ``response_format`` override that asks for it (made once, shared by every task).
    """

    kind: str
    name: str
    json_schema: dict[str, Any] | None
    _check: Callable[[str], Checked] = attrs.field(repr=False, alias="check")
    request: EncodedDict = attrs.field(init=False, repr=False)
    alone: Mapping[str, Any] = attrs.field(init=False, repr=False)
    """The overrides of a task that has none of its own: ``response_format`` alone."""

    @request.default
    def _request(self) -> EncodedDict:
        return response_format(self.name, self.json_schema)

    @alone.default
    def _alone(self) -> Mapping[str, Any]:
        return MappingProxyType({"response_format": self.request})

    def check(self, text: str) -> Checked:
        """``text`` parsed and validated; never raises for a bad answer."""
        return self._check(text)


def _name(raw: object, default: str) -> str:
    text = _NAME.sub("_", raw if isinstance(raw, str) and raw else default)
    return text[:64] or default


def _path(parts: Any) -> str:
    path = ".".join(str(p) for p in parts)
    return path or "(root)"


def _not_json(exc: ValueError) -> Checked:
    return Checked(None, (f"(root): the answer is not valid JSON ({exc})",))


def _unfence(text: str) -> str:
    """``text``, or the inside of the fenced block (```json ... ```) it is."""
    stripped = text.strip()
    if not stripped.startswith("```"):
        return text
    inside = stripped.split("\n", 1)[1] if "\n" in stripped else ""
    return inside.rsplit("```", 1)[0]


def _loads(text: str) -> Any:
    return json.loads(_unfence(text))


# -- pydantic --------------------------------------------------------------------------------


def _pydantic() -> Any:
    try:
        import pydantic
    except ImportError:
        raise ImportError(
            "response_model= with a type that is not a pydantic model class needs pydantic; "
            "install it with: pip install 'llmfanout[pydantic]'"
        ) from None
    return pydantic


def _is_pydantic_model(model: object) -> bool:
    return isinstance(model, type) and callable(getattr(model, "model_validate_json", None))


def _from_model(model: Any) -> Schema:
    pydantic = _pydantic()
    adapter = pydantic.TypeAdapter(model)
    error_type = pydantic.ValidationError

    def check(text: str) -> Checked:
        try:
            return Checked(adapter.validate_json(_unfence(text)), ())
        except error_type as exc:
            found = [f"{_path(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)]
            return Checked(None, trim_errors(found))

    name = _name(getattr(model, "__name__", None), "response")
    return Schema("pydantic", name, adapter.json_schema(), check=check)


# -- JSON Schema -----------------------------------------------------------------------------


def _jsonschema() -> Any:
    try:
        import jsonschema
    except ImportError:
        raise ImportError(
            "response_schema= (a JSON Schema) needs jsonschema to validate answers; install "
            "it with: pip install 'llmfanout[jsonschema]'"
        ) from None
    return jsonschema


def _from_dict(schema: Mapping[str, Any]) -> Schema:
    jsonschema = _jsonschema()
    own = json.loads(json.dumps(schema))  # a plain copy: the caller's dict may change
    cls = jsonschema.validators.validator_for(own)
    try:
        cls.check_schema(own)
    except jsonschema.SchemaError as exc:
        where = _path(exc.absolute_path)
        raise ValueError(f"is not a valid JSON Schema: {where}: {exc.message}") from None
    flat = _inlined(own)
    validator = cls(flat)
    quick = compile_check(flat)

    def check(text: str) -> Checked:
        try:
            instance = _loads(text)
        except ValueError as exc:
            return _not_json(exc)
        if quick is not None and quick(instance):
            return Checked(instance, ())
        found = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path)))
        if not found:
            return Checked(instance, ())
        return Checked(None, trim_errors([f"{_path(e.absolute_path)}: {e.message}" for e in found]))

    return Schema("jsonschema", _name(own.get("title"), "response"), own, check=check)


_LOCAL_REFS = ("#/$defs/", "#/definitions/")


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its local ``$ref``s replaced by what they point at, when none is
    recursive: jsonschema resolves a ``$ref`` through its registry on every use, which
    costs more than the rest of a validation (pydantic's schemas are full of them)."""
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    if not defs:
        return schema

    def inline(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [inline(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_LOCAL_REFS):
            name = ref.rsplit("/", 1)[1]
            if name in seen or name not in defs:
                raise RecursionError(name)
            rest = {k: v for k, v in node.items() if k != "$ref"}
            target = inline(defs[name], (*seen, name))
            return {**target, **inline(rest, seen)} if rest else target
        return {k: inline(v, seen) for k, v in node.items()}

    try:
        flat = inline({k: v for k, v in schema.items() if k not in ("$defs", "definitions")}, ())
    except RecursionError:  # a recursive schema keeps its references
        return schema
    return flat  # type: ignore[no-any-return]


# -- a callable ------------------------------------------------------------------------------


def _from_callable(fn: Callable[[Any], Any]) -> Schema:
    def check(text: str) -> Checked:
        try:
            instance = _loads(text)
        except ValueError as exc:
            return _not_json(exc)
        try:
            value = fn(instance)
        except Exception as exc:  # the validator's verdict, whatever it raises
            return Checked(None, trim_errors([f"(root): {type(exc).__name__}: {exc}"]))
        return Checked(instance if value is None else value, ())

    return Schema("callable", _name(getattr(fn, "__name__", None), "response"), None, check=check)


# -- one Schema per object -------------------------------------------------------------------

_cache: dict[int, tuple[object, Schema]] = {}


def schema_for(model: object = None, schema: object = None) -> Schema:
    """The :class:`Schema` for ``response_model`` (``model``) or ``response_schema``.

    Raises ``TypeError``/``ValueError`` (without the owner's name: the caller adds it) for
    something that cannot be a schema, ``ImportError`` naming the extra when its library
    is missing.
    """
    given = model if model is not None else schema
    hit = _cache.get(id(given))
    if hit is not None and hit[0] is given:
        return hit[1]
    if model is not None:
        if _is_pydantic_model(model) or isinstance(model, type) or hasattr(model, "__origin__"):
            made = _from_model(model)
        elif callable(model):
            made = _from_callable(model)
        else:
            raise TypeError(
                f"response_model is {type(model).__name__}; give a pydantic model class, a "
                "type pydantic can validate, or a callable that takes the decoded JSON"
            )
    else:
        if not isinstance(schema, Mapping):
            raise TypeError(
                f"response_schema is {type(schema).__name__}; give a JSON Schema as a dict"
            )
        made = _from_dict(schema)
    if len(_cache) >= _CACHE_SIZE:
        _cache.clear()
    _cache[id(given)] = (given, made)  # keeps ``given`` alive: its id cannot be reused
    return made
