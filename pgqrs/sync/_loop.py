"""Run the async core's coroutines from synchronous code: one event loop per thread.

Each thread that calls ``pgqrs.sync`` gets its own event loop, created on first use and
reused by its later calls (``run_until_complete`` on a ready loop costs a few
microseconds; a fresh loop per call costs about 30, ``asyncio.run`` about 75). The loop
only runs during a call; it is closed when its thread ends, or at exit for the main
thread. A forked child starts with no loops (the parent's share its epoll instance).
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

from pgqrs import errors

T = TypeVar("T")


class _Loops(threading.local):
    holder: _Holder | None = None


class _Holder:
    """Owns one thread's loop; the loop is closed when this goes (thread end, or exit)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        weakref.finalize(self, _close, self.loop)


def _close(loop: asyncio.AbstractEventLoop) -> None:
    if not loop.is_running():  # a daemon thread may still be inside a call at exit
        loop.close()


_loops = _Loops()


def _forget_loops() -> None:
    global _loops
    _loops = _Loops()


os.register_at_fork(after_in_child=_forget_loops)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on this thread's loop and return its result.

    Raises:
        ConfigurationError: called from a running event loop, which it would block.
    """
    if asyncio._get_running_loop() is not None:
        coro.close()
        raise errors.ConfigurationError(
            "pgqrs.sync was called from inside a running event loop, which it would block; "
            "use the async classes there (await pgqrs.Producer(...).enqueue(...))"
        )
    holder = _loops.holder
    if holder is None:
        holder = _loops.holder = _Holder()
    try:
        return holder.loop.run_until_complete(coro)
    except BaseException as exc:
        if not isinstance(exc, Exception):
            # KeyboardInterrupt or SystemExit mid-call: the loop's state is unknown, so
            # the next call of this thread starts on a new one.
            _loops.holder = None
        raise
