from __future__ import annotations

import asyncio

import pytest

from pgqrs import Admin, Consumer, Producer, StateError, ValidationError


async def test_fifo_lease_and_archive(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer, Consumer(dsn, queue, "c", 2) as consumer:
        ids = [await producer.enqueue({"i": i}) for i in range(5)]
        first = await consumer.dequeue()
        assert [m.id for m in first] == ids[:1]
        message = first[0]
        assert message.read_ct == 1 and message.consumer_worker_id == consumer.worker_id
        assert message.vt is not None and message.dequeued_at is not None
        assert (message.vt - message.dequeued_at).total_seconds() == pytest.approx(30, abs=1)
        rest = await consumer.dequeue_batch(10)
        assert [m.id for m in rest] == ids[1:]
        assert await consumer.dequeue() == []
        assert await consumer.archive(ids[0]) is True
        assert await consumer.archive(ids[0]) is False
        assert await consumer.archive_batch([ids[1], 999_999, ids[2]]) == [True, False, True]
        assert await consumer.delete_batch([ids[3], ids[4]]) == [True, True]
    async with Admin(dsn) as admin:
        archive = await admin.get_archive()
        assert await archive.count() == 3
        rows = await archive.list()
        assert [r.original_msg_id for r in rows] == ids[:3]
        assert not any(r.dead_letter for r in rows)
        assert await (await admin.get_messages()).count() == 0


async def test_expired_lease_is_redelivered_and_old_holder_is_fenced(dsn: str, queue: str) -> None:
    async with (Producer(dsn, queue, "p", 1) as producer,
                Consumer(dsn, queue, "a", 2) as a, Consumer(dsn, queue, "b", 3) as b):
        mid = await producer.enqueue({"x": 1})
        await a.dequeue(visibility_timeout=0.3)
        assert await b.dequeue() == []
        await asyncio.sleep(0.5)
        (again,) = await b.dequeue()
        assert again.id == mid and again.read_ct == 2
        assert again.consumer_worker_id == b.worker_id
        # a's lease was taken over: everything a tries is refused
        assert await a.archive(mid) is False
        assert await a.delete(mid) is False
        assert await a.extend_visibility(mid, 10) is False
        assert await a.release([mid]) == 0
        assert await b.extend_visibility(mid, 60) is True
        assert await b.archive(mid) is True


async def test_release_with_and_without_delay(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer, Consumer(dsn, queue, "c", 2) as c:
        m1 = await producer.enqueue({"i": 1})
        m2 = await producer.enqueue({"i": 2})
        await c.dequeue(2)
        assert await c.release([m1]) == 1
        assert await c.release([m2], delay=0.5) == 1
        assert [m.id for m in await c.dequeue(5)] == [m1]
        await asyncio.sleep(0.7)
        assert [m.id for m in await c.dequeue(5)] == [m2]


async def test_dead_letter_after_max_read_ct_listed_and_replayable(dsn: str, queue: str) -> None:
    async with Admin(dsn) as policy_admin:  # the queue's policy decides (SPEC §12)
        await policy_admin.update_queue(queue, max_read_ct=2)
    async with (Producer(dsn, queue, "p", 1) as producer,
                Consumer(dsn, queue, "c", 2, max_read_ct=2) as c):
        mid = await producer.enqueue({"poison": True})
        for attempt in (1, 2):
            (m,) = await c.dequeue()
            assert m.read_ct == attempt
            await c.release([m.id])
        assert await c.dequeue() == []  # exhausted: never delivered again
        async with Admin(dsn, max_read_ct=2) as admin:
            metrics = await admin.queue_metrics(queue)
            assert metrics.dead_messages == 1 and metrics.pending_messages == 0
            assert await admin.dlq(queue) == [mid]
            archive = await admin.get_archive()
            (dead,) = await archive.list_dlq_messages()
            assert dead.original_msg_id == mid and dead.dead_letter and dead.read_ct == 2
            assert await archive.dlq_count() == 1
            new_id = await admin.replay_dlq(dead.id)
            assert new_id is not None and new_id != mid
            assert await admin.replay_dlq(dead.id) is None
        (fresh,) = await c.dequeue()
        assert fresh.id == new_id and fresh.read_ct == 1 and fresh.payload == {"poison": True}


async def test_dlq_never_takes_a_running_lease(dsn: str, queue: str) -> None:
    async with Admin(dsn) as policy_admin:  # the queue's policy decides (SPEC §12)
        await policy_admin.update_queue(queue, max_read_ct=1)
    async with (Producer(dsn, queue, "p", 1) as producer,
                Consumer(dsn, queue, "c", 2, max_read_ct=1) as c):
        mid = await producer.enqueue({"x": 1})
        (m,) = await c.dequeue()
        async with Admin(dsn, max_read_ct=1) as admin:
            assert await admin.dlq() == []
            assert await c.archive(m.id) is True
            assert await (await admin.get_archive()).dlq_count() == 0
        assert m.id == mid


async def test_suspended_consumer_does_not_dequeue(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer, Consumer(dsn, queue, "c", 2) as c:
        await producer.enqueue({"x": 1})
        await c.suspend()
        with pytest.raises(StateError, match="resume"):
            await c.dequeue()
        await c.resume()
        assert len(await c.dequeue()) == 1


async def test_bad_arguments(dsn: str, queue: str) -> None:
    async with Consumer(dsn, queue, "c", 2) as c:
        with pytest.raises(ValidationError):
            await c.dequeue(0)
        with pytest.raises(ValidationError):
            await c.dequeue(1, visibility_timeout=-5)
        with pytest.raises(ValidationError):
            await c.archive_batch(["x"])  # type: ignore[list-item]
        with pytest.raises(ValidationError):
            await c.extend_visibility(1, 0)
    with pytest.raises(ValidationError):
        Consumer(dsn, queue, "c", 2, max_read_ct=0)


async def test_concurrent_consumers_each_message_exactly_once(dsn: str, queue: str) -> None:
    total = 2000
    async with Producer(dsn, queue, "p", 1) as producer:
        for start in range(0, total, 500):
            await producer.enqueue_batch([{"i": i} for i in range(start, start + 500)])
    seen: list[int] = []

    async def drain(port: int) -> None:
        async with Consumer(dsn, queue, "c", port) as c:
            while True:
                batch = await c.dequeue(25)
                if not batch:
                    return
                seen.extend(m.id for m in batch)
                assert all(await c.archive_batch([m.id for m in batch]))

    await asyncio.gather(*(drain(10 + k) for k in range(4)))
    assert len(seen) == total and len(set(seen)) == total
    async with Admin(dsn) as admin:
        assert await (await admin.get_archive()).count() == total
        assert await (await admin.get_messages()).count() == 0
