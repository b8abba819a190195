"""Pool: several deployments (keys, endpoints, models) used as one provider.

Each deployment keeps what a lone provider would: its own pacer fed by the limits its
answers advertise, its own AIMD window, its own cooldown after a 429, its own
connection pool (its provider's), its own ``rpm``/``tpm``. The pool adds three things:

- **Routing.** Each call (each attempt of a call) goes to the deployment that can start
  it soonest, the least loaded for its weight among those free now; a call never goes
  where it does not fit (``context_window``), and never back to a deployment that just
  failed it while another can take it.
- **Failover, counted once.** The pool makes one request per ``complete`` (one per
  attempt): the executor's ``RetryConfig`` drives failover, so ``max_attempts`` and
  ``patience`` count across the whole call, whatever the number of deployments. A 429
  cools its deployment and comes back with ``retry_after`` set to when the soonest
  deployment can take the call (0: another one can now), so the retry goes there at
  once, or waits (within patience) when every deployment is cooling. Transient failures
  (refused, reset, 5xx) count against the deployment; after ``trip_after`` in a row it
  is taken out for ``reopen_after`` seconds (doubling while it keeps failing), then one
  call probes it back in.
- **Fallbacks by cause.** A refusal no retry can cure (the prompt is too long, a content
  filter, an unknown model) goes at once, in the same attempt, to the next deployment
  declared for that cause (``fallback_for``), and for a too-long prompt only to one
  whose ``context_window`` holds it. A key a deployment refuses (401, 403) takes that
  deployment out for good and the call on to another.

``hedge_after`` (seconds, or a latency quantile such as ``"p95"``; off by default: it
costs money) sends a second copy of a call that has not answered by then to another
deployment; the first whole answer wins and the other copy is cancelled. Inside
``async with pool:`` one timer per block sends the copies (``_hedge``); a pool not
entered makes a task group per hedged call.

``async with pool:`` blocks may nest and overlap (a library's block inside yours, or one
block per task): the providers are closed when the last open block leaves, not the first.

The module is long (about 650 lines) because ``Pool`` is one piece: routing, failover,
fallbacks and hedging all read and write the same slots within one call's attempts; the
bookkeeping they share (slots, stats, the stamped answer) is in ``_slots``.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar, copy_context
from types import TracebackType
from typing import Any, Self

import anyio
import attrs

from .._base._perloop import PerLoop
from .._base._types import AsyncLLMProvider, LLMMessage, LLMResponse, LoopBound, to_messages
from .._core._retry import TESTING
from .._flow._governor import refused_credential
from .._flow._patience import is_overload
from .._flow._ratelimit import estimate_tokens
from ..errors import BadRequestError, ProviderError, TaskAborted
from ._causes import CONTENT_FILTER, CONTEXT_WINDOW, cause_of
from ._hedge import HOST, HedgeHost, Race
from ._latency import LatencyWindow, parse_quantile
from ._slots import (
    _DEFAULT_COOL,
    _STAMPABLE,
    DeploymentStats,
    _fits,
    _load,
    _Prompt,
    _Slot,
    _stamped,
    _with_retry_after,
)
from ._spec import Deployment, check_roster

__all__ = ["DeploymentStats", "Pool"]


class _Call:
    """One call's state across its attempts: what it learnt of the deployments."""

    __slots__ = (
        "_need",
        "_overrides",
        "cause",
        "done",
        "failed",
        "hedged",
        "messages",
        "pool",
        "sends",
        "tried",
    )

    def __init__(
        self, pool: Pool, messages: Sequence[LLMMessage], overrides: Mapping[str, Any] | None
    ) -> None:
        self.pool = pool
        self.messages = messages
        self._overrides = overrides
        self._need = -1  # estimated when first needed
        self.cause: str | None = None  # the cause its fallbacks are chosen by
        self.tried: frozenset[int] = _NONE  # deployments that refused it for a cause
        self.failed: frozenset[int] = _NONE  # deployments that failed it (transiently)
        self.sends: dict[str, int] = {}  # requests per deployment name
        self.hedged = False
        self.done = False  # answered: the next call with the same messages starts afresh

    @property
    def need(self) -> int:
        """The tokens the call needs of a context window (prompt and ``max_tokens``)."""
        if self._need < 0:
            messages = self.messages
            if not all(type(m) is LLMMessage for m in messages):
                messages = to_messages(messages, "Pool")
            self._need = estimate_tokens(_Prompt(messages), self._overrides)
        return self._need

    @need.setter
    def need(self, value: int) -> None:
        self._need = value


