"""Original-binding-style programs: every call such code makes, on the same core."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

import pgqrs
from pgqrs import Admin, ValidationError


async def test_produce_consume_archive_in_the_original_style(dsn: str) -> None:
    admin = pgqrs.Admin(dsn, schema="compat_flow")
    await admin.install()
    await admin.verify()
    await admin.create_queue("q")
    assert await (await admin.get_queues()).count() == 1
    producer = pgqrs.Producer(admin, "q", "flow_producer", 8100)
    consumer = pgqrs.Consumer(admin, "q", "flow_consumer", 8200)

    msg_id = await producer.enqueue({"data": "x", "id": 123})
    delayed_id = await producer.enqueue_delayed({"later": True}, 1)
    batch_ids = await producer.enqueue_batch([{"i": i} for i in range(4)])
    messages = await admin.get_messages()
    assert await messages.count() == 6

    (first,) = await consumer.dequeue()
    assert (first.id, first.payload) == (msg_id, {"data": "x", "id": 123})
    two = await consumer.dequeue_batch(2)
    two_more = await consumer.dequeue_batch_with_delay(2, 60)
    assert [m.id for m in two + two_more] == batch_ids
    assert await consumer.extend_visibility(two_more[0].id, 5) is True

    await consumer.archive(first.id)
    assert await consumer.archive_batch([m.id for m in two]) == [True, True]
    assert await consumer.delete(two_more[0].id) is True
    assert await consumer.delete(999_999) is False
    assert await consumer.delete(delayed_id) is False  # not dequeued: not this consumer's

    await asyncio.sleep(1.1)
    (late,) = await consumer.dequeue()
    assert late.id == delayed_id
    assert await (await admin.get_archive()).count() == 3
    assert await messages.count() == 2  # the delayed one and one still leased
    await producer.close()
    await consumer.close()
    await admin.close()


async def test_archive_accessor_in_the_original_style(dsn: str, queue: str) -> None:
    admin = Admin(dsn)
    producer = pgqrs.Producer(admin, queue, "arch_prod", 8100)
    consumer = pgqrs.Consumer(admin, queue, "arch_cons", 8200)
    msg_id = await producer.enqueue({"foo": "bar"})
    (msg,) = await consumer.dequeue()
    await consumer.archive(msg.id)

    archive = await admin.get_archive()
    workers = await (await admin.get_workers()).list()
    cons_worker = next(w for w in workers if w.hostname == "arch_cons")
    (arch_msg,) = await archive.list_by_worker(cons_worker.id, 10, 0)
    assert arch_msg.original_msg_id == msg_id
    assert arch_msg.consumer_worker_id == cons_worker.id
    # Deliberate difference: timestamps are datetimes, not RFC 3339 strings.
    assert isinstance(arch_msg.vt, datetime) and isinstance(arch_msg.dequeued_at, datetime)
    assert await archive.list_by_worker(cons_worker.id, 10, 1) == []

    fetched = await archive.get(arch_msg.id)
    assert fetched is not None and fetched.payload == {"foo": "bar"}
    assert await archive.count_by_worker(cons_worker.id) == 1
    assert await archive.delete(arch_msg.id) == 1  # True, equal to the original's count
    assert await archive.count() == 0
    assert await archive.dlq_count(5) == 0
    await producer.close()
    await consumer.close()
    await admin.close()


async def test_dead_letter_calls_in_the_original_style(dsn: str) -> None:
    async with Admin(dsn, max_read_ct=1) as admin:
        # The Admin's max_read_ct is the threshold of the queues it creates (queue policy).
        queue = (await admin.create_queue("tasks")).queue_name
        async with (pgqrs.Producer(admin, queue, "p", 1) as producer,
                    pgqrs.Consumer(admin, queue, "c", 2, max_read_ct=1) as consumer):
            mid = await producer.enqueue({"poison": True})
            await consumer.dequeue_batch_with_delay(1, 1)
            await asyncio.sleep(1.1)
            assert await admin.dlq(queue) == [mid]
        archive = await admin.get_archive()
        # The original's max_attempts argument is checked, not needed: the row is marked.
        assert await archive.dlq_count(5) == await archive.dlq_count(1) == 1
        assert await archive.dlq_count(queue) == 1  # pgqrs's own form still works
        (dead,) = await archive.list_dlq_messages(5, 10, 0)  # (max_attempts, limit, offset)
        assert dead.original_msg_id == mid and dead.dead_letter
        assert await archive.list_dlq_messages(5, 10, 1) == []
        assert [m.id for m in await archive.list_dlq_messages(10, 0)] == [dead.id]
        for bad in (0, -2, True):
            with pytest.raises(ValidationError, match="max_attempts"):
                await archive.dlq_count(bad)
        with pytest.raises(ValidationError, match="max_attempts"):
            await archive.list_dlq_messages(0, 10, 0)
        with pytest.raises(ValidationError, match="original binding"):
            await archive.list_dlq_messages(5, 10, 0, 0)
