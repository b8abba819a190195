"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def no_stray_threads() -> Iterator[None]:
    """Fail if the test leaves a thread running that was not there before it."""
    before = set(threading.enumerate())
    yield
    # The backends keep idle worker threads cached for reuse: those are not stray.
    idle_pools = ("AnyIO worker thread", "Trio thread")
    stray = [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith(idle_pools)
    ]
    assert not stray, f"threads left running: {stray}"