_NONE: frozenset[int] = frozenset()


class _NotSent(Exception):
    """A call waited its turn at a deployment that has refused its key since: not sent."""


# The call in progress in this task: the executor makes a call's attempts one after the
# other in one task, so what an attempt learnt (a deployment that failed it, a context
# window too small) is here for the next. Keyed by the messages object, held alive.
_CALL: ContextVar[_Call | None] = ContextVar("llmfanout_pool_call", default=None)


async def _each(verb: str, steps: Sequence[tuple[str, Callable[[], Awaitable[None]]]]) -> None:
    """Await every step (a deployment's close), whatever the others raise; then raise
    the one error as it is, or an ``ExceptionGroup`` of them all (in the deployments'
    order). An ``ExceptionGroup``, not the first error with the others as notes: each
    keeps its type and traceback, ``except*`` can pick one kind out, and it is what an
    anyio task group raises when several things fail at once."""
    errors: list[Exception] = []
    for name, step in steps:
        try:
            await step()
        except Exception as exc:  # the others are still closed; raised below
            exc.add_note(f"(Pool: raised by deployment {name!r} on {verb})")
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ExceptionGroup(f"Pool: {len(errors)} deployments failed to {verb}", errors)


class Pool:
    """Several deployments used as one provider: ``ParallelLLMExecutor(Pool([...]))``.

    ``deployments``: :class:`Deployment` objects, or bare providers (named
    ``"deployment-1"``...). Calls are routed to the deployment with the most room now;
    see the module for failover, fallbacks and hedging.

    - ``hedge_after``: seconds after which a call that has not answered is sent again to
      another deployment; or a latency quantile, ``"p95"`` (``"p50"`` to ``"p99.9"``): a
      call is hedged once it has waited longer than that quantile of the pool's recent
      answers (the last 256), and only once 20 have come in. None, the default: never.
      Hedge inside ``async with pool:``: there one timer serves every call, and a call
      answered in time costs a few tens of microseconds, not a task group of its own.
    - ``max_concurrency``: the most calls each deployment's AIMD window allows in flight.
    - ``trip_after``: transient failures in a row that take a deployment out;
      ``reopen_after``: seconds it stays out the first time (doubling while it keeps
      failing, up to ``max_cooldown``), before one call probes it.
    - ``max_cooldown``: the longest a 429's Retry-After keeps a deployment cooling.
    - ``pacing``: pace each deployment by the rate limits its answers advertise;
      ``adaptive``: keep fewer calls in flight on a deployment while it answers overload
      (as ``ParallelLLMExecutor``'s switches, which a pool leaves to its deployments).

    Each answer's ``metadata["deployment"]`` names the deployment that gave it; when the
    call went to more than one request, ``metadata["deployment_attempts"]`` counts the
    requests it sent to each deployment.
    Raises ``ValueError``/``TypeError`` at construction for a bad deployment list.
    """

    paces_itself = True
    """The executor leaves pacing and adaptive concurrency to the pool (per deployment)."""

    def __init__(
        self,
        deployments: Sequence[Deployment | AsyncLLMProvider],
        *,
        hedge_after: float | str | None = None,
        max_concurrency: int = 256,
        trip_after: int = 3,
        reopen_after: float = 5.0,
        max_cooldown: float = 60.0,
        pacing: bool = True,
        adaptive: bool = True,
    ) -> None:
        if isinstance(deployments, Deployment) or not isinstance(deployments, Sequence):
            raise TypeError("Pool: give a list of deployments (Deployment or provider objects)")
        if not deployments:
            raise ValueError("Pool: give at least one deployment")
        items: list[Deployment] = []
        for index, item in enumerate(deployments):
            if isinstance(item, Deployment):
                items.append(item)
            elif callable(getattr(item, "complete", None)):
                items.append(Deployment(name=f"deployment-{index + 1}", provider=item))
            else:
                raise TypeError(
                    f"Pool: deployment {index + 1} is a {type(item).__name__}; give a "
                    "Deployment or a provider (an object with complete())"
                )
        check_roster([(d.name, bool(d.fallback_for)) for d in items], "Pool")
        quantile = parse_quantile(hedge_after) if isinstance(hedge_after, str) else None
        if (
            hedge_after is not None
            and quantile is None
            and (
                isinstance(hedge_after, bool | str)
                or not isinstance(hedge_after, int | float)
                or not hedge_after > 0
            )
        ):
            raise ValueError(
                f"Pool: hedge_after is {hedge_after!r}; give seconds > 0, a latency quantile "
                "such as 'p95' (from 'p1' to 'p99.9'), or None"
            )
        for label, value in (("reopen_after", reopen_after), ("max_cooldown", max_cooldown)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"Pool: {label} is {value!r}; give seconds > 0")
        for label, whole in (("max_concurrency", max_concurrency), ("trip_after", trip_after)):
            if isinstance(whole, bool) or not isinstance(whole, int) or whole < 1:
                raise ValueError(f"Pool: {label} is {whole!r}; give a whole number >= 1")
        for label, flag in (("pacing", pacing), ("adaptive", adaptive)):
            if not isinstance(flag, bool):
                raise TypeError(f"Pool: {label} is {flag!r}; give True or False")
        self.deployments = tuple(items)
        self.hedge_after: float | str | None = (
            None
            if hedge_after is None
            else hedge_after.strip().lower()
            if isinstance(hedge_after, str)
            else float(hedge_after)
        )
        # The pool's recent latencies, kept only to hedge by a quantile of them.
        self._latency = None if quantile is None else LatencyWindow(quantile)
        self.trip_after = trip_after
        self.reopen_after = float(reopen_after)
        self.max_cooldown = float(max_cooldown)
        self._slots = tuple(
            _Slot(i, d, max_concurrency, pacing=pacing, adaptive=adaptive)
            for i, d in enumerate(items)
        )
        self._primary = tuple(s for s in self._slots if not s.deployment.fallback_for)
        self._only = self._primary[0] if len(self._primary) == 1 else None
        self._sized = any(d.context_window is not None for d in items)
        self._refused = False  # some deployment refused its key
        self._fallbacks = {
            cause: tuple(s for s in self._slots if cause in s.deployment.fallback_for)
            for cause in {c for d in items for c in d.fallback_for}
        }
        # The open ``async with`` blocks, in each event loop and in all: a loop's last
        # block releases that loop's connections, the last block anywhere closes the rest
        # (the lock: loops in other threads count too).
        self._blocks = PerLoop[int]()
        self._open_blocks = 0
        self._blocks_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Pool({', '.join(repr(d.name) for d in self.deployments)})"

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """With ``hedge_after``, also open the block's hedge host (see ``_hedge``): the
        calls made inside the block are hedged by one timer, not a task group each.

        Blocks may nest and overlap, in one task or several: only the last one to leave
        closes the providers."""
        if self.hedge_after is not None:
            tg = anyio.create_task_group()
            await tg.__aenter__()
            host = HedgeHost(tg, self)
            host.token = HOST.set(host)
            tg.start_soon(host.serve)
        with self._blocks_lock:
            self._blocks.set(self._blocks.get(0) + 1)
            self._open_blocks += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        host = HOST.get() if self.hedge_after is not None else None
        if self.hedge_after is not None and (host is None or host.owner is not self):
            raise RuntimeError("Pool: async with blocks were left out of order")
        close = self._leave()  # counted at once, whatever the block's end raises below
        try:
            if host is not None:
                host.closed = True
                HOST.reset(host.token)
                host.tg.cancel_scope.cancel()  # the timer, and any copy a stray call left
                await host.tg.__aexit__(None, None, None)
        finally:
            if close is not None:
                with anyio.CancelScope(shield=True):  # closed even when leaving by cancellation
                    await close()

    def _leave(self) -> Callable[[], Awaitable[None]] | None:
        """Count one block out: what the last block of this loop must call to close
        (``release_loop`` while blocks stay open in other loops), None if not the last."""
        with self._blocks_lock:
            here = self._blocks.get(0)
            if here > 1:
                self._blocks.set(here - 1)
                self._open_blocks -= 1
                return None
            self._blocks.set(0)
            self._open_blocks -= here  # 0: a block left that was never entered
            return self.release_loop if self._open_blocks else self.aclose

    async def aclose(self) -> None:
        """Close every deployment's provider that can be closed (``aclose``).

        Every provider is asked to close, whatever the others raise; then the one error
        is raised as it is, or several as an ``ExceptionGroup`` (each names its
        deployment in a note). Cancellation propagates at once."""
        await _each(
            "close",
            [
                (d.name, close)
                for d in self.deployments
                if (close := getattr(d.provider, "aclose", None)) is not None
            ],
        )

    async def release_loop(self) -> None:
        """Release the running loop's share of every deployment's provider: every one,
        whatever the others raise, then the error(s) as :meth:`aclose` raises them."""
        await _each(
            "release",
            [
                (d.name, d.provider.release_loop)
                for d in self.deployments
                if isinstance(d.provider, LoopBound)
            ],
        )

    # -- what it did ---------------------------------------------------------------------

    @property
    def hedge_delay(self) -> float | None:
        """Seconds after which an unanswered call is hedged now: ``hedge_after``, or the
        quantile of the recent answers it names (None: no hedging, or too few answers yet
        to know the quantile)."""
        if self._latency is not None:
            return self._latency.threshold
        return self.hedge_after if isinstance(self.hedge_after, float) else None

    def stats(self) -> dict[str, DeploymentStats]:
        """Per deployment name, what it did so far (requests, outcomes, tokens, state)."""
        return {
            s.deployment.name: DeploymentStats(
                s.deployment.name,
                s.deployment.model or getattr(s.deployment.provider, "model", None),
                s.calls,
                s.succeeded,
                s.failed,
                s.rate_limited,
                s.fallbacks,
                s.hedges,
                s.prompt_tokens,
                s.completion_tokens,
                "refused" if s.disabled else "out" if s.open_until is not None else "ok",
            )
            for s in self._slots
        }

    # -- a call --------------------------------------------------------------------------

    async def complete(
        self,
        messages: Sequence[LLMMessage],
        config_overrides: Mapping[str, Any] | None = None,
    ) -> LLMResponse:
        """One attempt of a call, on the deployment with the most room for it.

        Raises the deployment's error for the executor's retry policy to judge (a 429's
        ``retry_after`` then says when the soonest deployment can take the call), or a
        ``BadRequestError`` when the prompt fits no deployment's ``context_window``.
        Cancellation propagates, and cancels a hedge's copies.
        """
        call = _CALL.get()
        if call is not None and (
            call.done or call.messages is not messages or call.pool is not self
        ):
            call = None  # a call's first attempt: its state is made only if it needs one
        model = config_overrides.get("model") if config_overrides else None
        if self.hedge_after is None:
            return await self._route(call, messages, config_overrides, model, None)
        if call is None:
            call = self._open(messages, config_overrides)
        window = self._latency
        delay = self.hedge_after if window is None else window.threshold
        if delay is None:  # a quantile, and too few answers yet to know it: no hedge
            assert window is not None
            start = anyio.current_time()
            answer = await self._route(call, messages, config_overrides, model, None)
            window.add(anyio.current_time() - start)
            return answer
        host = HOST.get()
        if host is not None and not host.closed:
            send = functools.partial(self._route, call, messages, config_overrides, model)
            return await self._raced(host, float(delay), call, send)
        return await self._hedged(float(delay), call, messages, config_overrides, model)

    def _open(
        self,
        messages: Sequence[LLMMessage],
        overrides: Mapping[str, Any] | None,
        sent_to: str | None = None,
    ) -> _Call:
        """The state of a call that needs one from now on, for its next attempts too
        (``sent_to``: the deployment its one request so far went to)."""
        call = _Call(self, messages, overrides)
        if sent_to is not None:
            call.sends[sent_to] = 1
        _CALL.set(call)
        return call

    async def _raced(
        self,
        host: HedgeHost,
        delay: float,
        call: _Call,
        send: Callable[[_Slot | None, Callable[[_Slot], None] | None], Awaitable[LLMResponse]],
    ) -> LLMResponse:
        """The call in this task, and a copy started by ``host`` if ``delay`` passes
        unanswered (see ``_hedge``); the first whole answer wins, the other is cancelled.
        ``send(avoid, chose)``: ``_route`` for this call."""
        window = self._latency
        race = Race(send, call, window, copy_context())
        start = anyio.current_time()
        host.add(race, start + delay)
        answer: LLMResponse | None = None
        error: Exception | None = None
        try:
            with anyio.CancelScope() as race.first:
                try:
                    answer = await send(None, race.chosen.append)
                except Exception as exc:
                    error = exc
            race.first_running = False
            if not race.hedged:  # the common case: answered in time, no copy
                host.settled(race)
                if error is not None:
                    raise error
                assert answer is not None
                if window is not None:
                    window.add(anyio.current_time() - start)
                return answer
            race.finished(answer, error, start)
            if race.answers:
                race.cancel_copy()  # the loser, if it still runs
            assert race.copy_done is not None
            await race.copy_done.wait()  # the copy's answer or error, or its end
        finally:
            if race.first_running:  # cancelled from outside while this copy ran
                race.first_running = False
                if not race.hedged:
                    host.settled(race)  # the timer must not hedge it
                else:
                    race.finished(None, None, start)
            if race.copy_done is not None and not race.copy_done.is_set():
                race.cancel_copy()  # leaving early: the copy goes too, and ends first
                with anyio.CancelScope(shield=True):
                    await race.copy_done.wait()
        if race.answers:
            first = race.answers[0]
            if race.started:
                return attrs.evolve(first, metadata={**first.metadata, "hedged": True})
            return first
        raise race.errors[0]

    async def _hedged(
        self,
        delay: float,
        call: _Call,
        messages: Sequence[LLMMessage],
        overrides: Mapping[str, Any] | None,
        model: Any,
    ) -> LLMResponse:
        """The call, and a second copy of it once ``delay`` passes unanswered, in a task
        group of its own (a pool not entered with ``async with``: no host to share)."""
        window = self._latency
        answers: list[LLMResponse] = []
        errors: list[Exception] = []
        done = anyio.Event()
        chosen: list[_Slot] = []
        running = 0

        async def copy_of(avoid: _Slot | None) -> None:
            nonlocal running
            start = anyio.current_time()
            try:
                answers.append(
                    await self._route(call, messages, overrides, model, avoid, chosen.append)
                )
            except Exception as exc:
                errors.append(exc)
            finally:
                running -= 1
                if window is not None and (answers or not errors):
                    # An answer's latency; or, for a copy cancelled because the other won,
                    # how long it had waited (a lower bound), so that hedging does not
                    # pull the quantile down by hiding the slow answers it cut short.
                    window.add(anyio.current_time() - start)
                if answers or not running:
                    done.set()

        async with anyio.create_task_group() as tg:
            running = 1
            tg.start_soon(copy_of, None)
            with anyio.move_on_after(delay):
                await done.wait()
            if not done.is_set():
                call.hedged = True
                running += 1
                tg.start_soon(copy_of, chosen[0] if chosen else None)
            await done.wait()
            tg.cancel_scope.cancel()  # the loser, if any, is cancelled here
        if answers:
            answer = answers[0]
            if call.hedged:
                answer = attrs.evolve(answer, metadata={**answer.metadata, "hedged": True})
            return answer
        raise errors[0]

    async def _route(
        self,
        call: _Call | None,
        messages: Sequence[LLMMessage],
        overrides: Mapping[str, Any] | None,
        model: Any,
        avoid: _Slot | None,
        chose: Callable[[_Slot], None] | None = None,
    ) -> LLMResponse:
        """Send the call to the best deployment; on to a fallback while one is due.

        ``call`` is None for a first attempt while routing has nothing to remember: the
        call's state is made only when a deployment must wait, sizes or refusals count,
        or the attempt fails (its next attempt reads it)."""
        if call is None and (
            self._sized
            or self._refused
            or not (self._only.calm if self._only else all(s.calm for s in self._primary))
        ):
            call = self._open(messages, overrides)
        hedge = avoid is not None
        while True:
            if call is None and self._only is not None:
                slot = self._only  # what _choose would say, without asking
            else:
                slot = self._choose(call, model, avoid)
            if chose is not None:
                chose(slot)
            if slot.open_until is not None:
                slot.probing = True  # the one call that probes it back in
                now = anyio.current_time()
                if slot.open_until > now and not TESTING.instant:
                    await anyio.sleep(slot.open_until - now)  # every deployment is out
            if hedge:
                slot.hedges += 1
                hedge = False
            deployment = slot.deployment
            sent = overrides
            if deployment.model is not None:
                sent = {**(overrides or {}), "model": deployment.model}
            elif overrides is not None:
                sent = dict(overrides)
            slot.in_flight += 1
            slot.calls += 1
            if call is not None:
                sends = call.sends
                sends[deployment.name] = sends.get(deployment.name, 0) + 1
            governor = slot.governor
            quick = slot.calm or (slot.limit is None and governor.idle())
            outcome: object = None
            try:
                if quick:
                    # Nothing reported, nothing to pace by yet: straight out (the
                    # executor's fast path), the answer taught to the governor after.
                    governor.unpaced += 1
                    try:
                        response = await deployment.provider.complete(
                            messages, config_overrides=sent
                        )
                    finally:
                        slot.in_flight -= 1
                        governor.unpaced -= 1
                else:
                    assert call is not None  # made above: this deployment may have to wait
                    response = await self._governed(slot, call, messages, sent)
                outcome = response
            except _NotSent:
                # Its deployment refused its key while the call waited its turn there:
                # on to another, as the refusal would have sent it, or nowhere.
                assert call is not None
                slot.calls -= 1
                sends = call.sends
                sends[deployment.name] -= 1
                if not sends[deployment.name]:
                    del sends[deployment.name]
                if any(not s.disabled for s in self._candidates(call)):
                    continue
                refusal = slot.refusal
                raise TaskAborted(
                    f"not sent: deployment {deployment.name!r} refused its key ({refusal}) "
                    f"and no other can take the call; fix {refused_credential(refusal)} "
                    "and run again"
                ) from None
            except Exception as exc:
                outcome = exc
                if quick:
                    governor.learn(sent, exc, cooldown=self._cooldown(exc))
                if call is None:
                    call = self._open(messages, overrides, deployment.name)
                error = self._failed(call, slot, exc, model)
                if error is None:
                    continue
                raise error from None
            finally:
                if outcome is None and quick:
                    slot.probing = False  # cancelled: another call may probe
            limits = getattr(response, "rate_limits", None)
            if quick:
                if limits is not None:
                    governor.learn(sent, response)  # counts the answer too
                else:
                    governor.answered()  # as the executor's own quick path does
            answer = self._answered(slot, call, response, limits is not None)
            if getattr(response, "finish_reason", None) == CONTENT_FILTER:  # a 2xx filter cut
                if call is None:
                    call = self._open(messages, overrides, deployment.name)
                if self._reroute(call, slot, CONTENT_FILTER):
                    continue
            if call is not None:
                call.done = True  # the next call with the same messages starts afresh
            return answer

    def _candidates(self, call: _Call) -> tuple[_Slot, ...]:
        cause = call.cause
        if cause is None or cause == CONTEXT_WINDOW:
            tried = call.tried
            fits = tuple(s for s in self._primary if _fits(s, call.need) and s.index not in tried)
            if fits or (cause is None and not self._fallbacks.get(CONTEXT_WINDOW)):
                return fits
            return self._fallbacks.get(CONTEXT_WINDOW, ())
        return self._fallbacks.get(cause, ())

    def _choose(self, call: _Call | None, model: Any, avoid: _Slot | None) -> _Slot:
        """The deployment for the call's next request (raises if none can take it).

        ``call`` None: a first attempt while every primary is calm (see ``_route``)."""
        candidates: Sequence[_Slot]
        if call is None or (
            call.cause is None and not call.tried and not self._sized and not self._refused
        ):
            candidates = self._primary  # the common case: every primary may take it
            if len(candidates) == 1:
                return candidates[0]
            if call is None:  # every one calm, none failed it: the least loaded
                return min(candidates, key=_load)
        else:
            need = call.need
            candidates = [
                s
                for s in self._candidates(call)
                if not s.disabled and s.index not in call.tried and _fits(s, need)
            ]
            if not candidates:
                raise self._nowhere(call)
            if call.cause is not None and call.cause != CONTEXT_WINDOW:
                return candidates[0]  # a fallback chain is taken in its order
        best = candidates[0]
        best_key: tuple[bool, bool, float, float] = (True, True, math.inf, math.inf)
        now = -math.inf  # read from the clock only if some deployment has to wait
        failed = _NONE if call is None else call.failed
        for slot in candidates:
            if slot.calm:
                delay = 0.0
            else:
                assert call is not None  # _route made it: a deployment has to wait
                if now == -math.inf:
                    now = anyio.current_time()
                if slot.open_until is not None and (slot.probing or slot.open_until > now):
                    delay = math.inf if slot.probing else slot.open_until - now
                else:
                    # When it could start one more, and when the calls already queued
                    # there would let it (its pacer books a call only once admitted).
                    delay = slot.ready_at(now, call.need, model) - now
                    rate = slot.rate(model)
                    if rate:
                        delay = max(delay, slot.in_flight / rate)
            key = (slot is avoid, slot.index in failed, delay, slot.in_flight / slot.weight)
            if key < best_key:
                best, best_key = slot, key
        if best_key[2] == math.inf:  # every one is out and probing: the soonest to reopen
            best = min(candidates, key=lambda s: s.open_until or math.inf)
        return best

    def _nowhere(self, call: _Call) -> ProviderError:
        if call.cause == CONTEXT_WINDOW or call.cause is None:
            windows = [s.deployment.context_window for s in self._slots]
            largest = max((w for w in windows if w is not None), default=None)
            if largest is not None and all(w is not None for w in windows):
                return BadRequestError(
                    f"pool: the prompt needs about {call.need} tokens (prompt and "
                    f"max_tokens), more than any deployment's context_window (the largest "
                    f"is {largest}); shorten it, lower max_tokens, or add a deployment with "
                    "a larger context_window",
                    provider="pool",
                )
        return BadRequestError(
            f"pool: no deployment can take this call (cause: {call.cause or 'none'}; "
            "every candidate refused it or its key); add a deployment with "
            f'"fallback_for": ["{call.cause}"] or fix the keys',
            provider="pool",
        )

    async def _governed(
        self,
        slot: _Slot,
        call: _Call,
        messages: Sequence[LLMMessage],
        overrides: Mapping[str, Any] | None,
    ) -> LLMResponse:
        """The request through the deployment's limiter, pacer and AIMD window.

        Raises :class:`_NotSent` if the deployment refused its key while the call waited
        for its turn (the first call to a deployment goes alone: see ``Governor``)."""
        tokens = call.need
        limit = slot.limit
        governor = slot.governor
        acquired = False
        used: int | None = None
        outcome: object = None
        try:
            if limit is not None:
                await limit.acquire(tokens)
                acquired = True
            admitted = await governor.admit(overrides, tokens)
            if slot.disabled:
                governor.release(admitted, None)
                used = 0
                raise _NotSent
            cooldown: float | None = None
            try:
                response = await slot.deployment.provider.complete(
                    messages, config_overrides=overrides
                )
                outcome = response
                used = response.total_tokens
            except Exception as exc:
                outcome = exc
                cooldown = self._cooldown(exc)
                raise
            finally:
                governor.release(admitted, outcome, cooldown=cooldown)
        finally:
            slot.in_flight -= 1
            if outcome is None:
                slot.probing = False  # cancelled: another call may probe
            if acquired:
                assert limit is not None
                limit.settle(tokens, used)
        return response

    def _cooldown(self, exc: object) -> float | None:
        """How long the deployment's pacer should start nothing after ``exc``."""
        retry_after = getattr(exc, "retry_after", None)
        if (
            isinstance(exc, Exception)
            and is_overload(exc)
            and isinstance(retry_after, int | float)
            and not TESTING.instant
        ):
            return min(float(retry_after), self.max_cooldown)
        return None

    def _answered(
        self, slot: _Slot, call: _Call | None, response: LLMResponse, reported: bool
    ) -> LLMResponse:
        """Count the answer, bring its deployment back in, stamp it with its name
        (``reported``: the answer carried rate limits)."""
        usage = response.usage
        if usage:
            slot.prompt_tokens += usage.get("prompt_tokens", 0) or 0
            slot.completion_tokens += usage.get("completion_tokens", 0) or 0
        slot.succeeded += 1
        if reported or not slot.calm:
            # (A calm deployment has no failures in a row, no cooldown, is not out, and
            # its governor learnt nothing from an answer that reported no limits.)
            slot.failures = 0
            slot.cool_until = -math.inf
            if slot.open_until is not None:  # probed back in
                slot.open_until, slot.probing, slot.open_for = None, False, 0.0
            slot.calm = slot.quiet()
        # An answer its provider made for this call alone is stamped in place (the pool
        # hands it on, nobody else holds it); any other is copied.
        own = response.metadata
        fresh = slot.fresh and type(own) is dict
        metadata: dict[str, Any] = own if fresh else dict(own)  # type: ignore[assignment]
        name = slot.deployment.name
        metadata["deployment"] = name
        if call is not None:
            sends = call.sends
            if len(sends) > 1 or call.hedged or sends[name] > 1:
                metadata["deployment_attempts"] = dict(sends)
        if fresh:
            return response
        if type(response) is LLMResponse and _STAMPABLE:
            return _stamped(response, metadata)
        return attrs.evolve(response, metadata=metadata)

    def _failed(self, call: _Call, slot: _Slot, exc: Exception, model: Any) -> Exception | None:
        """Account for ``exc`` from ``slot``: None to send the call on now, else the
        error to raise (a copy of a 429 whose ``retry_after`` says when the soonest
        deployment can take it)."""
        slot.failed += 1
        slot.calm = False
        now = anyio.current_time()
        cause = cause_of(exc)
        status = getattr(exc, "status_code", None)
        transient = (
            cause is None
            and status not in (401, 403)
            and not is_overload(exc)
            and bool(getattr(exc, "retryable", False))
        )
        self._probed(slot, ok=not transient)
        if cause is not None:
            if cause == CONTEXT_WINDOW:
                window = slot.deployment.context_window
                call.need = max(call.need, (window or call.need) + 1)
            if self._reroute(call, slot, cause):
                return None
            return exc
        if status in (401, 403):
            slot.disabled = True  # every call with its key would be refused too
            slot.refusal = exc
            self._refused = True
            if any(not s.disabled for s in self._candidates(call)):
                return None
            return exc
        if is_overload(exc):
            slot.rate_limited += 1
            retry_after = getattr(exc, "retry_after", None)
            wait = float(retry_after) if isinstance(retry_after, int | float) else _DEFAULT_COOL
            slot.cool_until = max(slot.cool_until, now + min(wait, self.max_cooldown))
            soonest = min(
                (
                    s.ready_at(now, call.need, model)
                    for s in self._candidates(call)
                    if not s.disabled and s.index not in call.tried and s.open_until is None
                ),
                default=slot.cool_until,
            )
            return _with_retry_after(exc, max(0.0, soonest - now))
        if transient:
            call.failed = call.failed | {slot.index}
            slot.failures += 1
            if slot.failures >= self.trip_after and slot.open_until is None:
                slot.open_for = self.reopen_after
                slot.open_until = now + slot.open_for
        return exc

    def _probed(self, slot: _Slot, *, ok: bool) -> None:
        """A probe of a deployment that was out has its answer."""
        if slot.open_until is None or not slot.probing:
            return
        slot.probing = False
        if ok:  # it answered (if only to say "later"): back in
            slot.open_until, slot.open_for, slot.failures = None, 0.0, 0
        else:
            slot.open_for = min(slot.open_for * 2, self.max_cooldown)
            slot.open_until = anyio.current_time() + slot.open_for

    def _reroute(self, call: _Call, slot: _Slot, cause: str) -> bool:
        """Whether a fallback can take the call ``slot`` refused for ``cause``."""
        call.tried = call.tried | {slot.index}
        call.cause = cause
        if any(
            not s.disabled and s.index not in call.tried and _fits(s, call.need)
            for s in self._candidates(call)
        ):
            slot.fallbacks += 1
            return True
        return False
