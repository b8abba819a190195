"""What the executor adds around each LLM attempt by default: pacing and adaptive concurrency.

- **Pacing by advertised limits.** Once a provider's answers carry rate-limit headers
  (``LLMResponse.rate_limits``, ``ProviderError.rate_limits``), every call to that
  provider and model passes its :class:`~llmfanout._flow._pacing.HeaderPacer` first. Budgets
  belong to the provider object (its key), shared by every executor using it, and are kept
  per model.
- **Adaptive concurrency.** An overload answer with no limit headers (429, 529, 503 with
  ``Retry-After``) halves the calls the executor keeps in flight, when the share refused
  grows with them (refusals at random whatever the load do not); successes add them back
  (:mod:`llmfanout._flow._adaptive`).

Neither costs anything until the server says something: before the first limit header
and the first overload answer, a call goes straight to the provider, and the scheduler
keeps its fast path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from weakref import WeakKeyDictionary

import anyio

from .._base._perloop import PerLoop
from ..errors import TaskAborted
from ._adaptive import AIMD, SharedPause
from ._pacing import HeaderPacer, trusted
from ._patience import is_overload

__all__ = ["Governor", "Pass", "refused_credential"]


class _Pacers:
    """A provider's pacers: one per model, per event loop (a pacer keeps its loop's time)."""

    __slots__ = ("_loops",)

    def __init__(self) -> None:
        self._loops = PerLoop[dict[Any, HeaderPacer]]()

    def mine(self) -> dict[Any, HeaderPacer]:
        pacers = self._loops.get(None)
        if pacers is None:
            pacers = {}
            self._loops.set(pacers)
        return pacers


_BY_PROVIDER: WeakKeyDictionary[object, _Pacers] = WeakKeyDictionary()


def refused_credential(error: object) -> str:
    """The credential a refusal (401, 403) asks the user to fix: the one the call sent, as
    its error names it (``credential``, by where it came from, never its value), else
    neutral words (a custom provider's error names none)."""
    credential = getattr(error, "credential", None)
    return credential if isinstance(credential, str) and credential else "the credentials"


def _pacers_for(provider: object) -> _Pacers:
    """The provider's pacers, shared by every executor that uses it."""
    try:
        pacers = _BY_PROVIDER.get(provider)
        if pacers is None:
            pacers = _BY_PROVIDER[provider] = _Pacers()
        return pacers
    except TypeError:  # not weakly referenceable, or not hashable: the executor's own
        return _Pacers()


class Pass:
    """One admitted attempt: what :meth:`Governor.release` needs to account for it."""

    __slots__ = ("epoch", "gated", "model", "pacer", "size", "ticket", "tokens")

    def __init__(self, model: Any, pacer: HeaderPacer | None, ticket: int, epoch: int) -> None:
        self.model = model
        self.pacer = pacer
        self.ticket = ticket
        self.epoch = epoch
        self.size = 0  # the figure it started under (AIMD.start)
        self.gated = False
        self.tokens = 0  # its estimate (counted in Governor.unpaced_tokens without a pacer)


class Governor:
    """An executor's pacing (``pacing=True``) and adaptive concurrency (``adaptive=True``)."""

    __slots__ = (
        "_answered",
        "_engaged",
        "_gates",
        "_pacers",
        "_pause",
        "_probe_first",
        "_reported",
        "adaptive",
        "aimd",
        "pacing",
        "quiet",
        "refused",
        "stop_on_auth",
        "unpaced",
        "unpaced_tokens",
    )

    def __init__(
        self,
        provider: object,
        max_concurrency: int,
        *,
        pacing: bool,
        adaptive: bool,
        stop_on_auth: bool = False,
    ) -> None:
        self.pacing = pacing
        self.stop_on_auth = stop_on_auth
        self.refused: Exception | None = None
        """The answer that refused the credentials (with ``stop_on_auth``): nothing more
        is sent."""
        self.adaptive = adaptive
        self.aimd = AIMD(max_concurrency)
        self._pause = SharedPause()
        self._pacers = _pacers_for(provider) if pacing else None
        self._gates = PerLoop[anyio.CapacityLimiter]()
        self._engaged = False  # AIMD gates calls after the first overload answer only
        # A provider whose answers carry limit headers (if its server sends any) is paced
        # from its first call: that one goes alone, the others wait for its answer.
        self._probe_first = pacing and bool(getattr(provider, "reports_rate_limits", False))
        self._reported = self._probe_first  # some answer carried limits (or may)
        self.quiet = not self._reported
        """:meth:`idle` as a plain attribute, for the scheduler's check per task."""
        self.unpaced = 0
        """Calls in flight that no pacer admitted (sent before any limits were known)."""
        self.unpaced_tokens = 0  # their estimated tokens, where known
        self._answered = 0  # fast-path answers not yet told to pause and AIMD

    @property
    def current(self) -> int:
        """How many calls the executor keeps in flight now."""
        return self.aimd.current

    @property
    def pause(self) -> SharedPause:
        """Whether a bare refusal's Retry-After pauses every call or only its own (told of
        every answer so far)."""
        self._catch_up()
        return self._pause

    def pacer(self, overrides: Mapping[str, Any] | None) -> HeaderPacer | None:
        """The pacer for a call with ``overrides`` (None until its server has reported)."""
        if self._pacers is None:
            return None
        pacers = self._pacers.mine()
        if not pacers:
            return None
        return pacers.get(overrides.get("model") if overrides else None)

    def idle(self) -> bool:
        """Nothing to do around a call yet: no limits reported, no overload seen."""
        return self.quiet

    def _pacer_for(self, model: Any) -> HeaderPacer | None:
        """The model's pacer, made now if need be (None with pacing off)."""
        if self._pacers is None:
            return None
        pacers = self._pacers.mine()
        pacer = pacers.get(model)
        if pacer is None:
            pacer = pacers[model] = HeaderPacer()
        self._reported = True
        self.quiet = False
        return pacer

    # -- a call the scheduler made on its own (the fast path) ---------------------------

    def learn(
        self, overrides: Mapping[str, Any] | None, outcome: object, *, cooldown: float | None = None
    ) -> bool:
        """A call made without :meth:`admit` ended with ``outcome`` (an answer or an error).

        ``cooldown``: as for :meth:`release`; returns whether it was shared.
        """
        self._catch_up()
        self._tally(outcome)
        info = getattr(outcome, "rate_limits", None)
        shared = False
        if info is not None or cooldown is not None:
            pacer = self._pacer_for(overrides.get("model") if overrides else None)
            if pacer is not None:
                if info is not None:
                    pacer.observe(
                        info, 0, uncounted=self.unpaced, uncounted_tokens=self.unpaced_tokens
                    )
                shared = self._cool(pacer, outcome, cooldown)
        if isinstance(outcome, Exception) and self._overloaded(outcome):
            # The fast path runs only before the first overload answer: at the maximum,
            # before any cut.
            self.aimd.overload(0, self.aimd.start(self.aimd.maximum))
            self._engaged = True
            self.quiet = False
        return shared

    def answered(self) -> None:
        """A call made without :meth:`admit` (at the maximum, before any overload) was
        answered: counted here, told to the pause and AIMD when an answer is next judged
        (:meth:`_catch_up`), so the fast path pays one addition."""
        self._answered += 1

    def _catch_up(self) -> None:
        """Tell the pause and AIMD of the answers :meth:`answered` counted, before the
        next outcome: in the order they came."""
        count = self._answered
        if count:
            self._answered = 0
            self._pause.success()
            if self.adaptive:
                self.aimd.started_at_maximum(count)

    def _tally(self, outcome: object) -> None:
        if isinstance(outcome, Exception):
            if is_overload(outcome):
                self._pause.refused()
        elif outcome is not None:
            self._pause.success()

    def _cool(self, pacer: HeaderPacer, outcome: object, cooldown: float | None) -> bool:
        """Pause every call for ``cooldown`` if the refusal is everyone's; whether it was."""
        if cooldown is None:
            return False
        budgeted = trusted(getattr(outcome, "rate_limits", None)) or pacer.limits != (None, None)
        if not self._pause.share(budgeted):
            return False
        pacer.cooldown(cooldown)
        return True

    def _overloaded(self, exc: Exception) -> bool:
        # An answer whose advertised limits the pacer goes by is paced; one with none (or
        # none it believes) is what adaptive concurrency is for.
        return self.adaptive and is_overload(exc) and not trusted(getattr(exc, "rate_limits", None))

    # -- a governed attempt -------------------------------------------------------------

    async def admit(
        self, overrides: Mapping[str, Any] | None, tokens: int, *, patience: float = math.inf
    ) -> Pass:
        """Wait until the call may start: room under the figure, then its pacer's turn.

        A pacer's wait longer than ``patience`` seconds raises
        :class:`~llmfanout.errors.PacingError` at once.
        """
        self._catch_up()
        model = overrides.get("model") if overrides else None
        pass_ = Pass(model, None, 0, self.aimd.cuts)
        pass_.tokens = tokens
        if self._engaged:
            await self._gate().acquire_on_behalf_of(pass_)
            pass_.gated = True
            pass_.epoch = self.aimd.cuts
        if self.adaptive:
            pass_.size = self.aimd.start()
        try:
            # Until some answer reported limits, no pacer exists: skip the lookup.
            pacer = self.pacer(overrides) if self._reported else None
            if pacer is None and self._probe_first:
                pacer = self._pacer_for(model)
                if pacer is not None:
                    pacer.probe()
            if pacer is not None:
                pass_.pacer = pacer
                pass_.ticket = await pacer.admit(tokens, patience=patience)
                if self.refused is not None:  # refused while this call waited its turn
                    pacer.observe(None, pass_.ticket)
                    raise TaskAborted(
                        "not sent: the server refused the credentials "
                        f"({self.refused}); fix {refused_credential(self.refused)} and run again"
                    )
            else:  # no pacer yet: in flight where no budget counts it
                self.unpaced += 1
                self.unpaced_tokens += tokens
        # Cancelled while waiting for the pacer: give the room back.
        except BaseException:  # re-raised (noqa: cancellation-ok)
            if pass_.gated:
                self._gate().release_on_behalf_of(pass_)
            raise
        return pass_

    def release(self, pass_: Pass, outcome: object, *, cooldown: float | None = None) -> bool:
        """The call ended with ``outcome``: an answer, an error, or None (cancelled).

        ``cooldown``: seconds the server asked the call to wait (a 429's Retry-After). If
        the refusal is everyone's (an advertised budget's, or the server refuses every
        call: :class:`~llmfanout._flow._adaptive.SharedPause`), the model's pacer starts
        nothing new until then, and then one call alone. Returns whether it did (else the
        call waits on its own).
        """
        self._catch_up()
        self._tally(outcome)
        shared = False
        info = getattr(outcome, "rate_limits", None)
        pacer = pass_.pacer
        if pacer is None:
            self.unpaced -= 1
            self.unpaced_tokens -= pass_.tokens
        if pacer is not None:
            pacer.observe(
                info, pass_.ticket, uncounted=self.unpaced, uncounted_tokens=self.unpaced_tokens
            )
            if pass_.tokens:  # the estimate corrected by what the answer says it used
                pacer.settle(pass_.tokens, getattr(outcome, "total_tokens", None))
        elif info is not None or cooldown is not None:
            pacer = self._pacer_for(pass_.model)
            if pacer is not None and info is not None:
                pacer.observe(info, 0, uncounted=self.unpaced, uncounted_tokens=self.unpaced_tokens)
        if pacer is not None:
            shared = self._cool(pacer, outcome, cooldown)
        if isinstance(outcome, Exception):
            if self.stop_on_auth and getattr(outcome, "status_code", None) in (401, 403):
                self.refused = self.refused or outcome
            if self._overloaded(outcome):
                self.aimd.overload(pass_.epoch, pass_.size or None)
                self._engaged = True
                self.quiet = False
        elif outcome is not None:
            self.aimd.success()
            if info is None and pass_.pacer is not None and cooldown is None:
                self._unpace(pass_.model, pass_.pacer)
        if pass_.gated:
            gate = self._gate()
            gate.release_on_behalf_of(pass_)
            if gate.total_tokens != self.aimd.current:
                gate.total_tokens = self.aimd.current
        elif self._engaged:
            gate = self._gate()
            if gate.total_tokens != self.aimd.current:
                gate.total_tokens = self.aimd.current
        return shared

    def _unpace(self, model: Any, pacer: HeaderPacer) -> None:
        """An answer with no limits from a pacer that never saw any (the probe of a
        provider that may report them): the server reports none, so calls go unpaced,
        at no cost, until an answer reports limits (:meth:`learn` makes a pacer then)."""
        if pacer.limits != (None, None) or self._pacers is None:
            return
        self._probe_first = False
        pacers = self._pacers.mine()
        if pacers.get(model) is pacer:
            del pacers[model]
        if not pacers:
            self._reported = False
            self.quiet = not self._engaged

    def _gate(self) -> anyio.CapacityLimiter:
        gate = self._gates.get(None)
        if gate is None:
            gate = anyio.CapacityLimiter(self.aimd.current)
            self._gates.set(gate)
        return gate
