"""llmfanout: run many LLM calls and plain functions concurrently, on asyncio and trio."""

from ._echo import EchoProvider, ErrorResponse
from ._executor import ParallelLLMExecutor
from ._ratelimit import RateLimit
from ._retry import BackoffStrategy, RetryConfig, RetryExecutor
from ._tasks import DeterministicTask, LLMTask, TaskResult
from ._types import AsyncLLMProvider, LLMMessage, LLMResponse
from .errors import TaskAborted

__all__ = [
    "AsyncLLMProvider",
    "BackoffStrategy",
    "DeterministicTask",
    "EchoProvider",
    "ErrorResponse",
    "LLMMessage",
    "LLMResponse",
    "LLMTask",
    "ParallelLLMExecutor",
    "RateLimit",
    "RetryConfig",
    "RetryExecutor",
    "TaskAborted",
    "TaskResult",
]

__version__ = "0.1.0.dev0"
