"""The API key: where it comes from, and how it is kept out of every text we show.

A server may echo the key back in any encoding: raw, JSON-escaped (``sk-abc\\/def``,
``\\u0073k-...``), percent-encoded, or a mixture, in its body, a header or its reason
phrase. :class:`Redactor` matches all of them with one compiled pattern in which every
character of the key may appear in any of those spellings, so one pass finds the key
however a server wrote it.
"""

from __future__ import annotations

import os
import re
import urllib.parse

_CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization"})
MASK = "***"


class Secret(str):
    """A string whose repr hides it, so a stray ``repr(vars(provider))`` shows no key."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


class SecretBytes(bytes):
    """Bytes (a request head holding the key) whose repr hides them."""

    def __repr__(self) -> str:
        return "b'***'"


class SecretHeaders(dict[str, str]):
    """Request headers whose repr hides the credential headers' values."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr({k: MASK if k.lower() in _CREDENTIAL_HEADERS else v for k, v in self.items()})


def _spellings(char: str) -> str:
    """A regex alternation for every way a JSON body, a URL or both may write ``char``."""
    code = ord(char)
    forms = [re.escape(char), rf"\\+u{code:04x}"]  # \u0073, and \\u0073 in nested JSON
    if code < 0x80:
        forms.append(rf"%(?:25)*{code:02x}")  # %2F, and %252F when encoded twice
    if char == "/":
        forms.append(r"\\+/")  # JSON may escape a solidus
    elif char in '"\\':
        forms.append(r"\\+" + re.escape(char))
    elif char == " ":
        forms.append(r"\+")
    return "(?:" + "|".join(forms) + ")"


class Redactor:
    """Replaces the key, in any spelling a server might echo it in, with ``***``."""

    __slots__ = ("_bytes", "_raw", "_text")

    def __init__(self, secret: str) -> None:
        pattern = "".join(_spellings(c) for c in secret) if secret else "(?!)"
        self._text = re.compile(pattern, re.IGNORECASE)
        self._bytes = re.compile(pattern.encode("utf-8"), re.IGNORECASE)
        self._raw = secret.lower().encode("utf-8") if secret else b"\0"

    def __repr__(self) -> str:
        return "Redactor(***)"

    def text(self, text: str) -> str:
        """``text`` with every spelling of the key replaced by ``***``."""
        return self._text.sub(MASK, text)

    def optional(self, text: str | None) -> str | None:
        """As :meth:`text`, passing None through."""
        return None if text is None else self._text.sub(MASK, text)

    def data(self, data: bytes) -> bytes:
        """``data`` with every spelling of the key replaced by ``***`` (no copy when absent).

        The common case is cheap: without an escape (``\\``) or a ``%`` in ``data`` only
        the raw spelling can occur, and a substring test finds it.
        """
        if b"\\" not in data and b"%" not in data and self._raw not in data.lower():
            return data
        return self._bytes.sub(MASK.encode(), data) if self._bytes.search(data) else data


# A run of characters a bearer token may be written in, escapes and all (see TokenRedactor).
_RUN = re.compile(r"[!-~]+")
_UNICODE_ESCAPE = re.compile(r"\\+u([0-9a-fA-F]{4})")
_BACKSLASHED = re.compile(r"\\+([/\"\\])")


def _plain(run: str) -> str:
    """``run`` with JSON escapes and percent-encoding (nested too) undone, in lower case."""
    for _ in range(4):
        before = run
        run = _UNICODE_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), run)
        run = _BACKSLASHED.sub(r"\1", run)
        run = urllib.parse.unquote(run)
        if run == before:
            break
    return run.lower()


class TokenRedactor(Redactor):
    """Replaces bearer tokens (the current one and those it replaced), however spelt, with ``***``.

    :class:`Redactor` compiles one pattern per secret, which takes about half a second for
    a 2 kB Entra ID token: too slow to renew whenever a token rotates. Here nothing is
    compiled per token. A text holding neither a token raw nor an escape that could spell
    one is returned as it is (a substring test); otherwise each run of printable
    characters is decoded (JSON escapes, percent-encoding, nested too) and compared. A run
    holding a token raw loses the token; one holding it in an escaped spelling is masked
    whole.
    """

    __slots__ = ("_escapes", "_tokens")

    def __init__(self, *tokens: str) -> None:  # Redactor's patterns are not compiled
        self._tokens = tuple(t.lower() for t in tokens if t)
        # What could start an escaped spelling of a token's character.
        escapes = ["\\u", "%"] + ["\\" + c for c in '/"\\' if any(c in t for t in tokens)]
        self._escapes = tuple(escapes)

    def __repr__(self) -> str:
        return "TokenRedactor(***)"

    def _mask(self, found: re.Match[str]) -> str:
        run = found.group(0)
        lowered = run.lower()
        if not any(token in lowered for token in self._tokens):
            plain = _plain(run)
            return MASK if any(token in plain for token in self._tokens) else run
        for token in self._tokens:
            run = re.sub(re.escape(token), MASK, run, flags=re.IGNORECASE)
        return run

    def text(self, text: str) -> str:
        """``text`` with every spelling of a token replaced by ``***``."""
        if not self._tokens:
            return text
        if not any(e in text for e in self._escapes):
            lowered = text.lower()
            if not any(token in lowered for token in self._tokens):
                return text
        return _RUN.sub(self._mask, text)

    def optional(self, text: str | None) -> str | None:
        """As :meth:`text`, passing None through."""
        return None if text is None else self.text(text)

    def data(self, data: bytes) -> bytes:
        """``data`` with every spelling of a token replaced (no copy when there is none)."""
        text = data.decode("utf-8", "surrogateescape")
        cleaned = self.text(text)
        return data if cleaned == text else cleaned.encode("utf-8", "surrogateescape")


def header_safe(secret: str) -> bool:
    """Whether an HTTP header can carry ``secret``: printable ASCII, no space."""
    return secret.isascii() and secret.isprintable() and not any(c.isspace() for c in secret)


def redact(text: str, secret: str) -> str:
    """``text`` with every spelling of ``secret`` replaced by ``***``."""
    return Redactor(secret).text(text) if secret else text


def resolve_api_key(api_key: str | None, env_var: str, owner: str) -> str:
    """The key given, else the one in ``env_var``; raise if there is none or it is unusable.

    Raises ``ValueError`` naming the environment variable when no key is found, and when
    the key holds a character an HTTP header cannot carry (the key itself is never shown).
    """
    if api_key is None:
        api_key = os.environ.get(env_var, "").strip()
        where = f"the {env_var} environment variable"
    elif not isinstance(api_key, str):
        raise TypeError(f"{owner}: api_key must be a str, not {type(api_key).__name__}")
    else:
        where = "api_key"
    if not api_key:
        raise ValueError(
            f"{owner}: no API key; set the {env_var} environment variable or pass api_key=... "
            "(a local server that needs no key accepts any string, e.g. api_key='none')"
        )
    if not header_safe(api_key):
        raise ValueError(
            f"{owner}: the API key from {where} holds a space, a control or a non-ASCII "
            "character, which an HTTP header cannot carry; check that it was copied whole"
        )
    return api_key
