"""Turning what the user passed into ``(tag, task)`` pairs, refusing bad input early.

Collections (mappings, lists, tuples) are checked whole before any work starts, so a bad
item raises at once. Iterators and async iterators are read lazily, as workers free up;
an item that turns out bad there becomes a failed result for its position and the run
goes on (raising would throw away the work already done).
"""

from __future__ import annotations

import bisect
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from collections.abc import Collection as CollectionABC
from typing import Any, TypeAlias

import attrs

from .._base._types import a_kind
from ._tasks import DeterministicTask, LLMTask, Task


@attrs.frozen
class Invalid:
    """Stands in for an input item that cannot run; it yields a failed result."""

    error: Exception


Item: TypeAlias = tuple[str, Task | Invalid]

TaskSource: TypeAlias = Mapping[str, Task] | Iterable[Task] | AsyncIterable[Task]


def _kind_error(method: str, where: str, task: object, llm_only: bool) -> TypeError:
    if llm_only and isinstance(task, DeterministicTask):
        return TypeError(
            f"{method}: task {where} is a DeterministicTask; execute() runs LLMTasks only, "
            "use execute_mixed() to run functions beside them"
        )
    wanted = "an LLMTask" if llm_only else "an LLMTask or a DeterministicTask"
    return TypeError(f"{method}: task {where} is {a_kind(task)}; give {wanted}")


def check_mapping(tasks: object, method: str, *, llm_only: bool) -> dict[str, Task]:
    """Validate a tag -> task mapping whole; return a copy of it, in its order.

    The copy is the run's own: the caller may change its mapping meanwhile.
    """
    if not isinstance(tasks, Mapping):
        raise TypeError(
            f"{method}() takes a mapping of tag to task, not {type(tasks).__name__}"
            + ("; for a list or a generator use stream()" if isinstance(tasks, Iterable) else "")
        )
    copy = dict(tasks) if type(tasks) is dict else dict(tasks.items())
    # Checked a kind at a time in C (a cost per task, for every execute); the loop below
    # runs only to name the first item that is wrong.
    kinds = _LLM_ONLY if llm_only else _ANY_TASK
    if set(map(type, copy)) <= _TAGS and set(map(type, copy.values())) <= kinds:
        return copy
    for tag, task in copy.items():
        if not isinstance(tag, str):
            raise TypeError(f"{method}: task key {tag!r} is {a_kind(tag)}; tags must be str")
        if not isinstance(task, LLMTask) and (llm_only or not isinstance(task, DeterministicTask)):
            raise _kind_error(method, repr(tag), task, llm_only)
    return copy


_TAGS: frozenset[type] = frozenset((str,))
_LLM_ONLY: frozenset[type] = frozenset((LLMTask,))
_ANY_TASK: frozenset[type] = frozenset((LLMTask, DeterministicTask))


