"""Pieces shared by the benchmark scripts (run as `python benchmarks/<script>.py`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio.lowlevel

from llmfanout import LLMMessage, LLMResponse

BACKENDS = ("asyncio", "trio")
RESPONSE = LLMResponse("pong", model="checkpoint")


class CheckpointProvider:
    """Yields once and returns a prebuilt response: what is left is scheduling cost."""

    async def complete(
        self, messages: Sequence[LLMMessage], config_overrides: Mapping[str, Any] | None = None
    ) -> LLMResponse:
        await anyio.lowlevel.checkpoint()
        return RESPONSE
