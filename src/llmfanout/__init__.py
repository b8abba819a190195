"""llmfanout: run many LLM calls and plain functions concurrently, on asyncio and trio."""

from ._base._advertised import RateLimitBudget, RateLimitInfo, parse_rate_limit_headers
from ._base._types import (
    AsyncLLMProvider,
    ImagePart,
    LLMMessage,
    LLMResponse,
    OtherPart,
    TextPart,
    ToolCall,
)
from ._batch._jobs import BatchJob, submit_batch
from ._core._executor import ParallelLLMExecutor, ResultStream
from ._core._retry import BackoffStrategy, RetryConfig, RetryExecutor
from ._core._tasks import DeterministicTask, LLMTask, TaskResult
from ._flow._limiter import Limiter
from ._flow._pacing import HeaderPacer
from ._flow._ratelimit import RateLimit
from ._report._cost import Price
from ._report._summary import RunSummary, summarize
from ._rows._job import JobError, JobSpec, RowStream, arun_rows, run_rows
from .errors import ProviderError, TaskAborted
from .providers import AnthropicProvider, OpenAIProvider
from .providers._echo import EchoProvider, ErrorResponse

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
