"""The options both HTTP providers take, and the checks that run on them at construction."""

from __future__ import annotations

import math
import os
import re
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    import httpx

DEFAULT_TIMEOUT = 60.0
"""Seconds for each read, each write and the wait for a pooled connection."""

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds to open a connection: a reachable API answers a handshake well within this."""

DEFAULT_TOTAL_TIMEOUT = 600.0
"""Seconds for a whole attempt, connecting to last byte (the official SDKs' 10 minutes)."""

DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
"""The largest response body read (after decompression): far above any chat answer."""


class HTTPOptions(TypedDict, total=False):
    """The keyword options every HTTP provider takes (see the provider's docstring)."""

    base_url: str | None
    api_key: str | None
    api_key_env: str | None
    timeout: float | httpx.Timeout
    total_timeout: float | None
    max_connections: int
    max_response_bytes: int
    default_params: Mapping[str, Any] | None
    headers: Mapping[str, str] | None
    verify: bool | str | ssl.SSLContext
    http_client: httpx.AsyncClient | None


def make_timeout(timeout: float | httpx.Timeout, owner: str) -> httpx.Timeout:
    """``timeout`` seconds for reading, writing and waiting for a pooled connection.

    Connecting gets at most :data:`DEFAULT_CONNECT_TIMEOUT`. An ``httpx.Timeout`` is used
    as given. Raises ``ValueError`` for anything but a number > 0 or an ``httpx.Timeout``.
    """
    import httpx  # a provider's timeout is an httpx.Timeout (its public attribute)

    if isinstance(timeout, httpx.Timeout):
        return timeout
    seconds = check_seconds(timeout, "timeout", owner, also="an httpx.Timeout")
    return httpx.Timeout(seconds, connect=min(seconds, DEFAULT_CONNECT_TIMEOUT))


def check_seconds(value: object, name: str, owner: str, *, also: str = "") -> float:
    """A finite number of seconds > 0; raise ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
        extra = f" (or {also})" if also else ""
        raise ValueError(f"{owner}: {name} is {value!r}; give seconds > 0{extra}")
    return float(value)


def check_base_url(base_url: str | None, env_var: str, default: str, owner: str) -> str:
    """The base URL without a trailing slash: ``base_url``, else ``env_var``, else ``default``.

    Raises ``ValueError`` unless it is an http(s) address without query or fragment,
    naming the environment variable when the address came from there.
    """
    where = "base_url"
    if base_url is None:
        from_env = os.environ.get(env_var, "").strip()
        if from_env:
            base_url, where = from_env, f"the {env_var} environment variable"
        else:
            base_url = default
    if not isinstance(base_url, str):
        raise TypeError(f"{owner}: base_url must be a str, not {type(base_url).__name__}")
    import httpx  # its URL parser: the same rules the httpx transport applies

    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"{owner}: {where} {base_url!r} is not a URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(
            f"{owner}: {where} is {base_url!r}; give an http:// or https:// address, "
            f"e.g. {default!r}"
        )
    if url.query or url.fragment:
        raise ValueError(f"{owner}: {where} {base_url!r} must not hold a query or fragment")
    return base_url.rstrip("/")


def check_params(value: object, name: str, owner: str) -> dict[str, Any]:
    """A copy of a mapping of request parameters, without its None values."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{owner}: {name} must be a mapping with str keys, or None")
    return {k: v for k, v in value.items() if v is not None}


def check_headers(value: object, owner: str) -> dict[str, str]:
    """A copy of extra headers, names in lower case; raise unless names and values are
    strings a header can carry. A bad value is named by its header, never shown (it may
    be a credential)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError(f"{owner}: headers must be a mapping of str to str, or None")
    for name, header in value.items():
        if not (
            name
            and name.isascii()
            and name.isprintable()
            and ":" not in name
            and " " not in name
            and header.isascii()
            and header.isprintable()
        ):
            raise ValueError(
                f"{owner}: header {name!r} holds a control or non-ASCII character, which HTTP "
                "headers cannot carry"
            )
    return {name.lower(): header for name, header in value.items()}  # so one beats ours


def check_model(value: object, owner: str) -> str:
    """The model name; raise unless it is a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{owner}: model is {value!r}; give a model name, e.g. 'gpt-4o-mini'")
    return value


_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def check_variable(value: object, name: str, owner: str) -> str | None:
    """An environment variable's name, or None; raise naming ``name`` otherwise.

    The value is never echoed: a key pasted where its variable's name belongs would
    otherwise land in the error.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{owner}: {name} must be a str, not {type(value).__name__}")
    if not _VARIABLE.fullmatch(value):
        raise ValueError(
            f"{owner}: {name} is not an environment variable name (letters, digits and _); "
            "give the variable's name, never the key itself"
        )
    return value


def check_positive_int(value: object, name: str, owner: str) -> int:
    """A whole number >= 1; raise ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {name} is {value!r}; give a whole number >= 1")
    return value


def check_verify(value: object, owner: str) -> bool | str | ssl.SSLContext:
    """``verify`` as given; raise unless it is a bool, a CA file or directory, or a context."""
    if isinstance(value, bool | ssl.SSLContext):
        return value
    if isinstance(value, str | os.PathLike):
        path = os.fspath(value)
        if not isinstance(path, str) or not os.path.exists(path):
            raise ValueError(f"{owner}: verify={value!r} names no CA file or directory")
        return path
    raise TypeError(
        f"{owner}: verify must be True, False, a CA bundle path or an ssl.SSLContext, "
        f"not {type(value).__name__}"
    )
