"""LISTEN/NOTIFY wake-ups, the polling fallback, and the dequeue query's plan."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import asyncpg
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from pgqrs import Consumer, Producer
from pgqrs.repositories import messages as message_statements


async def test_waiting_dequeue_is_woken_by_notify(dsn: str, queue: str) -> None:
    # Polling every 30 s and a 10 s wait: only the notification can deliver this in time.
    async with (Producer(dsn, queue, "p", 1) as producer,
                Consumer(dsn, queue, "c", 2, poll_interval=30) as consumer):
        waiting = asyncio.create_task(consumer.dequeue(wait=10))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        mid = await producer.enqueue({"wake": "up"})
        got = await asyncio.wait_for(waiting, 5)
        assert [m.id for m in got] == [mid]


async def test_delayed_message_is_picked_up_when_due(dsn: str, queue: str) -> None:
    async with (Producer(dsn, queue, "p", 1) as producer,
                Consumer(dsn, queue, "c", 2, poll_interval=30) as consumer):
        mid = await producer.enqueue({"later": True}, delay=0.5)
        got = await asyncio.wait_for(consumer.dequeue(wait=10), 5)
        assert [m.id for m in got] == [mid]


async def test_wait_times_out_empty(dsn: str, queue: str) -> None:
    async with Consumer(dsn, queue, "c", 2) as consumer:
        assert await consumer.dequeue(wait=0.2) == []


async def test_pgbouncer_mode_polls(dsn: str, queue: str) -> None:
    async with (Producer(dsn, queue, "p", 1, pgbouncer=True) as producer,
                Consumer(dsn, queue, "c", 2, pgbouncer=True, poll_interval=0.05) as consumer):
        waiting = asyncio.create_task(consumer.dequeue(wait=10))
        await asyncio.sleep(0.2)
        mid = await producer.enqueue({"x": 1})
        assert [m.id for m in await asyncio.wait_for(waiting, 5)] == [mid]
        assert consumer._listener is None  # never tried to LISTEN


async def test_one_listening_connection_per_process(dsn: str, queue: str) -> None:
    async with (Consumer(dsn, queue, "a", 1) as a, Consumer(dsn, queue, "b", 2) as b):
        await asyncio.gather(a.dequeue(wait=0.1), b.dequeue(wait=0.1))
        assert a._listener is not None and a._listener is b._listener


async def test_notifications_follow_the_transaction_and_batches_notify_once(
        dsn: str, queue: str) -> None:
    heard: list[str] = []
    listener = await asyncpg.connect(dsn)
    await listener.add_listener("pgqrs_public", lambda *args: heard.append(args[3]))
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with Producer(engine, queue, "p", 1) as producer:
            async with AsyncSession(engine) as session:
                await session.begin()
                await producer.enqueue({"x": 1}, session=session)
                await session.rollback()
            await asyncio.sleep(0.2)
            assert heard == []  # a rolled-back enqueue wakes no one
            await producer.enqueue_batch([{"i": i} for i in range(10)])
            await asyncio.sleep(0.2)
            assert len(heard) == 1  # one wake-up for the whole batch
    finally:
        await listener.close()
        await engine.dispose()


async def test_dequeue_uses_an_index_with_50k_waiting(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer, Consumer(dsn, queue, "c", 2) as c:
        for _ in range(10):
            await producer.enqueue_batch([{"i": i} for i in range(5000)])
        worker_id = await c.register()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ANALYZE pgqrs_messages")
        dequeue = message_statements._DEQUEUE.executable
        compiled = dequeue.compile(dialect=postgresql.asyncpg.dialect())
        values = {"p_queue_id": 1, "p_worker_id": worker_id, "p_limit": 10,
                  "p_lease": timedelta(seconds=30), "p_max_read_ct": 5}
        params = compiled.construct_params(values)
        args = [params[name] for name in compiled.positiontup or []]
        plan = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {compiled}", *args))
    finally:
        await conn.close()

    def nodes(node: dict[str, object]) -> list[dict[str, object]]:
        children = node.get("Plans", [])
        assert isinstance(children, list)
        return [node, *(n for child in children for n in nodes(child))]

    scans = [n for n in nodes(plan[0]["Plan"]) if n.get("Relation Name") == "pgqrs_messages"]
    assert scans, plan
    assert all(n["Node Type"] != "Seq Scan" for n in scans), json.dumps(plan, indent=1)
    # Ordered by id and filtered by queue: either index walks FIFO order without sorting.
    assert any(n["Node Type"] in ("Index Scan", "Index Only Scan") for n in scans)
