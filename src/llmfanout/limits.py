"""Rate limits: :class:`RateLimit` for one process, :class:`RedisRateLimit` for many.

``RedisRateLimit`` needs the ``redis`` extra: ``pip install 'llmfanout[redis]'``.
"""

from ._base._public import publish
from ._flow._ratelimit import RateLimit
from ._flow._redislimit import RedisRateLimit, SharedLimitError

__all__ = ["RateLimit", "RedisRateLimit", "SharedLimitError"]

publish(__name__, globals(), __all__)
