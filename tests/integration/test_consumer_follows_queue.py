"""Consumers follow their queue's policy (SPEC §6, §12): lease, threshold, backoff, pause.

The queue row is the one place the rules live. A consumer's own ``visibility_timeout`` is
an override; its ``max_read_ct`` is only a check against the queue's; the consume loop
reads the threshold and the retry backoff when a handler fails, so ``update_queue``
reaches a running loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg
import pytest

import pgqrs
from pgqrs import (
    Admin,
    ConfigurationError,
    Consumer,
    Outcome,
    Producer,
    QueueMessage,
    Settled,
    ValidationError,
)


def lease_of(message: QueueMessage) -> float:
    assert message.vt is not None and message.dequeued_at is not None
    return (message.vt - message.dequeued_at).total_seconds()


async def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def worker_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pgqrs_workers"))
    finally:
        await conn.close()


# -- the lease ----------------------------------------------------------------------------


async def test_default_lease_is_the_queues_and_follows_changes(admin: Admin, dsn: str) -> None:
    await admin.create_queue("jobs", visibility_timeout=90)
    async with (Producer(dsn, "jobs", "p", 1) as producer,
                Consumer(dsn, "jobs", "c", 2) as consumer):
        assert consumer.visibility_timeout is None
        await producer.enqueue_batch([{"i": i} for i in range(3)])
        (first,) = await consumer.dequeue()
        assert lease_of(first) == pytest.approx(90)
        await admin.update_queue("jobs", visibility_timeout=45)
        (second,) = await consumer.dequeue()  # no restart: the next claim reads the row
        assert lease_of(second) == pytest.approx(45)
        (third,) = await consumer.dequeue(visibility_timeout=5)  # a per-call override
        assert lease_of(third) == pytest.approx(5)
    async with (Producer(dsn, "jobs", "p", 1) as producer,
                Consumer(dsn, "jobs", "c2", 2, visibility_timeout=7) as own):
        await producer.enqueue({"i": 3})
        (message,) = await own.dequeue()
        assert lease_of(message) == pytest.approx(7)  # the consumer's override


async def test_consume_extends_the_lease_the_message_got(admin: Admin, dsn: str) -> None:
    """The lease keeper uses each delivery's own lease (here the queue's 1 s), not 30 s."""
    await admin.create_queue("slow", visibility_timeout=1)
    async with Producer(dsn, "slow", "p", 1) as producer:
        mid = await producer.enqueue({"slow": True})
    events: list[Settled] = []

    async def handler(message: QueueMessage) -> None:
        await asyncio.sleep(2.5)  # 2.5 leases: lost without the keeper

    async with Consumer(dsn, "slow", "c", 2) as consumer:
        done = await consumer.consume(handler, poll_interval=0.05, stop_when_idle=True,
                                      on_settled=events.append)
    assert done == 1
    assert [(e.message.id, e.message.read_ct, e.outcome) for e in events] == [
        (mid, 1, Outcome.SUCCEEDED)]


# -- the threshold ------------------------------------------------------------------------


async def test_a_different_max_read_ct_is_refused_at_registration(admin: Admin,
                                                                  dsn: str) -> None:
    await admin.create_queue("jobs", max_read_ct=4)
    consumer = Consumer(dsn, "jobs", "c", 2, max_read_ct=3)  # constructing does no I/O
    with pytest.raises(ConfigurationError) as refused:
        await consumer.dequeue()
    text = str(refused.value)
    assert "max_read_ct=3" in text and "is 4" in text
    assert "Admin.update_queue('jobs', max_read_ct=3)" in text
    assert await worker_rows(dsn) == 0  # refused before registering
    await consumer.close()
    # Equal is accepted; and once the queue has changed the check is not repeated.
    async with Consumer(dsn, "jobs", "c", 3, max_read_ct=4) as same:
        assert await same.dequeue() == []
        await admin.update_queue("jobs", max_read_ct=2)
        assert await same.dequeue() == []
    with pytest.raises(ValidationError, match="max_read_ct"):
        Consumer(dsn, "jobs", "c", 2, max_read_ct=0)


async def test_compat_consumer_from_an_admin_follows_the_queue(dsn: str) -> None:
    """The original binding's ``Consumer(admin, ...)``: the Config's threshold is the
    default of the queues the Admin creates; an explicit, different one is refused."""
    config = pgqrs.Config.from_dsn(dsn)
    config.max_read_ct = 2
    async with Admin(config) as admin:
        await admin.create_queue("compat")
        assert (await admin.get_queue("compat")).max_read_ct == 2
        await admin.create_queue("other", max_read_ct=6)
        async with (pgqrs.Producer(admin, "other", "p", 1) as producer,
                    pgqrs.Consumer(admin, "other", "c", 1) as consumer):
            await producer.enqueue({"x": 1})
            for _ in range(6):  # the queue's 6, not the Config's 2
                (message,) = await consumer.dequeue()
                await consumer.release([message.id])
            assert await consumer.dequeue() == []
        mismatched = pgqrs.Consumer(admin, "compat", "c", 2, max_read_ct=5)
        with pytest.raises(ConfigurationError, match="update_queue"):
            await mismatched.dequeue()
        await mismatched.close()


# -- the consume loop follows the queue ----------------------------------------------------


async def test_consume_follows_threshold_and_backoff_changes_without_restart(
        admin: Admin, dsn: str) -> None:
    await admin.create_queue("jobs", max_read_ct=10, retry_backoff_base=0.05,
                             retry_backoff_max=0.05)
    async with Producer(dsn, "jobs", "p", 1) as producer:
        mid = await producer.enqueue({"poison": True})
    events: list[Settled] = []
    changed = asyncio.Event()

    async def handler(message: QueueMessage) -> None:
        raise ValueError(f"attempt {message.read_ct}")

    async def on_settled(event: Settled) -> None:
        events.append(event)
        if event.message.read_ct == 2:
            # Between two deliveries: a longer backoff, and only three deliveries in all.
            await admin.update_queue("jobs", max_read_ct=3, retry_backoff_base=0.2,
                                     retry_backoff_max=0.3)
            changed.set()

    async with Consumer(dsn, "jobs", "c", 2) as consumer:
        # The loop reads the policy on a failure at most once per poll interval (0.02 s),
        # shorter than the 0.05 s backoff between two deliveries.
        done = await consumer.consume(handler, poll_interval=0.02, stop_when_idle=True,
                                      on_settled=on_settled)
    assert done == 0 and changed.is_set()
    assert [(e.message.id, e.message.read_ct, e.outcome, e.delay) for e in events] == [
        (mid, 1, Outcome.RETRIED, 0.05),
        (mid, 2, Outcome.RETRIED, 0.05),
        (mid, 3, Outcome.DEAD_LETTERED, None),  # the new threshold, read on failure
    ]
    (dead,) = await (await admin.get_archive()).list_dlq_messages()
    assert (dead.original_msg_id, dead.read_ct) == (mid, 3)


@pytest.mark.parametrize(("base", "cap", "delays"), [
    (None, None, [0.1, 0.2, 0.25]),   # the queue's own backoff
    (0.02, None, [0.02, 0.04, 0.08]),  # base overridden, the queue's cap (0.25)
    (None, 0.15, [0.1, 0.15, 0.15]),   # the queue's base, cap overridden
])
async def test_backoff_overrides_fall_back_to_the_queue(
        admin: Admin, dsn: str, base: float | None, cap: float | None,
        delays: list[float]) -> None:
    await admin.create_queue("jobs", max_read_ct=4, retry_backoff_base=0.1,
                             retry_backoff_max=0.25)
    async with Producer(dsn, "jobs", "p", 1) as producer:
        await producer.enqueue({"poison": True})
    events: list[Settled] = []

    async def handler(message: QueueMessage) -> None:
        raise ValueError("never works")

    async with Consumer(dsn, "jobs", "c", 2) as consumer:
        await consumer.consume(handler, poll_interval=0.05, stop_when_idle=True,
                               backoff_base=base, backoff_max=cap, on_settled=events.append)
    assert [e.delay for e in events] == [*delays, None]
    assert events[-1].outcome is Outcome.DEAD_LETTERED
    with pytest.raises(ValidationError, match="backoff_base"):
        async with Consumer(dsn, "jobs", "c", 2) as consumer:
            await consumer.consume(handler, backoff_base=-1)


async def test_a_failure_storm_reads_the_policy_once_per_poll_interval(
        admin: Admin, dsn: str) -> None:
    await admin.create_queue("storm", max_read_ct=2, retry_backoff_base=0)
    async with Producer(dsn, "storm", "p", 1) as producer:
        await producer.enqueue_batch([{"i": i} for i in range(40)])
    events: list[Settled] = []

    async def handler(message: QueueMessage) -> None:
        raise ValueError("down")

    async with Consumer(dsn, "storm", "c", 2) as consumer:
        reads = 0
        read_policy = consumer.policy

        async def counted() -> pgqrs.QueuePolicy:
            nonlocal reads
            reads += 1
            return await read_policy()

        consumer.policy = counted  # type: ignore[method-assign]
        await consumer.consume(handler, batch_size=40, concurrency=40, poll_interval=10,
                               stop_when_idle=True, on_settled=events.append)
    outcomes = [e.outcome for e in events]
    assert (outcomes.count(Outcome.RETRIED), outcomes.count(Outcome.DEAD_LETTERED)) == (40, 40)
    assert reads == 1  # 80 failures within one poll interval: one primary-key lookup


async def test_pause_stops_a_running_loop_within_a_cycle_and_resume_restarts_it(
        admin: Admin, dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    """An idle loop waiting on NOTIFY: paused, it claims nothing (and logs nothing); the
    resume's NOTIFY wakes it at once, long before its 5 s safety re-check."""
    caplog.set_level(logging.WARNING, logger="pgqrs")
    await admin.create_queue("jobs")
    handled: list[tuple[int, float]] = []
    loop = asyncio.get_running_loop()

    async def handler(message: QueueMessage) -> None:
        handled.append((message.id, loop.time()))

    async with (Producer(dsn, "jobs", "p", 1) as producer,
                Consumer(dsn, "jobs", "c", 2, poll_interval=30) as consumer):
        stop = asyncio.Event()
        running = asyncio.create_task(consumer.consume(handler, stop=stop))
        first = await producer.enqueue({"before": True})
        await wait_until(lambda: len(handled) == 1)
        await admin.pause_queue("jobs")
        paused = await producer.enqueue_batch([{"i": i} for i in range(5)])
        await asyncio.sleep(1.5)  # the enqueues' NOTIFYs woke the loop: it claimed nothing
        assert [m for m, _ in handled] == [first] and not running.done()
        metrics = await admin.queue_metrics("jobs")
        assert (metrics.pending_messages, metrics.leased_messages) == (5, 0)
        resumed_at = loop.time()
        await admin.resume_queue("jobs")
        await wait_until(lambda: len(handled) == 6, timeout=3)
        assert [m for m, _ in handled[1:]] == paused
        assert handled[1][1] - resumed_at < 1.0  # woken by the NOTIFY, not by a re-check
        stop.set()
        assert await asyncio.wait_for(running, 10) == 6
    assert [r.getMessage() for r in caplog.records] == []
