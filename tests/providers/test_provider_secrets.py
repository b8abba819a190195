"""The API key never leaves through an error, a header, a log line or a repr, whatever
encoding a server echoes it in (issue 9 item 1), on both transports and both backends."""

from __future__ import annotations

import contextlib
import json
import logging
import urllib.parse
from typing import Any

import anyio.abc
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import LLMMessage
from llmfanout.errors import ProviderError
from llmfanout.providers import AnthropicProvider, OpenAIProvider
from llmfanout.providers._secrets import Redactor

from support.raw_http_server import response, serve_raw

pytestmark = pytest.mark.anyio

MESSAGES = [LLMMessage("user", "hi")]


def spellings(key: str) -> dict[str, str]:
    """The key as a server might echo it."""
    escaped = "".join(f"\\u{ord(c):04x}" for c in key)
    return {
        "raw": key,
        "json-solidus": key.replace("/", "\\/"),
        "json-unicode": escaped,
        "json-first-char": f"\\u{ord(key[0]):04x}{key[1:]}",
        "url": urllib.parse.quote(key, safe=""),
        "url-lower": urllib.parse.quote(key, safe="").lower(),
    }


KEYS = ["sk-abc/def-123", "Q9/", "sk-proj-Zz9+/=_x"]  # any length: a 3-character one too
PLACES = ["body", "x-request-id", "location", "reason"]


def leaks(error: ProviderError, key: str, records: list[logging.LogRecord]) -> list[str]:
    """Every text the user may see that still holds the key, decoded or as echoed."""
    texts = {
        "str": str(error),
        "repr": repr(error),
        "args": repr(error.args),
        "body": error.body or "",
        "error_message": error.error_message or "",
        "request_id": error.request_id or "",
        "headers": json.dumps(error.headers or {}),
        "vars": repr(vars(error)),
        "log": "\n".join(r.getMessage() for r in records),
    }
    found = []
    for where, text in texts.items():
        for name, spelled in spellings(key).items():
            if spelled in text or (name != "raw" and key in _decoded(text)):
                found.append(f"{where}:{name}")
    return found


def _decoded(text: str) -> str:
    with contextlib.suppress(ValueError):
        text = json.loads(f'"{text}"')
    return urllib.parse.unquote(text)


def _answer_echoing(place: str, echoed: str) -> Any:
    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)
        status = "401 Unauthorized"
        body = b'{"error": {"message": "bad key", "type": "invalid_request_error"}}'
        if place == "body":
            body = b'{"error": {"message": "bad key %s"}}' % echoed.encode()
        elif place == "x-request-id":
            headers += (("x-request-id", f"r-{echoed}"),)
        elif place == "location":
            status = "307 Temporary Redirect"
            headers += (("location", f"https://x.example/?key={echoed}"),)
        else:
            status = f"401 Bad key {echoed}"
        await stream.send(response(status, body, headers))

    return answer


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("spelling", list(spellings("x")))
async def test_an_echoed_key_is_redacted_everywhere(
    key: str, place: str, spelling: str, caplog: pytest.LogCaptureFixture
) -> None:
    echoed = spellings(key)[spelling]
    caplog.set_level(logging.DEBUG, logger="llmfanout")
    async with (
        serve_raw(_answer_echoing(place, echoed)) as raw,
        OpenAIProvider("m", base_url=raw.base_url, api_key=key) as provider,
    ):
        with pytest.raises(ProviderError) as caught:
            await provider.complete(MESSAGES)
    assert caplog.records  # the error was logged, so the log was checked
    assert leaks(caught.value, key, caplog.records) == []


async def test_the_issue_repro_through_a_given_http_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = "sk-abc/def-123"
    caplog.set_level(logging.DEBUG, logger="llmfanout")
    body = b'{"error":{"message":"bad key sk-abc\\/def-123"}}'

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, content=body, headers={"x-request-id": "r-sk-abc/def-123"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        provider = AnthropicProvider("m", api_key=key, http_client=client)
        with pytest.raises(ProviderError) as caught:
            await provider.complete(MESSAGES)
    assert leaks(caught.value, key, caplog.records) == []
    assert caught.value.request_id == "r-***"


async def test_a_key_echoed_in_a_successful_answer_is_redacted() -> None:
    key = "sk-live-0123456789"
    answer_body = json.dumps(
        {"choices": [{"message": {"content": "your key is " + key.replace("-", "\\u002d")}}]}
    ).encode()

    async def answer(stream: anyio.abc.SocketStream, request: bytes) -> None:
        await stream.send(response(body=answer_body.replace(b"\\\\", b"\\")))

    async with (
        serve_raw(answer) as raw,
        OpenAIProvider("m", base_url=raw.base_url, api_key=key) as provider,
    ):
        result = await provider.complete(MESSAGES)
    assert result.content == "your key is ***"
    assert key not in json.dumps(result.metadata["raw"])


@given(
    key=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789-_/+=.", min_size=1, max_size=30),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
    data=st.data(),
)
def test_redactor_removes_every_spelling(key: str, before: str, after: str, data: Any) -> None:
    spelling = data.draw(st.sampled_from(sorted(spellings(key).values())))
    cleaned = Redactor(key).text(before + spelling + after)
    assert spelling not in cleaned or key not in before + after


def test_reprs_hide_the_key() -> None:
    key = "sk-hidden-0123456789"
    provider = OpenAIProvider("m", api_key=key)
    for text in (repr(provider), repr(vars(provider)), str(vars(provider))):
        assert key not in text
