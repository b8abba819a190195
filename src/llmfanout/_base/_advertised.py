"""The rate limits a server advertises in its response headers, parsed into a small value.

Two header families are read, on successes and errors alike:

- OpenAI (and most OpenAI-compatible servers):
  ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; a reset is a Go-style
  duration until the budget is whole again (``1s``, ``6m0s``, ``8ms``, ``1h2m3.5s``).
- Anthropic:
  ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``;
  a reset is an RFC 3339 time (``2025-01-01T00:01:00Z``).

Servers, proxies and look-alikes get these subtly wrong, so parsing is forgiving: a value
that does not parse is left out (None), never an error, and a budget with nothing usable
is absent. Resets are stored as seconds from when the response arrived, so a value means
the same whichever family it came from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime

import attrs

__all__ = ["RateLimitBudget", "RateLimitInfo", "parse_duration", "parse_rate_limit_headers"]


@attrs.frozen
class RateLimitBudget:
    """One advertised budget (requests, or tokens) as a response reported it.

    ``limit``: the most the budget holds (per minute, for the OpenAI and Anthropic APIs);
    ``remaining``: what is left now; ``reset``: seconds, from when the response arrived,
    until the budget is whole again. Each is None when the server did not send it or sent
    something that does not parse.
    """

    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None


@attrs.frozen
class RateLimitInfo:
    """The rate limits one response advertised: a :class:`RateLimitBudget` per kind.

    ``tokens`` is the OpenAI token budget, or Anthropic's most restrictive token limit in
    effect; ``input_tokens`` and ``output_tokens`` are Anthropic's separate ones. A kind
    the server did not report is None. Attached to ``LLMResponse.rate_limits`` and to
    ``ProviderError.rate_limits`` by the built-in providers (None when the server sends
    no limit headers).
    """

    requests: RateLimitBudget | None = None
    tokens: RateLimitBudget | None = None
    input_tokens: RateLimitBudget | None = None
    output_tokens: RateLimitBudget | None = None

    @property
    def token_budget(self) -> RateLimitBudget | None:
        """The budget a call's total tokens count against: ``tokens``, else ``input_tokens``."""
        return self.tokens if self.tokens is not None else self.input_tokens


_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_COUNT = re.compile(r"\d{1,18}")


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (``1h2m3.5s``, ``6m0s``, ``8ms``), or None.

    A bare number counts as seconds (some compatible servers send ``12`` or ``0.5``).
    Negative, empty and malformed values give None.
    """
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    total, at = 0.0, 0
    for part in _PART.finditer(text):
        if part.start() != at:
            return None
        total += float(part.group(1)) * _UNITS[part.group(2)]
        at = part.end()
    if at == 0 or at != len(text) or not math.isfinite(total):
        return None
    return total


def _seconds_until(text: str, now: datetime) -> float | None:
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if when.tzinfo is None:  # RFC 3339 always has an offset; a naive time is ambiguous
        return None
    return max(0.0, (when - now).total_seconds())


def _count(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if _COUNT.fullmatch(text) else None


def _budget(
    headers: Mapping[str, str], names: tuple[str, str, str], reset: float | None
) -> RateLimitBudget | None:
    limit = _count(headers.get(names[0]))
    remaining = _count(headers.get(names[1]))
    if limit is None and remaining is None and reset is None:
        return None
    return RateLimitBudget(limit, remaining, reset)


def _openai(headers: Mapping[str, str], kind: str) -> RateLimitBudget | None:
    names = (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", "")
    raw = headers.get(f"x-ratelimit-reset-{kind}")
    return _budget(headers, names, None if raw is None else parse_duration(raw))


def _anthropic(headers: Mapping[str, str], kind: str, now: datetime) -> RateLimitBudget | None:
    prefix = f"anthropic-ratelimit-{kind}-"
    raw = headers.get(prefix + "reset")
    reset = None if raw is None else _seconds_until(raw, now)
    return _budget(headers, (prefix + "limit", prefix + "remaining", ""), reset)


def parse_rate_limit_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    *,
    now: datetime | None = None,
) -> RateLimitInfo | None:
    """The limits advertised in response ``headers`` (either family), or None if none are.

    ``headers`` is a mapping (an ``httpx.Headers``, a dict) or ``(name, value)`` pairs;
    names are matched case-insensitively. ``now`` (an aware datetime, the wall clock by
    default) is what Anthropic's reset times are measured from. Never raises for a bad
    value: the value is left out.
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    found = {
        name.lower(): value
        for name, value in items
        if isinstance(name, str)
        and isinstance(value, str)
        and name[:1] in "xXaA"
        and "ratelimit" in name.lower()
    }
    if not found:
        return None
    if any(name.startswith("anthropic-") for name in found):
        moment = now if now is not None else datetime.now().astimezone()
        kinds = ("requests", "tokens", "input-tokens", "output-tokens")
        budgets = [_anthropic(found, kind, moment) for kind in kinds]
    else:
        budgets = [_openai(found, "requests"), _openai(found, "tokens"), None, None]
    if all(b is None for b in budgets):
        return None
    return RateLimitInfo(*budgets)
