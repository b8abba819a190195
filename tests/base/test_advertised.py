"""Advertised rate limits: both header families parsed, malformed values left out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import RateLimitBudget, RateLimitInfo, parse_rate_limit_headers
from llmfanout._base._advertised import parse_duration

from support.fake_llm_server import go_duration

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("8ms", 0.008),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("17.28s", 17.28),
        ("2m59.56s", 179.56),
        ("250us", 0.00025),
        ("12", 12.0),  # a bare number: seconds
        ("0.5", 0.5),
    ],
)
def test_durations_as_openai_writes_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "-1s", "1s 2m", "m1s", "1.2.3s", "inf", "nan"])
def test_malformed_durations_are_none(text: str) -> None:
    assert parse_duration(text) is None


@given(st.integers(0, 48), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_durations_round_trip(hours: int, minutes: int, seconds: int, millis: int) -> None:
    total = hours * 3600 + minutes * 60 + seconds + millis / 1000
    parts = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "")
    text = parts + f"{seconds}.{millis:03d}s"
    assert parse_duration(text) == pytest.approx(total)
    assert parse_duration(go_duration(total)) == pytest.approx(total, abs=1e-3)


@given(st.text(max_size=30))
def test_any_duration_text_parses_or_is_none(text: str) -> None:
    value = parse_duration(text)
    assert value is None or value >= 0


def test_openai_headers() -> None:
    headers = httpx.Headers(
        {
            "x-ratelimit-limit-requests": "5000",
            "x-ratelimit-remaining-requests": "4999",
            "x-ratelimit-reset-requests": "12ms",
            "X-RateLimit-Limit-Tokens": "160000",  # any case
            "x-ratelimit-remaining-tokens": "159976",
            "x-ratelimit-reset-tokens": "6m0s",
            "content-type": "application/json",
        }
    )
    assert parse_rate_limit_headers(headers) == RateLimitInfo(
        requests=RateLimitBudget(5000, 4999, 0.012),
        tokens=RateLimitBudget(160000, 159976, 360.0),
    )


def test_anthropic_headers() -> None:
    reset = (NOW + timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": reset,
        "anthropic-ratelimit-tokens-limit": "40000",
        "anthropic-ratelimit-tokens-remaining": "39000",
        "anthropic-ratelimit-tokens-reset": "2025-01-01T12:00:01.5+00:00",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39500",
        "anthropic-ratelimit-input-tokens-reset": "2025-01-01T11:59:00Z",  # past: now
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "7500",
        "anthropic-ratelimit-output-tokens-reset": "2025-01-01T12:01:00Z",
    }
    info = parse_rate_limit_headers(headers, now=NOW)
    assert info == RateLimitInfo(
        requests=RateLimitBudget(50, 49, 30.0),
        tokens=RateLimitBudget(40000, 39000, 1.5),
        input_tokens=RateLimitBudget(40000, 39500, 0.0),
        output_tokens=RateLimitBudget(8000, 7500, 60.0),
    )
    assert info is not None and info.token_budget == info.tokens


def test_anthropic_without_a_total_token_budget_counts_input_tokens() -> None:
    info = parse_rate_limit_headers([("anthropic-ratelimit-input-tokens-remaining", "10")], now=NOW)
    assert info is not None and info.token_budget == RateLimitBudget(remaining=10)


def test_no_limit_headers_is_none() -> None:
    assert parse_rate_limit_headers({"content-type": "application/json"}) is None
    assert parse_rate_limit_headers({}) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # A malformed value is left out; the rest of the budget stays.
        (
            {"x-ratelimit-limit-requests": "lots", "x-ratelimit-remaining-requests": "3"},
            RateLimitInfo(requests=RateLimitBudget(remaining=3)),
        ),
        (
            {"x-ratelimit-remaining-requests": "-1", "x-ratelimit-reset-requests": "soon"},
            None,
        ),
        (
            {
                "anthropic-ratelimit-requests-reset": "tomorrow",
                "anthropic-ratelimit-requests-limit": "5",
            },
            RateLimitInfo(requests=RateLimitBudget(limit=5)),
        ),
        # A time with no offset is ambiguous: left out.
        ({"anthropic-ratelimit-requests-reset": "2025-01-01T12:00:30"}, None),
        ({"x-ratelimit-remaining-requests": "1e3"}, None),
        (
            {"x-ratelimit-remaining-requests": " 7 "},
            RateLimitInfo(requests=RateLimitBudget(remaining=7)),
        ),
    ],
)
def test_malformed_values_are_ignored(
    headers: dict[str, str], expected: RateLimitInfo | None
) -> None:
    assert parse_rate_limit_headers(headers, now=NOW) == expected


header_names = st.sampled_from(
    [
        f"{prefix}{kind}-{field}"
        for prefix in ("anthropic-ratelimit-",)
        for kind in ("requests", "tokens", "input-tokens", "output-tokens")
        for field in ("limit", "remaining", "reset")
    ]
    + [
        f"x-ratelimit-{field}-{kind}"
        for kind in ("requests", "tokens")
        for field in ("limit", "remaining", "reset")
    ]
)


@given(st.dictionaries(header_names, st.text(max_size=40), max_size=8))
def test_any_header_values_parse_or_are_left_out(headers: dict[str, str]) -> None:
    info = parse_rate_limit_headers(headers, now=NOW)
    if info is None:
        return
    for budget in (info.requests, info.tokens, info.input_tokens, info.output_tokens):
        if budget is None:
            continue
        assert budget != RateLimitBudget()  # a budget with nothing in it is absent
        assert budget.limit is None or budget.limit >= 0
        assert budget.remaining is None or budget.remaining >= 0
        assert budget.reset is None or budget.reset >= 0


@given(
    limit=st.integers(0, 10**9),
    remaining=st.integers(0, 10**9),
    reset=st.floats(0, 86_400, allow_nan=False),
)
def test_well_formed_values_round_trip_in_both_families(
    limit: int, remaining: int, reset: float
) -> None:
    openai = parse_rate_limit_headers(
        {
            "x-ratelimit-limit-tokens": str(limit),
            "x-ratelimit-remaining-tokens": str(remaining),
            "x-ratelimit-reset-tokens": go_duration(reset),
        }
    )
    assert openai is not None and openai.tokens is not None
    assert (openai.tokens.limit, openai.tokens.remaining) == (limit, remaining)
    assert openai.tokens.reset == pytest.approx(reset, abs=1e-3)
    at = (NOW + timedelta(seconds=reset)).isoformat()
    anthropic = parse_rate_limit_headers(
        {
            "anthropic-ratelimit-requests-limit": str(limit),
            "anthropic-ratelimit-requests-remaining": str(remaining),
            "anthropic-ratelimit-requests-reset": at,
        },
        now=NOW,
    )
    assert anthropic is not None and anthropic.requests is not None
    assert anthropic.requests.reset == pytest.approx(reset, abs=1e-5)
