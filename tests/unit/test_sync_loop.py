"""pgqrs.sync drives coroutines on a real event loop: one per thread, reused, closed."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

import pgqrs
from pgqrs.sync import _loop


async def _current() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_a_coroutine_that_really_suspends_runs() -> None:
    assert _loop.run(asyncio.sleep(0.01, result=5)) == 5


def test_each_thread_runs_its_own_loop_reused_and_closed_when_the_thread_ends() -> None:
    first, second = _loop.run(_current()), _loop.run(_current())
    assert first is second and not first.is_closed()
    seen: list[asyncio.AbstractEventLoop] = []
    thread = threading.Thread(target=lambda: seen.append(_loop.run(_current())))
    thread.start()
    thread.join()
    gc.collect()
    assert seen[0] is not first
    assert seen[0].is_closed()


def test_errors_propagate_and_the_loop_stays_usable() -> None:
    async def fail() -> None:
        raise pgqrs.QueueNotFoundError("q")

    with pytest.raises(pgqrs.QueueNotFoundError):
        _loop.run(fail())
    assert _loop.run(asyncio.sleep(0, result=1)) == 1


async def test_refused_inside_a_running_loop() -> None:
    coro = asyncio.sleep(0)
    with pytest.raises(pgqrs.ConfigurationError, match="running event loop"):
        _loop.run(coro)
    assert coro.cr_frame is None  # closed, so no "never awaited" warning
