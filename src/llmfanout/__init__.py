"""llmfanout: run many LLM calls and plain functions concurrently, on asyncio and trio.

This module re-exports the public names; the work happens in private subpackages, each a
layer that imports only the layers below it (``lint-imports`` checks it; see
docs/architecture.md)::

    _cli            the command line: one module per subcommand
    _rows | _batch  row jobs (JSONL in, rows out) | provider batch APIs
    _report         the run summary, cost, the progress bar
    _core | providers   the scheduler and attempts | providers and their transports
    _flow | _structured  who may start a call and when | schemas and re-asks
    errors          the exception hierarchy
    _base           the vocabulary: messages, responses, advertised limits, checks

The HTTP providers and the batch API load on first use (PEP 562 ``__getattr__`` below):
together they are a third of the import, and a run that never names them pays nothing.
"""

from typing import TYPE_CHECKING, Any

from ._base._advertised import RateLimitBudget, RateLimitInfo, parse_rate_limit_headers
from ._base._embeddings import AsyncEmbeddingProvider, EmbeddingCaps, EmbeddingResponse
from ._base._public import publish
from ._base._types import (
    AsyncLLMProvider,
    ImagePart,
    LLMMessage,
    LLMResponse,
    OtherPart,
    TextPart,
    ToolCall,
)
from ._base._version import VERSION
from ._core._embed import EmbeddingResult, EmbeddingTask, aembed, embed
from ._core._executor import ParallelLLMExecutor
from ._core._retry import BackoffStrategy, RetryConfig, RetryExecutor
from ._core._run import ResultStream
from ._core._tasks import DeterministicTask, LLMTask, TaskResult
from ._deploy._pool import Pool
from ._deploy._slots import DeploymentStats
from ._deploy._spec import Deployment
from ._flow._limiter import Limiter
from ._flow._pacing import HeaderPacer
from ._flow._ratelimit import RateLimit
from ._report._cost import Price
from ._report._summary import RunSummary, summarize
from ._rows._job import RowStream, arun_rows, run_rows
from ._rows._spec import JobError, JobSpec
from .errors import ProviderError, TaskAborted
from .providers._echo import EchoProvider, ErrorResponse

if TYPE_CHECKING:
    from ._batch._jobs import BatchJob
    from ._batch._submit import submit_batch
    from .providers import AnthropicProvider, GeminiProvider, OpenAIProvider

__all__ = [
    "AnthropicProvider",
    "AsyncEmbeddingProvider",
    "AsyncLLMProvider",
    "BackoffStrategy",
    "BatchJob",
    "Deployment",
    "DeploymentStats",
    "DeterministicTask",
    "EchoProvider",
    "EmbeddingCaps",
    "EmbeddingResponse",
    "EmbeddingResult",
    "EmbeddingTask",
    "ErrorResponse",
    "GeminiProvider",
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
    "Pool",
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
    "aembed",
    "arun_rows",
    "embed",
    "parse_rate_limit_headers",
    "run_rows",
    "submit_batch",
    "summarize",
]

_LAZY = ("AnthropicProvider", "BatchJob", "GeminiProvider", "OpenAIProvider", "submit_batch")

publish(__name__, globals(), [name for name in __all__ if name not in _LAZY])

__version__ = VERSION


def __getattr__(name: str) -> Any:
    if name in ("AnthropicProvider", "GeminiProvider", "OpenAIProvider"):
        from . import providers  # publishes them as llmfanout.providers.X

        value = getattr(providers, name)
    elif name == "BatchJob":
        from ._batch._jobs import BatchJob as value
    elif name == "submit_batch":
        from ._batch._submit import submit_batch as value
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    publish(__name__, {name: value}, [name])
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
