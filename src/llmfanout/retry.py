"""Retry policies: :class:`RetryConfig`, :class:`BackoffStrategy` and :class:`RetryExecutor`."""

from ._base._public import publish
from ._core._retry import BackoffStrategy, RetryConfig, RetryExecutor, backoff_delay, is_retryable

__all__ = ["BackoffStrategy", "RetryConfig", "RetryExecutor", "backoff_delay", "is_retryable"]

publish(__name__, globals(), __all__)
