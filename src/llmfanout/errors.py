"""Exceptions llmfanout raises or records in results.

Exception
 +-- TaskAborted          a task stopped (or never started) because the run hit max_errors
"""

from __future__ import annotations

__all__ = ["TaskAborted"]


class TaskAborted(Exception):
    """The task did not finish because the run stopped early (``max_errors`` was reached)."""

    retryable = False
