"""A quick yes for the JSON Schemas answers usually meet, before jsonschema's slow walk.

jsonschema builds a new validator at every level it descends, which costs tens of
microseconds a node: more than a whole HTTP call's CPU for a 1 KB answer. The common
keywords (``type``, ``properties``, ``required``, ``additionalProperties``, ``items``,
``enum``, ``const``, ``anyOf``, bounds on numbers, strings and arrays) are compiled here
into plain closures that answer "valid" in a few microseconds. Anything else, and every
answer the closures refuse, goes to jsonschema, whose errors are the ones reported: the
quick check only ever skips the walk for an answer jsonschema would accept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]

_IGNORED = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment", "format"}
)
_TYPES: dict[str, Check] = {
    # One call a node: the cheapest test that says it (bool is not an int here).
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
    "string": lambda v: type(v) is str,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    "number": lambda v: type(v) is float or type(v) is int,
    "integer": lambda v: type(v) is int or (type(v) is float and v.is_integer()),
}


class Unsupported(Exception):
    """A keyword the quick check does not know: jsonschema checks every answer."""


def compile_check(schema: Any) -> Check | None:
    """A predicate that is True only for instances ``schema`` accepts (None: unsupported).

    One generated function where it can be (straight-line code: a closure call a node
    costs as much as the check itself), else the closures of :func:`_compile`.
    """
    try:
        closures = _compile(schema)
    except Unsupported:
        return None
    try:
        return _generate(schema)
    except (SyntaxError, RecursionError, MemoryError):  # too deep to compile as one function
        return closures


# -- generated code ------------------------------------------------------------------------
# The structural keywords (type, properties, required, additionalProperties, items) become
# statements that return False at the first failure; the others call their closure.


def _generate(schema: Any) -> Check:
    constants: dict[str, Any] = {"_MISSING": _MISSING}
    lines = ["def check(v0):"]
    _emit(schema, "v0", 1, lines, constants, [0])
    lines.append("    return True")
    code = compile("\n".join(lines), "<llmfanout quick check>", "exec")
    exec(code, constants)  # the source holds keyword names and indices, never schema text
    return constants["check"]  # type: ignore[no-any-return]


_MISSING = object()
_TYPE_TESTS = {
    "object": "type({v}) is dict",
    "array": "type({v}) is list",
    "string": "type({v}) is str",
    "boolean": "type({v}) is bool",
    "null": "{v} is None",
    "number": "(type({v}) is float or type({v}) is int)",
    "integer": "(type({v}) is int or (type({v}) is float and {v}.is_integer()))",
}


def _emit(
    schema: Any, v: str, depth: int, lines: list[str], constants: dict[str, Any], count: list[int]
) -> None:
    pad = "    " * depth

    def name(value: Any) -> str:
        count[0] += 1
        label = f"c{count[0]}"
        constants[label] = value
        return label

    def var() -> str:
        count[0] += 1
        return f"v{count[0]}"

    def block(sub: Any, child: str, inner: int) -> None:
        """The checks of ``sub`` on ``child``, as the body of the line just written."""
        before = len(lines)
        _emit(sub, child, inner, lines, constants, count)
        if len(lines) == before:
            lines.append("    " * inner + "pass")

    if schema is True or schema == {}:
        return
    assert isinstance(schema, dict)
    for key, rule in schema.items():
        if key in _IGNORED:
            continue
        if key == "type":
            names = rule if isinstance(rule, list) else [rule]
            test = " or ".join(_TYPE_TESTS[n].format(v=v) for n in names)
            lines.append(f"{pad}if not ({test}): return False")
        elif key == "properties":
            lines.append(f"{pad}if type({v}) is dict:")
            for prop, sub in rule.items():
                if sub is True or sub == {}:
                    continue
                child = var()
                lines.append(f"{pad}    {child} = {v}.get({name(prop)}, _MISSING)")
                lines.append(f"{pad}    if {child} is not _MISSING:")
                block(sub, child, depth + 2)
        elif key == "required":
            needed = name(frozenset(rule))
            lines.append(f"{pad}if type({v}) is dict and not ({v}.keys() >= {needed}):")
            lines.append(f"{pad}    return False")
        elif key == "additionalProperties":
            known = name(frozenset(schema.get("properties", {})))
            if rule is False:
                lines.append(f"{pad}if type({v}) is dict and not ({v}.keys() <= {known}):")
                lines.append(f"{pad}    return False")
            else:
                key_var, child = var(), var()
                lines.append(f"{pad}if type({v}) is dict:")
                lines.append(f"{pad}    for {key_var}, {child} in {v}.items():")
                lines.append(f"{pad}        if {key_var} not in {known}:")
                block(rule, child, depth + 3)
        elif key == "items":
            child = var()
            lines.append(f"{pad}if type({v}) is list:")
            lines.append(f"{pad}    for {child} in {v}:")
            block(rule, child, depth + 2)
        else:  # enum, const, anyOf, bounds: their closure
            lines.append(f"{pad}if not {name(_KEYWORDS[key](rule, schema))}({v}): return False")


def _compile(schema: Any) -> Check:
    if schema is True or schema == {}:
        return lambda v: True
    if not isinstance(schema, dict):
        raise Unsupported
    checks: list[Check] = []
    for key, rule in schema.items():
        if key in _IGNORED:
            continue
        maker = _KEYWORDS.get(key)
        if maker is None:
            raise Unsupported
        checks.append(maker(rule, schema))
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]
    first, *others = checks

    def every(v: Any) -> bool:  # a loop, not all(genexpr): this runs once a node
        if not first(v):
            return False
        for check in others:  # noqa: SIM110
            if not check(v):
                return False
        return True

    return every


def _type(rule: Any, schema: dict[str, Any]) -> Check:
    names = rule if isinstance(rule, list) else [rule]
    if not all(isinstance(n, str) and n in _TYPES for n in names):
        raise Unsupported
    tests = [_TYPES[n] for n in names]
    if len(tests) == 1:
        return tests[0]
    return lambda v: any(test(v) for test in tests)


def _properties(rule: Any, schema: dict[str, Any]) -> Check:
    if not isinstance(rule, dict):
        raise Unsupported
    children = {name: _compile(sub) for name, sub in rule.items()}

    pairs = tuple(children.items())

    def check(v: Any) -> bool:
        if type(v) is not dict:
            return True
        for name, child in pairs:  # noqa: SIM110 (a loop is cheaper than all(genexpr))
            if name in v and not child(v[name]):
                return False
        return True

    return check


def _required(rule: Any, schema: dict[str, Any]) -> Check:
    names = list(rule)
    return lambda v: type(v) is not dict or all(name in v for name in names)


def _additional(rule: Any, schema: dict[str, Any]) -> Check:
    if "patternProperties" in schema:
        raise Unsupported
    known = frozenset(schema.get("properties", {}))
    child = _compile(rule) if rule is not False else None

    def check(v: Any) -> bool:
        if type(v) is not dict:
            return True
        for name, value in v.items():
            if name not in known and (child is None or not child(value)):
                return False
        return True

    return check


def _items(rule: Any, schema: dict[str, Any]) -> Check:
    child = _compile(rule)

    def check(v: Any) -> bool:
        if type(v) is not list:
            return True
        for item in v:  # noqa: SIM110 (a loop is cheaper than all(genexpr))
            if not child(item):
                return False
        return True

    return check


def _enum(rule: Any, schema: dict[str, Any]) -> Check:
    # Equal and of the same JSON type: 1 is not true, 1.0 is 1 (as jsonschema decides).
    if not isinstance(rule, list) or any(isinstance(o, list | dict) for o in rule):
        raise Unsupported  # containers compare by jsonschema's own rules
    options = [(type(o) is bool, o) for o in rule]
    return lambda v: any(flag == (type(v) is bool) and o == v for flag, o in options)


def _const(rule: Any, schema: dict[str, Any]) -> Check:
    return _enum([rule], schema)


def _any_of(rule: Any, schema: dict[str, Any]) -> Check:
    options = [_compile(sub) for sub in rule]
    return lambda v: any(option(v) for option in options)


def _bound(
    kind: str, compare: Callable[[Any, Any], bool]
) -> Callable[[Any, dict[str, Any]], Check]:
    def make(rule: Any, schema: dict[str, Any]) -> Check:
        if kind == "number":
            return lambda v: type(v) not in (int, float) or compare(v, rule)
        size_of = str if kind == "string" else list
        return lambda v: type(v) is not size_of or compare(len(v), rule)

    return make


_KEYWORDS: dict[str, Callable[[Any, dict[str, Any]], Check]] = {
    "type": _type,
    "properties": _properties,
    "required": _required,
    "additionalProperties": _additional,
    "items": _items,
    "enum": _enum,
    "const": _const,
    "anyOf": _any_of,
    "minimum": _bound("number", lambda v, r: v >= r),
    "maximum": _bound("number", lambda v, r: v <= r),
    "exclusiveMinimum": _bound("number", lambda v, r: v > r),
    "exclusiveMaximum": _bound("number", lambda v, r: v < r),
    "minLength": _bound("string", lambda n, r: n >= r),
    "maxLength": _bound("string", lambda n, r: n <= r),
    "minItems": _bound("array", lambda n, r: n >= r),
    "maxItems": _bound("array", lambda n, r: n <= r),
}
