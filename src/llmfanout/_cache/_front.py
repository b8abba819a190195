"""The executor's side of a cache: the ``Cache`` protocol, keys, hits, one call per request.

:class:`CacheFront` keys a call (:mod:`._key`), looks it up, and on a miss makes sure
identical calls in flight at the same moment in one event loop are sent once: the first
leads a *flight*, the others wait for it. The flight's call runs in a child task of the
leader, shielded from the leader's own cancellation while others still wait for it:
cancelling any one waiter, the leader included, never cancels the call the others wait
for (a cancelled leader leaves when that call ends); the call is cancelled as soon as no
one waits for it any more, so cancelling them all (Ctrl-C) is prompt. When it ends in a
good answer every waiter gets that answer (as a hit: it cost nothing more); when it
fails each waiter makes its own call, with its own retries. Only a successful answer is
stored: errors, cut streams and answers the retry policy rejected never reach ``put``.

A store that fails (Redis down, a full disk) never fails a call: the call goes through
as a miss and the failure is logged, once at warning level.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import anyio
import attrs

from .._base._perloop import PerLoop
from .._base._types import LLMMessage, LLMResponse
from ._key import request_key

logger = logging.getLogger("llmfanout")

R = TypeVar("R")


@runtime_checkable
class Cache(Protocol):
    """Anything with async ``get`` and ``put`` is a cache; no base class is needed.

    ``get(key)`` returns the answer stored under ``key`` (a hex string) or None;
    ``put(key, response)`` stores a successful answer. An optional ``namespace``
    attribute (a str) is mixed into every key. A hit should carry
    ``metadata["cached"] = True``; the executor marks it if it does not.
    """

    async def get(self, key: str) -> LLMResponse | None: ...

    async def put(self, key: str, response: LLMResponse) -> None: ...


def check_cache(cache: object, owner: str) -> Cache | None:
    """``cache`` if it is None or has async ``get`` and ``put``; else ``TypeError``."""
    if cache is None:
        return None
    if not (callable(getattr(cache, "get", None)) and callable(getattr(cache, "put", None))):
        raise TypeError(
            f"{owner}: cache is a {type(cache).__name__} with no get/put; give "
            "llmfanout.cache.SQLiteCache(path), RedisCache(url), or an object with "
            "`async def get(key)` and `async def put(key, response)`"
        )
    namespace = getattr(cache, "namespace", "")
    if not isinstance(namespace, str):
        raise TypeError(f"{owner}: cache.namespace must be a str, not {type(namespace).__name__}")
    return cache  # type: ignore[return-value]


def mark(response: LLMResponse, cached: bool) -> LLMResponse:
    """``response`` with ``metadata["cached"]`` set (the same object if it already is)."""
    if response.metadata.get("cached") is cached:
        return response
    return attrs.evolve(response, metadata={**response.metadata, "cached": cached})


class _Flight:
    __slots__ = ("done", "ended", "response", "result", "scope", "settled", "waiters")

    def __init__(self) -> None:
        # Made by the first waiter: a hit (no one waits) makes no event.
        self.done: anyio.Event | None = None
        self.settled = False  # it ended one way or another; no one need wait
        self.waiters = 0
        self.scope: anyio.CancelScope | None = None
        self.ended = False  # the call ran to its end (not cancelled)
        self.response: LLMResponse | None = None  # its good answer
        self.result: Any = None  # what the call returned, for the waiter that started it


class CacheFront:
    """One executor's cache: ``cache`` in front of ``provider``'s calls (see the module)."""

    __slots__ = ("_flights", "_warned", "cache", "namespace", "provider")

    def __init__(self, cache: Cache, provider: object) -> None:
        self.cache = cache
        self.provider = provider
        self.namespace: str = getattr(cache, "namespace", "") or ""
        self._flights = PerLoop[dict[str, _Flight]]()
        self._warned = False

    def key(
        self, messages: Sequence[LLMMessage], overrides: Mapping[str, Any] | None
    ) -> str | None:
        """The call's key; None if it cannot be keyed (it then goes uncached)."""
        return request_key(self.provider, messages, overrides, self.namespace)

    async def lookup(self, key: str) -> LLMResponse | None:
        """The stored answer, marked as a hit; None on a miss or a failing store."""
        try:
            hit = await self.cache.get(key)
        except Exception as exc:
            self._complain("read from", exc)
            return None
        return None if hit is None else mark(hit, True)

    async def store(self, key: str, response: LLMResponse) -> None:
        """Store a good answer; a failing store is logged, never raised."""
        try:
            await self.cache.put(key, response)
        except Exception as exc:
            self._complain("write to", exc)

    def _complain(self, what: str, exc: Exception) -> None:
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        logger.log(
            level, "could not %s the cache %r (%s): the call goes uncached", what, self.cache, exc
        )

    async def run(
        self,
        key: str,
        call: Callable[[], Awaitable[R]],
        answer: Callable[[R], LLMResponse | None],
    ) -> R | LLMResponse:
        """A stored answer (a hit), the answer an identical call in flight got (also a
        hit: it cost nothing more), or ``call()``'s own result.

        ``answer(result)`` is the good answer a result holds (None if it failed).
        """
        flights = self._flights.get(None)
        if flights is None:
            flights = {}
            self._flights.set(flights)
        while True:
            flight = flights.get(key)
            if flight is not None:
                await self._wait(flight)
                if flight.response is not None:
                    return mark(flight.response, True)
                if flight.ended:  # it failed: this caller makes its own call
                    return await call()
                continue  # cancelled (its run ended) while this caller waited: lead anew
            flight = _Flight()
            flights[key] = flight
            # Looked up inside the flight: an identical call arriving meanwhile waits for
            # this one rather than finding neither an entry nor a flight.
            try:
                hit = await self.lookup(key)
            except BaseException:  # cancelled (noqa: cancellation-ok): re-raised
                del flights[key]
                _settle(flight)
                raise
            if hit is not None:
                flight.response = hit
                flight.ended = True
                del flights[key]
                _settle(flight)
                return hit
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._fly, flights, flight, key, call, answer)
                await self._wait(flight)
            if flight.ended:
                return flight.result  # type: ignore[no-any-return]

    async def _wait(self, flight: _Flight) -> None:
        if flight.settled:
            return
        if flight.done is None:
            flight.done = anyio.Event()
        flight.waiters += 1
        try:
            await flight.done.wait()
        finally:
            flight.waiters -= 1
            if not flight.waiters and not flight.settled and flight.scope is not None:
                flight.scope.cancel()  # no one wants the answer any more

    async def _fly(
        self,
        flights: dict[str, _Flight],
        flight: _Flight,
        key: str,
        call: Callable[[], Awaitable[R]],
        answer: Callable[[R], LLMResponse | None],
    ) -> None:
        try:
            # Shielded: only _wait cancels it, when its last waiter leaves.
            with anyio.CancelScope(shield=True) as flight.scope:
                if not flight.waiters:  # its leader was cancelled before it started
                    flight.scope.cancel()
                result = await call()
                flight.result = result
                await self._land(flight, key, answer(result))
        finally:
            del flights[key]
            _settle(flight)

    async def _land(self, flight: _Flight, key: str, response: LLMResponse | None) -> None:
        if response is not None:
            flight.response = response
            await self.store(key, response)
        flight.ended = True


def _settle(flight: _Flight) -> None:
    flight.settled = True
    if flight.done is not None:
        flight.done.set()
