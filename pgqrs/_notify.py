"""LISTEN/NOTIFY wake-ups for idle consumers, with polling as the fallback.

Enqueue statements ``pg_notify`` the queue's id on the schema's channel in the same
transaction, so a rolled-back enqueue wakes no one. Each process keeps one listening
connection per database and channel, shared by all its consumers; a consumer subscribes
*before* it tries to claim, so a message that lands between an empty claim and the wait
still wakes it. If the listening connection cannot be opened or drops, waiters simply
time out and poll, and the next wait reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("pgqrs")

Connect = Callable[[], Awaitable[Any]]


class Subscription:
    """A waiter for one queue's notifications, registered before the claim it follows."""

    def __init__(self, listener: Listener, queue_id: int) -> None:
        self.listener = listener
        self.queue_id = queue_id
        self.event = asyncio.Event()

    @property
    def listening(self) -> bool:
        """True if notifications can arrive (else the caller should poll)."""
        return self.listener.listening

    async def wait(self, timeout: float, stop: asyncio.Event | None = None) -> None:
        """Wait up to ``timeout`` seconds for a notification, or for ``stop`` to be set."""
        events = [self.event] if self.listening else []
        if stop is not None:
            events.append(stop)
        if not events:
            await asyncio.sleep(timeout)
            return
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def close(self) -> None:
        """Stop receiving notifications."""
        waiters = self.listener.waiters.get(self.queue_id)
        if waiters is not None:
            waiters.discard(self.event)


class Listener:
    """One LISTEN connection for a database and channel, shared within a process."""

    def __init__(self, connect: Connect, channel: str) -> None:
        self._connect = connect
        self.channel = channel
        self.waiters: defaultdict[int, set[asyncio.Event]] = defaultdict(set)
        self.users = 0
        self._conn: Any = None
        self._lock = asyncio.Lock()

    @property
    def listening(self) -> bool:
        """True while the LISTEN connection is open."""
        return self._conn is not None and not self._conn.is_closed()

    async def subscribe(self, queue_id: int) -> Subscription:
        """Make sure we are listening, then register a waiter for ``queue_id``."""
        if not self.listening:
            async with self._lock:
                if not self.listening:
                    await self._open()
        subscription = Subscription(self, queue_id)
        self.waiters[queue_id].add(subscription.event)
        return subscription

    async def _open(self) -> None:
        conn = None
        try:
            conn = await self._connect()
            await conn.add_listener(self.channel, self._notified)
            conn.add_termination_listener(self._terminated)
        except Exception as exc:  # any failure means: poll instead
            log.info("pgqrs LISTEN unavailable (%s); waiting consumers poll instead", exc)
            if conn is not None and hasattr(conn, "close"):
                with contextlib.suppress(Exception):
                    await conn.close()
            self._conn = None
            return
        self._conn = conn

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            for event in self.waiters.get(int(payload), ()):
                event.set()

    def _terminated(self, conn: Any) -> None:
        # Wake everyone so they poll now; the next subscribe reconnects.
        self._conn = None
        for events in self.waiters.values():
            for event in events:
                event.set()

    async def close(self) -> None:
        """Close the LISTEN connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)


async def _never_connect() -> Any:
    raise ConnectionError("notifications are off (pgbouncer transaction mode)")


def polling_subscription(queue_id: int) -> Subscription:
    """A subscription that never hears anything: its waits are plain polling sleeps."""
    return Subscription(Listener(_never_connect, ""), queue_id)


_listeners: dict[tuple[int, str, str], Listener] = {}


def acquire(loop_key: int, target: str, channel: str, connect: Connect) -> Listener:
    """The process's listener for ``target`` (a database identity) and ``channel``."""
    key = (loop_key, target, channel)
    listener = _listeners.get(key)
    if listener is None:
        listener = _listeners[key] = Listener(connect, channel)
    listener.users += 1
    return listener


async def release(loop_key: int, target: str, listener: Listener) -> None:
    """Drop one user of ``listener``; the last one closes its connection."""
    listener.users -= 1
    if listener.users <= 0:
        _listeners.pop((loop_key, target, listener.channel), None)
        await listener.close()
