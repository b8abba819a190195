"""Provider batch jobs: the OpenAI Batch API and Anthropic Message Batches, at half price.

:func:`submit_batch` checks every task, splits them into as few provider batches as the
limits allow and creates them, recording each step in a state file first; a
:class:`BatchJob` (restored with :meth:`BatchJob.load`) waits, reads one result per task,
and cancels. See docs/batch.md.
"""

from . import BatchJob, submit_batch  # through the top level, which names them for itself
from ._base._public import publish
from ._batch._api import BatchRequestCancelled, BatchRequestError, BatchRequestExpired
from ._batch._jobs import BatchPart, BatchProgress, Polling
from ._batch._state import BatchStateError

__all__ = [
    "BatchJob",
    "BatchPart",
    "BatchProgress",
    "BatchRequestCancelled",
    "BatchRequestError",
    "BatchRequestExpired",
    "BatchStateError",
    "Polling",
    "submit_batch",
]

publish(__name__, globals(), __all__)