class Tagger:
    """Gives each task from an iterable its tag: its own, else its position.

    A repeated tag makes that item :class:`Invalid`. Only explicitly given tags are
    remembered (``given``), with the positions tagged by themselves as runs (``[start,
    end)``: a million position-tagged tasks in a row cost two numbers here).

    For ``stream()``, it also holds the input (``tasks``, read by the workers) and where
    an error the input raises goes (:meth:`end`). A worker tags the common case itself,
    without a call per task (a new tag of its own, not all digits while no task was
    tagged by its position: ``given``, ``starts``, ``position``), and calls the tagger
    for the rest.
    """

    __slots__ = ("_ends", "ended", "failure", "given", "position", "starts", "tasks")

    def __init__(self, tasks: Iterable[Any] = (), failure: InputFailure | None = None) -> None:
        self.tasks = iter(tasks)
        self.failure = failure
        self.ended = False  # the input ended, or raised
        self.given: set[str] = set()
        # Positions whose result carries the position as its tag: runs [starts[i], ends[i]).
        self.starts: list[int] = []
        self._ends: list[int] = []
        self.position = 0

    def __call__(self, task: object) -> Item:
        position = self.position
        self.position = position + 1
        kind = type(task)
        if kind is not LLMTask and not isinstance(task, LLMTask | DeterministicTask):
            self._by_position(position)
            return str(position), Invalid(_kind_error("stream", f"#{position}", task, False))
        tag = task.tag  # type: ignore[attr-defined]
        if not tag:
            self._by_position(position)
            tag = str(position)
            if tag in self.given:
                return tag, Invalid(_duplicate(tag))
            return tag, task  # type: ignore[return-value]
        given = self.given
        if tag in given or (tag.isdigit() and self._is_earlier_position(tag, position)):
            return tag, Invalid(_duplicate(tag))
        given.add(tag)
        return tag, task  # type: ignore[return-value]

    def end(self, error: Exception | None = None) -> None:
        """The input has ended (``error``: it raised that): read no more of it."""
        self.ended = True
        if error is not None and self.failure is not None:
            self.failure.error = error

    def _by_position(self, position: int) -> None:
        ends = self._ends
        if ends and ends[-1] == position:
            ends[-1] = position + 1
        else:
            self.starts.append(position)
            ends.append(position + 1)

    def _is_earlier_position(self, tag: str, position: int) -> bool:
        # An explicit tag "7" clashes with task #7 if that one was tagged by its position.
        if not (tag.isascii() and tag.isdigit()) or (len(tag) > 1 and tag[0] == "0"):
            return False
        earlier = int(tag)
        if earlier >= position:
            return False
        run = bisect.bisect_right(self.starts, earlier) - 1
        return run >= 0 and earlier < self._ends[run]


def _duplicate(tag: str) -> ValueError:
    return ValueError(f"task {tag!r}: this tag was already used by an earlier task in the run")


class InputFailure:
    """Holds the exception the input raised while it was read, if it did.

    Reading stops there, but the tasks already taken still run and hand out their
    results; the error is raised after the last of them (see ``ResultStream``).
    """

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: Exception | None = None


class AsyncItems:
    """Reads ``(tag, task)`` items from an async iterable, one reader at a time."""

    def __init__(self, tasks: AsyncIterable[Any], failure: InputFailure) -> None:
        import anyio  # local: only async sources pay for the lock

        self._iterator: AsyncIterator[Any] = aiter(tasks)
        self._tagger = Tagger()
        self._lock = anyio.Lock()
        self._done = False
        self._failure = failure

    async def next(self) -> Item | None:
        """The next item, or None at the end (or once the iterable raised)."""
        async with self._lock:
            if self._done:
                return None
            try:
                task = await anext(self._iterator)
            except StopAsyncIteration:
                self._done = True
                return None
            except Exception as exc:  # the user's iterable broke: end the input here
                self._done = True
                self._failure.error = exc
                return None
            return self._tagger(task)

    async def aclose(self) -> None:
        """Close the underlying async generator, if it is one (its ``finally`` blocks run).

        Other async iterators (a memory stream, say) belong to the caller: left open.
        """
        if inspect.isasyncgen(self._iterator):
            await self._iterator.aclose()


def prepare(
    tasks: object, failure: InputFailure
) -> tuple[Iterator[Item] | AsyncItems | Tagger, int | None]:
    """Items to run and, when known, how many: for ``stream()``'s any-shaped input.

    An exception the input raises while it is read lands in ``failure``.
    """
    if isinstance(tasks, Mapping):
        items = check_mapping(tasks, "stream", llm_only=False)
        return iter(items.items()), len(items)
    if isinstance(tasks, AsyncIterable):
        return AsyncItems(tasks, failure), None
    if isinstance(tasks, str | bytes) or not isinstance(tasks, Iterable):
        raise TypeError(
            "stream() takes a mapping of tag to task, an iterable of tasks or an async "
            f"iterable of tasks, not {type(tasks).__name__}"
        )
    if isinstance(tasks, CollectionABC):
        if set(map(type, tasks)) <= _ANY_TASK:  # in C, as check_mapping does
            return Tagger(tasks, failure), len(tasks)
        for position, task in enumerate(tasks):
            if not isinstance(task, LLMTask | DeterministicTask):
                where = repr(task.tag) if isinstance(getattr(task, "tag", None), str) else ""
                raise _kind_error("stream", where or f"#{position}", task, False)
        return Tagger(tasks, failure), len(tasks)
    return Tagger(tasks, failure), None
