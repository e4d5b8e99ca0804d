"""What replaces the foreign keys of ``pgqrs_messages`` (revision pgqrs_0005 dropped them).

Each test reads the server's own data: no live message names a queue or a worker that is
gone after the code paths that delete them, including an enqueue racing the deletion of
its queue (made deterministic with a transaction held open).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest
from _sql import sql
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from pgqrs import (
    Admin,
    ConfigurationError,
    Consumer,
    DatabaseError,
    Producer,
    QueueInUseError,
    WorkerStatus,
)

DANGLING = """
SELECT
  (SELECT count(*) FROM pgqrs_messages m
    WHERE NOT EXISTS (SELECT 1 FROM pgqrs_queues q WHERE q.id = m.queue_id)) AS queues,
  (SELECT count(*) FROM pgqrs_messages m WHERE m.producer_worker_id IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM pgqrs_workers w WHERE w.id = m.producer_worker_id))
    AS producers,
  (SELECT count(*) FROM pgqrs_messages m WHERE m.consumer_worker_id IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM pgqrs_workers w WHERE w.id = m.consumer_worker_id))
    AS consumers
"""



async def dangling(dsn: str) -> tuple[int, int, int]:
    (row,) = await sql(dsn, DANGLING)
    return int(row["queues"]), int(row["producers"]), int(row["consumers"])


async def test_the_schema_has_no_foreign_key_on_the_hot_table(dsn: str) -> None:
    rows = await sql(dsn, "SELECT conname FROM pg_constraint WHERE contype = 'f' "
                          "AND conrelid = 'pgqrs_messages'::regclass")
    assert rows == []


async def test_deleting_workers_forgets_their_ids_in_live_messages(dsn: str,
                                                                  queue: str) -> None:
    async with Admin(dsn) as admin:
        producer = Producer(dsn, queue, "p", 1)
        consumer = Consumer(dsn, queue, "c", 2)
        ids = await producer.enqueue_batch([{"n": i} for i in range(4)])
        held = await consumer.dequeue(2)
        assert len(held) == 2
        producer_id, consumer_id = await producer.register(), await consumer.register()
        # Both stop without releasing anything (a crash the registry marked stopped).
        await sql(dsn, "UPDATE pgqrs_workers SET status = 'stopped', heartbeat_at = "
                       "now() - interval '1 hour'")
        assert await admin.purge_old_workers(60) == 2
        assert await dangling(dsn) == (0, 0, 0)
        rows = await sql(dsn, "SELECT id, producer_worker_id, consumer_worker_id, vt > now() "
                              "AS leased FROM pgqrs_messages ORDER BY id")
        assert [r["id"] for r in rows] == ids  # every message stays
        assert {(r["producer_worker_id"], r["consumer_worker_id"]) for r in rows} == {
            (None, None)}
        assert sum(r["leased"] for r in rows) == 2  # leases run out as they would have
        # The deleted consumer's stale deliveries no longer pass the fence.
        fenced = await sql(dsn, "SELECT count(*) AS n FROM pgqrs_messages WHERE "
                                "consumer_worker_id = $1", consumer_id)
        assert fenced[0]["n"] == 0
        assert producer_id != consumer_id


async def test_delete_worker_forgets_only_that_worker(dsn: str, queue: str) -> None:
    async with Admin(dsn) as admin:
        first, second = Producer(dsn, queue, "p", 1), Producer(dsn, queue, "p", 2)
        await first.enqueue({"by": 1})
        await second.enqueue({"by": 2})
        first_id, second_id = await first.register(), await second.register()
        await admin.set_worker_status(first_id, WorkerStatus.STOPPED)
        await admin.delete_worker(first_id)
        rows = await sql(dsn, "SELECT producer_worker_id FROM pgqrs_messages ORDER BY id")
        assert [r["producer_worker_id"] for r in rows] == [None, second_id]
        assert await dangling(dsn) == (0, 0, 0)


async def test_worker_ids_are_never_reused(dsn: str, queue: str) -> None:
    async with Admin(dsn) as admin:
        first = Producer(dsn, queue, "p", 1)
        first_id = await first.register()
        await admin.set_worker_status(first_id, WorkerStatus.STOPPED)
        await admin.delete_worker(first_id)
        again = Producer(dsn, queue, "p", 1)
        assert await again.register() > first_id  # a stale id can never name a new worker


async def test_an_enqueue_in_flight_makes_delete_queue_refuse(dsn: str, queue: str) -> None:
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
                                 poolclass=NullPool)
    producer = Producer(dsn, queue, "p", 1)
    await producer.register()
    try:
        async with Admin(dsn) as admin:
            async with engine.connect() as conn:
                await conn.begin()
                await producer.enqueue({"in": "flight"}, connection=conn)
                deleting = asyncio.create_task(admin.delete_queue(queue))
                await asyncio.sleep(0.5)
                assert not deleting.done()  # it waits for the enqueue's lock on the queue
                await conn.commit()
            with pytest.raises(QueueInUseError):
                await deleting
    finally:
        await engine.dispose()
    assert await dangling(dsn) == (0, 0, 0)
    assert len(await sql(dsn, "SELECT id FROM pgqrs_messages")) == 1


async def test_an_enqueue_racing_a_queue_deletion_fails_and_leaves_nothing(
        dsn: str, queue: str) -> None:
    producer = Producer(dsn, queue, "p", 1)
    await producer.register()
    await producer.enqueue({"before": 1})
    await sql(dsn, "DELETE FROM pgqrs_messages")
    deleter = await asyncpg.connect(dsn)
    try:
        # What Admin.delete_queue does, held open at its last step: the queue row locked
        # FOR UPDATE, found idle, deleted; the enqueue starts before the commit.
        await deleter.execute("BEGIN")
        queue_id = await deleter.fetchval(
            "SELECT id FROM pgqrs_queues WHERE queue_name = $1 FOR UPDATE", queue)
        await deleter.execute("DELETE FROM pgqrs_archive WHERE queue_id = $1", queue_id)
        await deleter.execute("DELETE FROM pgqrs_queues WHERE id = $1", queue_id)
        enqueuing = asyncio.create_task(producer.enqueue({"racing": 1}))
        batch = asyncio.create_task(producer.enqueue_batch([{"racing": 2}, {"racing": 3}]))
        await asyncio.sleep(0.5)
        assert not enqueuing.done() and not batch.done()  # waiting on the queue row
        await deleter.execute("COMMIT")
        for task in (enqueuing, batch):
            with pytest.raises(DatabaseError):
                await task
    finally:
        await deleter.close()
    assert await sql(dsn, "SELECT id FROM pgqrs_messages") == []
    assert await dangling(dsn) == (0, 0, 0)


async def test_queries_by_worker_use_the_held_index_and_purges_skip_the_table(
        dsn: str, queue: str) -> None:
    from test_claim_plans import explain, message_scans

    from pgqrs.repositories import messages, workers

    producer = Producer(dsn, queue, "p", 1)
    consumer = Consumer(dsn, queue, "c", 2)
    await producer.enqueue_batch([{"n": i} for i in range(5000)])
    await consumer.dequeue(3)
    worker_id = await consumer.register()
    plans = {
        "release": await explain(dsn, messages._RELEASE_WORKER, p_worker_id=worker_id,
                                 p_channel="pgqrs"),
        "purge, nothing to purge": await explain(dsn, workers._PURGE_STOPPED,
                                                 p_stale=timedelta(hours=1)),
        "delete an unknown worker": await explain(dsn, workers._DELETE, p_id=10**9),
    }
    release = message_scans(plans["release"])
    assert release and all(n.get("Index Name") == "ix_pgqrs_messages_held" for n in release)
    assert plans["release"]["Plan"]["Actual Rows"] == 3
    for name in ("purge, nothing to purge", "delete an unknown worker"):
        # The one-time filter: with no worker deleted, the live table is never read.
        scans = message_scans(plans[name])
        assert scans and all(n.get("Actual Loops", 0) == 0 for n in scans), (name, plans[name])


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
async def test_delete_queue_on_a_host_engine_by_isolation_level(dsn: str, queue: str,
                                                                level: str) -> None:
    # REPEATABLE READ would count the queue's messages in a snapshot taken before waiting
    # for an enqueue's lock, so it is refused and nothing goes; SERIALIZABLE is safe.
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
                                 poolclass=NullPool, isolation_level=level)
    try:
        admin = Admin(engine)
        if level == "REPEATABLE READ":
            with pytest.raises(ConfigurationError, match="REPEATABLE READ"):
                await admin.delete_queue(queue)
            assert await sql(dsn, "SELECT id FROM pgqrs_queues WHERE queue_name = $1", queue)
        else:
            await admin.delete_queue(queue)
            assert not await sql(dsn, "SELECT id FROM pgqrs_queues WHERE queue_name = $1",
                                 queue)
    finally:
        await engine.dispose()
