"""llmfanout: run many LLM calls and plain functions concurrently, on asyncio and trio."""

from ._advertised import RateLimitBudget, RateLimitInfo, parse_rate_limit_headers
from ._batch import BatchJob, submit_batch
from ._cost import Price
from ._echo import EchoProvider, ErrorResponse
from ._executor import ParallelLLMExecutor, ResultStream
from ._job import JobError, JobSpec, RowStream, arun_rows, run_rows
from ._limiter import Limiter
from ._pacing import HeaderPacer
from ._ratelimit import RateLimit
from ._retry import BackoffStrategy, RetryConfig, RetryExecutor
from ._summary import RunSummary, summarize
from ._tasks import DeterministicTask, LLMTask, TaskResult
from ._types import (
    AsyncLLMProvider,
    ImagePart,
    LLMMessage,
    LLMResponse,
    OtherPart,
    TextPart,
    ToolCall,
)
from .errors import ProviderError, TaskAborted
from .providers import AnthropicProvider, OpenAIProvider

__all__ = [
    "AnthropicProvider",
    "AsyncLLMProvider",
    "BackoffStrategy",
    "BatchJob",
    "DeterministicTask",
    "EchoProvider",
    "ErrorResponse",
    "HeaderPacer",
    "ImagePart",
    "JobError",
    "JobSpec",
    "LLMMessage",
    "LLMResponse",
    "LLMTask",
    "Limiter",
    "OpenAIProvider",
    "OtherPart",
    "ParallelLLMExecutor",
    "Price",
    "ProviderError",
    "RateLimit",
    "RateLimitBudget",
    "RateLimitInfo",
    "ResultStream",
    "RetryConfig",
    "RetryExecutor",
    "RowStream",
    "RunSummary",
    "TaskAborted",
    "TaskResult",
    "TextPart",
    "ToolCall",
    "arun_rows",
    "parse_rate_limit_headers",
    "run_rows",
    "submit_batch",
    "summarize",
]

__version__ = "0.1.0.dev0"
