"""The response cache: never pay twice for the same request.

:class:`SQLiteCache` keeps answers in one SQLite file (several processes may share it);
:class:`RedisCache` in Redis, shared by every worker of a cluster (needs the ``redis``
extra: ``pip install 'llmfanout[redis]'``); anything with async ``get``/``put`` is a
:class:`Cache`. Give one to ``ParallelLLMExecutor(..., cache=...)``,
``JobSpec(cache=...)`` or ``llmfanout run --cache``. :func:`request_key` is the key a
call gets. See docs/cache.md.
"""

from ._base._public import publish
from ._cache._front import Cache
from ._cache._key import request_key
from ._cache._redis import RedisCache
from ._cache._sqlite import CacheStats, SQLiteCache

__all__ = ["Cache", "CacheStats", "RedisCache", "SQLiteCache", "request_key"]

publish(__name__, globals(), __all__)
