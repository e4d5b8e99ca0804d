"""SIGTERM/SIGINT as a graceful stop for ``Consumer.consume``, where that is safe.

``handle_signals=None`` (the default) means: take the signals only if nobody else did,
that is in the main thread of a process whose SIGTERM is ``SIG_DFL`` and whose SIGINT is
Python's ``default_int_handler`` (or the handler ``asyncio.run`` installs in its place, or
``SIG_IGN``, which is kept). A host that installed its own handlers (uvicorn, gunicorn, a
Celery-like runner) keeps them. ``True`` takes them anyway, ``False`` never does.

While installed, one signal sets the stop event of every ``consume()`` running on the
loop, and the previous handlers come back at once: a second signal does what it did
before pgqrs (SIGTERM ends the process, Ctrl-C interrupts ``asyncio.run``). When the last
``consume()`` returns, the previous handlers are restored too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("pgqrs")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Installed:
    """pgqrs's handlers on one event loop, shared by the consume loops running on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.previous: dict[signal.Signals, Callable[..., Any] | int | None] = {}
        self.stops: set[asyncio.Event] = set()

    def install(self, signals: tuple[signal.Signals, ...]) -> bool:
        for sig in signals:
            previous = signal.getsignal(sig)
            # Not available off the main thread, or on Windows' event loops.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self.loop.add_signal_handler(sig, self._received, sig)
                self.previous[sig] = previous
        return bool(self.previous)

    def _received(self, sig: signal.Signals) -> None:
        for stop in self.stops:
            stop.set()
        self.uninstall()
        log.info("pgqrs consume: %s received, stopping gracefully (send it again to "
                 "stop at once)", sig.name)

    def uninstall(self) -> None:
        global _active
        if _active is self:
            _active = None
        for sig, previous in self.previous.items():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self.loop.remove_signal_handler(sig)
                if previous is not None:  # None: set outside Python, cannot be put back
                    signal.signal(sig, previous)
        self.previous.clear()


_active: _Installed | None = None


def _is_asyncio_runner(handler: object) -> bool:
    """``asyncio.run`` replaces Python's default SIGINT handler with its own."""
    func = handler.func if isinstance(handler, functools.partial) else handler
    return isinstance(getattr(func, "__self__", None), asyncio.Runner)


def _signals_to_take() -> tuple[signal.Signals, ...]:
    """The signals pgqrs may take in auto mode: none if anyone else handles them."""
    if threading.current_thread() is not threading.main_thread():
        return ()
    sigint = signal.getsignal(signal.SIGINT)
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return ()
    if sigint == signal.SIG_IGN:  # e.g. a background job of a shell: keep ignoring Ctrl-C
        return (signal.SIGTERM,)
    if sigint is signal.default_int_handler or _is_asyncio_runner(sigint):
        return _SIGNALS
    return ()


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event, mode: bool | None) -> Iterator[None]:
    """Set ``stop`` on SIGTERM/SIGINT while the block runs (see the module docstring)."""
    global _active
    loop = asyncio.get_running_loop()
    installed = _active if _active is not None and _active.loop is loop else None
    if installed is None and mode is not False:
        signals = _SIGNALS if mode else _signals_to_take()
        candidate = _Installed(loop)
        if signals and candidate.install(signals):
            installed = _active = candidate
    if installed is None or mode is False:
        yield
        return
    installed.stops.add(stop)
    try:
        yield
    finally:
        installed.stops.discard(stop)
        if not installed.stops:
            installed.uninstall()
