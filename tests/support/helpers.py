"""Small helpers shared by the test modules."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import httpx

from llmfanout import LLMMessage, LLMTask


def ask(text: str, **kwargs: Any) -> LLMTask:
    """An LLM task of one user message."""
    return LLMTask([LLMMessage("user", text)], **kwargs)


class Recorder:
    """An ``httpx.MockTransport`` handler: records requests, answers from a queue, then
    with ``default()``."""

    def __init__(self, default: Callable[[], httpx.Response], *answers: httpx.Response) -> None:
        self.requests: list[httpx.Request] = []
        self.answers = list(answers)
        self.default = default

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.answers:
            return self.answers.pop(0)
        return self.default()

    @property
    def body(self) -> Any:
        return json.loads(self.requests[-1].content)


P = TypeVar("P")


class MockedProviders(Generic[P]):
    """Makes providers that talk to a :class:`Recorder`; ``aclose()`` closes their clients.

    ``make(http_client=..., api_key=..., **options)`` builds the provider under test.
    """

    def __init__(self, make: Callable[..., P], default: Callable[[], httpx.Response]) -> None:
        self.make = make
        self.default = default
        self.clients: list[httpx.AsyncClient] = []

    def __call__(self, *answers: httpx.Response, **options: Any) -> tuple[P, Recorder]:
        recorder = Recorder(self.default, *answers)
        client = httpx.AsyncClient(transport=httpx.MockTransport(recorder))
        self.clients.append(client)
        return self.make(http_client=client, **options), recorder

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
