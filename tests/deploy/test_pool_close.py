"""Pool.aclose and Pool.release_loop close every provider, whatever the others raise."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmfanout import Deployment, EchoProvider, Pool

pytestmark = pytest.mark.anyio


class CloseError(Exception):
    """What a provider's close raised (``index``: which provider)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"provider {index} failed to close")
        self.index = index


class Closing(EchoProvider):
    """A provider whose ``aclose``/``release_loop`` counts its calls and raises if told."""

    def __init__(self, index: int, *, fails: bool) -> None:
        super().__init__()
        self.index = index
        self.fails = fails
        self.closes = 0
        self.releases = 0

    async def aclose(self) -> None:
        self.closes += 1
        if self.fails:
            raise CloseError(self.index)

    async def release_loop(self) -> None:
        self.releases += 1
        if self.fails:
            raise CloseError(self.index)


def pool_of(fails: list[bool]) -> tuple[Pool, list[Closing]]:
    providers = [Closing(i, fails=f) for i, f in enumerate(fails)]
    deployments = [Deployment(name=f"d{p.index}", provider=p) for p in providers]
    return Pool(deployments), providers


def raised(error: BaseException | None) -> list[int]:
    """The indices of the CloseErrors ``error`` carries (itself, or a group of them)."""
    if error is None:
        return []
    if isinstance(error, ExceptionGroup):
        assert all(isinstance(e, CloseError) for e in error.exceptions)
        return [e.index for e in error.exceptions]  # type: ignore[attr-defined]
    assert isinstance(error, CloseError)
    return [error.index]


async def test_aclose_closes_all_three_and_raises_both_errors() -> None:
    pool, providers = pool_of([True, False, True])
    with pytest.raises(ExceptionGroup) as info:
        await pool.aclose()
    assert [p.closes for p in providers] == [1, 1, 1]
    assert raised(info.value) == [0, 2]
    assert "2 deployments failed to close" in str(info.value)
    assert any("'d2'" in note for note in info.value.exceptions[1].__notes__)


async def test_one_failure_is_raised_as_it_is_after_all_closed() -> None:
    pool, providers = pool_of([False, True, False])
    with pytest.raises(CloseError) as info:
        await pool.aclose()
    assert [p.closes for p in providers] == [1, 1, 1]
    assert info.value.index == 1
    assert info.value.__notes__ == ["(Pool: raised by deployment 'd1' on close)"]


async def test_leaving_the_last_block_closes_every_provider_then_raises() -> None:
    pool, providers = pool_of([True, False, True])
    with pytest.raises(ExceptionGroup) as info:
        async with pool:
            await pool.complete([{"role": "user", "content": "hi"}])  # type: ignore[list-item]
    assert [p.closes for p in providers] == [1, 1, 1]
    assert raised(info.value) == [0, 2]


@given(fails=st.lists(st.booleans(), min_size=1, max_size=6), release=st.booleans())
async def test_every_provider_is_closed_once_and_exactly_its_errors_raised(
    fails: list[bool], release: bool
) -> None:
    pool, providers = pool_of(fails)
    error: BaseException | None = None
    try:
        await (pool.release_loop() if release else pool.aclose())
    except Exception as exc:
        error = exc
    counts = [p.releases if release else p.closes for p in providers]
    assert counts == [1] * len(fails)
    assert raised(error) == [i for i, f in enumerate(fails) if f]
    if sum(fails) == 1:
        assert isinstance(error, CloseError)  # one error: not wrapped


async def test_cancellation_while_closing_propagates() -> None:
    """A close cancelled from outside raises the cancellation, not a CloseError group."""
    started = anyio.Event()

    class Hanging(Closing):
        async def aclose(self) -> None:
            self.closes += 1
            started.set()
            await anyio.sleep_forever()

    first = Closing(0, fails=True)
    hanging = Hanging(1, fails=False)
    pool = Pool([first, hanging])
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.aclose)
            await started.wait()
            tg.cancel_scope.cancel()
    # The cancellation ended the task group quietly: no CloseError escaped it.
    assert (first.closes, hanging.closes) == (1, 1)
    assert tg.cancel_scope.cancelled_caught
