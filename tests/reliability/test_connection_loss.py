"""Scenario 4: ``pg_terminate_backend`` on pgqrs's connections in the middle of a statement.

First deterministically: a test-only trigger stalls ``enqueue_batch`` (and then
``archive_batch``) halfway through its rows, and the stalled backend is terminated. Then
at random instants: a killer terminates every pgqrs backend every few milliseconds while
batches of random size are enqueued and archived. Each call either fully happened (and,
if it returned, said so truthfully) or fully did not; errors are pgqrs errors; the same
Producer and Consumer keep working afterwards.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import pytest

from pgqrs import Consumer, DatabaseUnavailableError, PgqrsError, Producer

from .support import TEST_APP, connect, execute, scalar, sql

STALL_TRIGGERS = """
CREATE FUNCTION pgqrs_test_stall() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.payload ? TG_ARGV[0] THEN PERFORM pg_sleep(60); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER stall_enqueue BEFORE INSERT ON pgqrs_messages
    FOR EACH ROW EXECUTE FUNCTION pgqrs_test_stall('stall_enqueue');
CREATE TRIGGER stall_archive BEFORE INSERT ON pgqrs_archive
    FOR EACH ROW EXECUTE FUNCTION pgqrs_test_stall('stall_archive');
"""

_TERMINATE_SLEEPER = """
SELECT pg_terminate_backend(pid), query FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event = 'PgSleep'
"""


async def terminate_when_stalled(dsn: str) -> str:
    """Wait for a backend sleeping in the stall trigger, terminate it; its query text."""
    for _ in range(500):
        rows = await sql(dsn, _TERMINATE_SLEEPER)
        if rows:
            assert rows[0][0] is True
            return str(rows[0][1])
        await asyncio.sleep(0.01)
    raise AssertionError("no statement ever stalled in the trigger")


@pytest.mark.timeout(60)
async def test_terminated_mid_statement_is_all_or_nothing(dsn: str, queue: str) -> None:
    await execute(dsn, STALL_TRIGGERS)
    async with Producer(dsn, queue, "p", 1) as producer, \
            Consumer(dsn, queue, "c", 2, visibility_timeout=60) as consumer:
        # enqueue_batch: the 51st of 100 rows stalls; the first 50 are already inserted.
        payloads = [{"batch": "A", "i": i} for i in range(100)]
        payloads[50]["stall_enqueue"] = True
        call = asyncio.create_task(producer.enqueue_batch(payloads))
        query = await terminate_when_stalled(dsn)
        assert "pgqrs_messages" in query
        with pytest.raises(PgqrsError) as info:
            await asyncio.wait_for(call, 10)
        assert isinstance(info.value, DatabaseUnavailableError), repr(info.value)
        assert await scalar(dsn, "SELECT count(*) FROM pgqrs_messages") == 0

        # The same producer works again at once.
        ids = await producer.enqueue_batch([{"batch": "B", "i": i} for i in range(100)]
                                           + [{"batch": "B", "stall_archive": True}])
        assert await scalar(dsn, "SELECT count(*) FROM pgqrs_messages") == 101

        # archive_batch: the last row's archive insert stalls after 100 rows were moved.
        held = await consumer.dequeue(101)
        assert [m.id for m in held] == ids
        call = asyncio.create_task(consumer.archive_batch(ids))
        query = await terminate_when_stalled(dsn)
        assert "pgqrs_archive" in query
        with pytest.raises(PgqrsError) as info:
            await asyncio.wait_for(call, 10)
        assert isinstance(info.value, DatabaseUnavailableError), repr(info.value)
        assert await scalar(dsn, "SELECT count(*) FROM pgqrs_archive") == 0
        rows = await sql(dsn, "SELECT consumer_worker_id FROM pgqrs_messages")
        assert len(rows) == 101 and {r[0] for r in rows} == {consumer.worker_id}

        # The same consumer still holds them and archives them once the stall is gone.
        await sql(dsn, "DROP TRIGGER stall_archive ON pgqrs_archive")
        assert await consumer.archive_batch(ids) == [True] * 101
        assert await scalar(dsn, "SELECT count(*) FROM pgqrs_archive") == 101
        assert await scalar(dsn, "SELECT count(*) FROM pgqrs_messages") == 0


async def _killer(dsn: str, stop: asyncio.Event, armed: asyncio.Event, rng: random.Random,
                  kills: Counter[str]) -> None:
    conn = await connect(dsn)
    try:
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0.0, 0.03))
            if not armed.is_set():
                continue
            rows = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                "current_database() AND pid <> pg_backend_pid() AND backend_type = "
                "'client backend' AND application_name <> $1", TEST_APP)
            kills["backends"] += sum(1 for r in rows if r[0])
    finally:
        await conn.close()


@pytest.mark.timeout(120)
async def test_terminate_backend_at_random_instants(dsn: str, queue: str) -> None:
    rng = random.Random(11)
    outcomes: Counter[str] = Counter()
    kills: Counter[str] = Counter()
    raw: list[BaseException] = []
    stop = asyncio.Event()
    producer = Producer(dsn, queue, "p", 1)
    consumer = Consumer(dsn, queue, "c", 2, visibility_timeout=120)
    armed = asyncio.Event()
    killer = asyncio.create_task(_killer(dsn, stop, armed, rng, kills))
    began = time.monotonic()
    try:
        for batch in range(150):
            size = rng.choice([1, 10, 100, 1000, 3000])
            payloads = [{"b": batch, "i": i, "pad": "y" * 200} for i in range(size)]
            armed.set()
            try:
                ids = await asyncio.wait_for(producer.enqueue_batch(payloads), 30)
            except PgqrsError:
                ids = None
            except Exception as exc:
                raw.append(exc)
                continue
            armed.clear()
            stored = await sql(dsn, "SELECT id FROM pgqrs_messages WHERE (payload->>'b')::int "
                                    "= $1 ORDER BY id", batch)
            stored_ids = [r[0] for r in stored]
            if ids is not None:
                assert stored_ids == ids, f"batch {batch}: returned ids not all stored"
                outcomes["enqueue ok"] += 1
            elif stored_ids:
                assert len(stored_ids) == size, f"batch {batch}: {len(stored_ids)}/{size} stored"
                outcomes["enqueue failed after commit"] += 1
            else:
                outcomes["enqueue failed, nothing written"] += 1

            if not stored_ids:
                continue
            # Claim this batch (the killer rests), then archive it under fire.
            held: list[int] = []
            for _ in range(50):
                try:
                    held += [m.id for m in await consumer.dequeue(size - len(held))]
                except PgqrsError:
                    outcomes["dequeue failed"] += 1
                if len(held) == size:
                    break
                # A claim that committed but whose answer was lost leaves rows we hold
                # without knowing it; ask the database which ones are ours.
                held = [r[0] for r in await sql(
                    dsn, "SELECT id FROM pgqrs_messages WHERE consumer_worker_id = $1",
                    consumer.worker_id)]
            assert sorted(held) == stored_ids
            armed.set()
            try:
                done = await asyncio.wait_for(consumer.archive_batch(held), 30)
            except PgqrsError:
                done = None
            except Exception as exc:
                raw.append(exc)
                done = None
            armed.clear()
            archived = await scalar(dsn, "SELECT count(*) FROM pgqrs_archive WHERE "
                                         "original_msg_id = ANY($1::bigint[])", held)
            live = await scalar(dsn, "SELECT count(*) FROM pgqrs_messages WHERE "
                                     "id = ANY($1::bigint[])", held)
            assert archived + live == size
            if done is not None:
                assert done == [True] * size and archived == size
                outcomes["archive ok"] += 1
                continue
            assert archived in (0, size), f"archive_batch moved {archived}/{size}"
            outcomes["archive failed after commit" if archived else
                     "archive failed, nothing moved"] += 1
            if not archived:
                for _ in range(50):  # the same consumer, still holding them, retries
                    try:
                        assert await consumer.archive_batch(held) == [True] * size
                        break
                    except PgqrsError:
                        outcomes["archive retry failed"] += 1
    finally:
        stop.set()
        await killer
        await producer.close()
        await consumer.close()
    assert not raw, f"raw exceptions escaped: {raw[:5]!r}"
    failed = sum(n for k, n in outcomes.items() if "failed" in k)
    assert failed > 0 and kills["backends"] > 0
    assert await scalar(dsn, "SELECT count(*) FROM pgqrs_messages") == 0
    total = await scalar(dsn, "SELECT count(*) FROM pgqrs_archive")
    assert total == await scalar(dsn, "SELECT count(DISTINCT original_msg_id) FROM pgqrs_archive")
    print(f"\nconnection loss: calls={dict(outcomes)} backends_terminated={kills['backends']} "
          f"messages_archived={total} partial=0 seconds={time.monotonic() - began:.1f}")
