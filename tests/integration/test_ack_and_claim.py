"""The fused acknowledge-and-claim: ``archive_and_dequeue`` / ``delete_and_dequeue``.

One statement archives (or deletes) the deliveries a consumer finished and claims its next
batch. Everything here is checked from the server's own rows: the fence per delivery
(worker and ``read_ct``), that an acknowledged message is never handed out again by the
same call, grouped messages handing over, a paused queue, waiting, and that the consume
loop sends its acks with its claims.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _sql import sql

from pgqrs import (
    Admin,
    Consumer,
    DatabaseError,
    Producer,
    QueueMessage,
    StateError,
    ValidationError,
)


async def archived(dsn: str) -> list[tuple[int, int]]:
    """``(original_msg_id, read_ct)`` of every archived row, by id."""
    rows = await sql(dsn, "SELECT original_msg_id, read_ct FROM pgqrs_archive ORDER BY 1")
    return [(r[0], r[1]) for r in rows]


async def test_acks_and_claims_in_one_call(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer, Consumer(dsn, queue, "c", 2) as c:
        ids = await producer.enqueue_batch([{"i": i} for i in range(5)])
        acked, first = await c.archive_and_dequeue([], limit=2)
        assert acked == [] and [m.id for m in first] == ids[:2]
        # A QueueMessage and a bare id (this consumer's delivery of it) both name one.
        acked, nxt = await c.archive_and_dequeue([first[0], first[1].id], limit=2)
        assert acked == [True, True] and [m.id for m in nxt] == ids[2:4]
        assert all(m.read_ct == 1 and m.consumer_worker_id == c.worker_id for m in nxt)
        assert await archived(dsn) == [(ids[0], 1), (ids[1], 1)]
        acked, last = await c.delete_and_dequeue(nxt, limit=10)
        assert acked == [True, True] and [m.id for m in last] == ids[4:]
        acked, none = await c.archive_and_dequeue(last[0], limit=10)
        assert acked == [True] and none == []
        assert await c.held_count() == 0
    # The deleted two are gone without a trace; nothing was archived twice.
    assert await archived(dsn) == [(ids[0], 1), (ids[1], 1), (ids[4], 1)]
    assert await sql(dsn, "SELECT id FROM pgqrs_messages") == []


async def test_an_expired_lease_is_acked_and_never_claimed_again_by_the_same_call(
        dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer, Consumer(dsn, queue, "c", 2) as c:
        mid = await producer.enqueue({"x": 1})
        (message,) = await c.dequeue(visibility_timeout=0.2)
        await asyncio.sleep(0.3)  # its lease ran out: visible, still this delivery
        acked, claimed = await c.archive_and_dequeue([message], limit=10)
        assert acked == [True]
        assert claimed == []  # not handed out again by the statement that archived it
    assert await archived(dsn) == [(mid, 1)]
    assert await sql(dsn, "SELECT id FROM pgqrs_messages") == []


async def test_the_fence_refuses_stale_and_foreign_deliveries(dsn: str, queue: str) -> None:
    async with (Producer(dsn, queue, "p", 1) as producer,
                Consumer(dsn, queue, "a", 2) as a, Consumer(dsn, queue, "b", 3) as b):
        mid = await producer.enqueue({"x": 1})
        (stale,) = await a.dequeue(visibility_timeout=0.2)
        await asyncio.sleep(0.3)
        (again,) = await b.dequeue()  # delivered again, to b
        assert again.id == mid and again.read_ct == 2
        other = await producer.enqueue({"x": 2})
        # a's old delivery, by object and by id; b's delivery named by a: all refused.
        acked, claimed = await a.archive_and_dequeue([stale, mid, again], limit=10)
        assert acked == [False, False, False]
        assert [m.id for m in claimed] == [other]
        # a refused id is kept out of the claim too: b still holds it.
        rows = await sql(dsn, "SELECT consumer_worker_id, read_ct FROM pgqrs_messages "
                              "WHERE id = $1", mid)
        assert [(r[0], r[1]) for r in rows] == [(b.worker_id, 2)]
        acked, _ = await b.archive_and_dequeue([again], limit=1)
        assert acked == [True]
        assert (await a.archive_and_dequeue(claimed, limit=1))[0] == [True]
    assert await archived(dsn) == [(mid, 2), (other, 1)]


async def test_a_stale_read_ct_is_refused_even_for_the_same_worker(dsn: str,
                                                                   queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer, Consumer(dsn, queue, "c", 2) as c:
        mid = await producer.enqueue({"x": 1})
        (first,) = await c.dequeue(visibility_timeout=0.2)
        await asyncio.sleep(0.3)
        (second,) = await c.dequeue(visibility_timeout=0.2)
        assert second.read_ct == 2
        await asyncio.sleep(0.3)  # visible again: only the exclusion keeps it out
        acked, claimed = await c.archive_and_dequeue([first], limit=5)
        assert acked == [False] and claimed == []
        assert (await c.archive_and_dequeue([second]))[0] == [True]
    assert await archived(dsn) == [(mid, 2)]


async def test_grouped_acks_hand_over_and_the_next_of_the_group_is_claimed(
        dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer, Consumer(dsn, queue, "c", 2) as c:
        g1, g2 = await producer.enqueue_batch([{"g": 1}, {"g": 2}], group="order-1")
        free = await producer.enqueue({"free": True})
        got = await c.dequeue(10)
        assert sorted(m.id for m in got) == [g1, free]  # g2 waits behind its head
        acked, claimed = await c.archive_and_dequeue(got, limit=10)
        assert acked == [True, True]
        assert [m.id for m in claimed] == [g2]
        assert (await c.archive_and_dequeue(claimed, limit=10)) == ([True], [])
    assert await archived(dsn) == [(g1, 1), (g2, 1), (free, 1)]
    assert await sql(dsn, "SELECT * FROM pgqrs_groups WHERE live > 0") == []


async def test_a_paused_queue_takes_the_acks_and_claims_nothing(dsn: str, queue: str) -> None:
    async with (Admin(dsn) as admin, Producer(dsn, queue, "p", 1) as producer,
                Consumer(dsn, queue, "c", 2) as c):
        ids = await producer.enqueue_batch([{"i": i} for i in range(3)])
        got = await c.dequeue(1)
        await admin.pause_queue(queue)
        acked, claimed = await c.archive_and_dequeue(got, limit=10)
        assert acked == [True] and claimed == []
        await admin.resume_queue(queue)
        acked, claimed = await c.archive_and_dequeue([], limit=10)
        assert [m.id for m in claimed] == ids[1:]
        await c.archive_batch(claimed)
    assert await archived(dsn) == [(i, 1) for i in ids]


async def test_waiting_commits_the_acks_first(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer, Consumer(dsn, queue, "c", 2) as c:
        first = await producer.enqueue({"n": 1})
        got = await c.dequeue()
        call = asyncio.create_task(c.archive_and_dequeue(got, limit=1, wait=5))
        async with asyncio.timeout(3):
            while await archived(dsn) != [(first, 1)]:
                await asyncio.sleep(0.02)
        assert not call.done()  # still waiting for a message, its ack already committed
        second = await producer.enqueue({"n": 2})
        acked, claimed = await asyncio.wait_for(call, 3)
        assert acked == [True] and [m.id for m in claimed] == [second]
        await c.archive(claimed[0])


async def test_bad_input_and_refusals_change_nothing(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer, Consumer(dsn, queue, "c", 2) as c:
        await producer.enqueue_batch([{"i": i} for i in range(2)])
        got = await c.dequeue(1)
        bad: list[tuple[Any, dict[str, Any]]] = [
            ("nope", {}), ([got[0], "x"], {}), ([0], {}), (got, {"limit": 0}),
            (got, {"limit": True}), (got, {"wait": -1}), (got, {"visibility_timeout": 0}),
        ]
        for done, options in bad:
            with pytest.raises(ValidationError):
                await c.archive_and_dequeue(done, **options)
            with pytest.raises(ValidationError):
                await c.delete_and_dequeue(done, **options)
        await c.suspend()
        with pytest.raises(StateError):
            await c.archive_and_dequeue(got, limit=1)
        # Nothing archived, nothing claimed: the consumer still holds exactly its one.
        assert await archived(dsn) == []
        assert await c.held_count() == 1
        await c.resume()
        acked, claimed = await c.archive_and_dequeue(got, limit=5)
        assert acked == [True] and len(claimed) == 1
        await c.archive(claimed[0])


async def test_the_consume_loop_sends_its_acks_with_its_claims(dsn: str, queue: str) -> None:
    """One message at a time: each success rides on the next claim (one statement per
    message), and only the last ones are flushed on their own (going idle)."""
    async with Producer(dsn, queue, "p", 1) as producer:
        ids = await producer.enqueue_batch([{"i": i} for i in range(30)])
    calls = {"fused": 0, "alone": 0}
    async with Consumer(dsn, queue, "c", 2) as consumer:
        fused, alone = consumer.archive_and_dequeue, consumer.archive_batch

        async def archive_and_dequeue(done: Any, limit: int = 1,
                                      **kw: Any) -> tuple[list[bool], list[QueueMessage]]:
            calls["fused"] += 1
            return await fused(done, limit, **kw)

        async def archive_batch(done: Any) -> list[bool]:
            calls["alone"] += 1
            return await alone(done)

        consumer.archive_and_dequeue = archive_and_dequeue  # type: ignore[method-assign]
        consumer.archive_batch = archive_batch  # type: ignore[method-assign]
        done = await consumer.consume(lambda m: asyncio.sleep(0), batch_size=1,
                                      concurrency=1, stop_when_idle=True)
    assert done == 30
    assert calls["fused"] >= 28 and calls["alone"] <= 2, calls
    assert await archived(dsn) == [(i, 1) for i in ids]


async def test_a_suspended_loop_still_archives_what_its_handlers_finished(
        dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        (mid,) = await producer.enqueue_batch([{"n": 1}])
    release = asyncio.Event()
    started = asyncio.Event()

    async def handler(message: QueueMessage) -> None:
        started.set()
        await release.wait()

    async with Consumer(dsn, queue, "c", 2, poll_interval=0.05) as consumer:
        stop = asyncio.Event()
        loop = asyncio.create_task(consumer.consume(handler, stop=stop))
        await asyncio.wait_for(started.wait(), 5)
        await consumer.suspend()  # the loop's claims are refused from now on
        release.set()
        async with asyncio.timeout(5):  # archived while suspended, not at the resume
            while await archived(dsn) != [(mid, 1)]:
                await asyncio.sleep(0.02)
        assert not loop.done()
        await consumer.resume()
        stop.set()
        assert await asyncio.wait_for(loop, 10) == 1


async def test_a_failed_fused_claim_never_reports_archived_grouped_messages_abandoned(
        dsn: str, queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Grouped acks commit in a statement of their own: if the fused statement after it
    fails (the database went away), the loop must not queue them again, or the retry,
    refused by the fence, would report archived messages as abandoned."""
    async with Producer(dsn, queue, "p", 1) as producer:
        (grouped,) = await producer.enqueue_batch([{"g": 1}], group="order-1")
        plain = await producer.enqueue_batch([{"p": 1}, {"p": 2}])
    outcomes: dict[int, str] = {}
    async with Consumer(dsn, queue, "c", 2, poll_interval=0.05) as consumer:
        repository = consumer._messages  # the statement under the public method
        real = repository.ack_and_dequeue
        failures = []

        async def fails_once(*args: Any, **kwargs: Any) -> Any:
            if not failures:
                failures.append(kwargs.get("ids"))
                raise DatabaseError("Database error: connection reset (injected)")
            return await real(*args, **kwargs)

        monkeypatch.setattr(repository, "ack_and_dequeue", fails_once)
        done = await consumer.consume(
            lambda m: asyncio.sleep(0), batch_size=3, concurrency=3, stop_when_idle=True,
            on_settled=lambda e: outcomes.__setitem__(e.message.id, str(e.outcome)))
    assert failures, "the injected failure never happened"
    assert done == 3
    assert outcomes == {i: "succeeded" for i in (grouped, *plain)}
    assert await archived(dsn) == [(i, 1) for i in sorted((grouped, *plain))]
