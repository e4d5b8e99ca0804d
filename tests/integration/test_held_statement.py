"""The held connection behind single-statement calls: shared, borrowed around, replaced.

``Database.statement()`` hands one kept connection to each hot-path call; a call made
while it is busy borrows a pooled one, and a call cancelled mid-statement leaves it
replaced. These look at the client's private state on purpose: a stuck "busy" mark would
not fail a call (every later call would quietly borrow from the pool instead).
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from pgqrs import Producer


async def test_concurrent_calls_borrow_while_the_held_connection_is_busy(dsn: str,
                                                                         queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        await producer.enqueue({"warm": "up"})
        db = producer._db
        held = db._held  # type: ignore[attr-defined]
        ids = await asyncio.gather(*(producer.enqueue({"i": i}) for i in range(20)))
        assert len(set(ids)) == 20
        assert not db._held_busy  # type: ignore[attr-defined]
        await producer.enqueue({"after": True})
        assert db._held is held  # type: ignore[attr-defined]


async def test_a_cancelled_call_replaces_the_held_connection(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        await producer.enqueue({"warm": "up"})
        db = producer._db
        held = db._held  # type: ignore[attr-defined]
        locker = await asyncpg.connect(dsn)
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE pgqrs_messages IN ACCESS EXCLUSIVE MODE")
                task = asyncio.create_task(producer.enqueue({"blocked": True}))
                await asyncio.sleep(0.3)
                assert not task.done() and db._held_busy  # type: ignore[attr-defined]
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                assert task.cancelled()
                assert not db._held_busy  # type: ignore[attr-defined]
                assert db._held is None  # type: ignore[attr-defined]
        finally:
            await locker.close()
        assert await producer.enqueue({"next": True}) > 0
        assert db._held is not None and db._held is not held  # type: ignore[attr-defined]
