from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _sql import sql

from pgqrs import (
    Admin,
    Consumer,
    DatabaseUnavailableError,
    Producer,
    QueueInUseError,
    QueueMessage,
    StateError,
    WorkerAlreadyExistsError,
    WorkerStatus,
)

WORKER_PROC = Path(__file__).with_name("worker_proc.py")



async def test_live_duplicate_is_refused_and_stopped_row_is_taken_over(dsn: str,
                                                                      queue: str) -> None:
    first = Producer(dsn, queue, "host-a", 7000)
    first_id = await first.register()
    second = Producer(dsn, queue, "host-a", 7000)
    with pytest.raises(WorkerAlreadyExistsError, match=r"\('host-a', 7000\)"):
        await second.register()
    # A consumer may share the host, not the port.
    async with Consumer(dsn, queue, "host-a", 7001) as consumer:
        assert await consumer.register() != first_id
    await first.close()
    assert await second.register() == first_id  # takes the stopped row over
    assert await second.status() is WorkerStatus.READY
    await second.close()


async def test_stale_row_is_taken_over_and_its_messages_released(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        await producer.enqueue_batch([{"i": i} for i in range(3)])
    crashed = Consumer(dsn, queue, "w", 9, heartbeat_interval=0.1)
    assert len(await crashed.dequeue(3)) == 3
    task = crashed._heartbeat_task  # simulate a crash: heartbeats stop, nothing is closed
    assert task is not None
    crashed._closed = True
    task.cancel()
    await asyncio.sleep(0.5)
    async with Consumer(dsn, queue, "w", 9, heartbeat_interval=0.1) as reborn:
        assert await reborn.register() == crashed.worker_id
        got = await reborn.dequeue(5)
        assert [m.read_ct for m in got] == [2, 2, 2]
    await crashed._db.dispose()


async def test_heartbeats_advance_then_stop_after_close(dsn: str, queue: str) -> None:
    consumer = Consumer(dsn, queue, "c", 1, heartbeat_interval=0.1)
    worker_id = await consumer.register()
    query = "SELECT heartbeat_at FROM pgqrs_workers WHERE id = $1"
    first = (await sql(dsn, query, worker_id))[0][0]
    await asyncio.sleep(0.35)
    second = (await sql(dsn, query, worker_id))[0][0]
    assert second > first
    assert await consumer.is_healthy(5) is True
    await consumer.close()
    assert consumer._heartbeat_task is None
    after = (await sql(dsn, query, worker_id))[0][0]
    await asyncio.sleep(0.3)
    assert (await sql(dsn, query, worker_id))[0][0] == after
    async with Admin(dsn) as admin:
        info = await admin.get_worker(worker_id)
        assert info.status is WorkerStatus.STOPPED and info.shutdown_at is not None


async def test_is_healthy_flips_when_heartbeats_stop(dsn: str, queue: str) -> None:
    consumer = Consumer(dsn, queue, "c", 1, heartbeat_interval=60)
    await consumer.register()
    assert await consumer.is_healthy(0.5)
    await asyncio.sleep(0.6)
    assert not await consumer.is_healthy(0.5)
    await consumer.heartbeat()
    assert await consumer.is_healthy(0.5)
    await consumer.close()


async def test_lifecycle_transitions(dsn: str, queue: str) -> None:
    async with Consumer(dsn, queue, "c", 1) as consumer:
        assert await consumer.status() is WorkerStatus.READY
        with pytest.raises(StateError, match="'ready' to 'ready'"):
            await consumer.resume()
        await consumer.suspend()
        assert await consumer.status() is WorkerStatus.SUSPENDED
        with pytest.raises(StateError, match="'suspended' to 'suspended'"):
            await consumer.suspend()
        await consumer.resume()
        await consumer.shutdown()
        assert await consumer.status() is WorkerStatus.STOPPED
        for action in (consumer.suspend, consumer.resume, consumer.shutdown):
            with pytest.raises(StateError) as info:
                await action()
            assert info.value.from_status == "stopped"
        with pytest.raises(StateError):
            await consumer.dequeue()


async def test_consumer_shutdown_refuses_while_holding_and_close_releases(dsn: str,
                                                                         queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        mid = await producer.enqueue({"x": 1})
    consumer = Consumer(dsn, queue, "c", 2)
    await consumer.dequeue()
    with pytest.raises(StateError, match="holds 1 message"):
        await consumer.shutdown()
    await consumer.close()
    async with Admin(dsn) as admin:
        message = await (await admin.get_messages()).get(mid)
        assert message is not None and message.consumer_worker_id is None


async def test_admin_suspends_a_worker_from_outside(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer, Consumer(dsn, queue, "c", 2) as c:
        await producer.enqueue({"x": 1})
        worker_id = await c.register()
        async with Admin(dsn) as admin:
            await admin.set_worker_status(worker_id, WorkerStatus.SUSPENDED)
            assert await c.dequeue() == []  # the claim itself checks the status
            await admin.set_worker_status(worker_id, WorkerStatus.READY)
        assert len(await c.dequeue()) == 1


async def test_admin_worker_operations(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        await producer.enqueue_batch([{"i": i} for i in range(4)])
    consumer = Consumer(dsn, queue, "c", 2)
    held = await consumer.dequeue(3)
    async with Admin(dsn) as admin:
        worker_id = consumer.worker_id
        assert worker_id is not None
        assert {m.id for m in await admin.get_worker_messages(worker_id)} == {m.id for m in held}
        (stats,) = await admin.worker_health_stats(stale_after=60)
        assert stats.ready_workers == 1 and stats.stopped_workers == 1
        with pytest.raises(QueueInUseError, match="in use"):
            await admin.delete_queue(queue)
        assert await admin.release_worker_messages(worker_id) == 3
        with pytest.raises(StateError, match="stop the worker first"):
            await admin.delete_worker(worker_id)
        await consumer.close()
        assert await admin.purge_queue(queue) == 4
        await admin.delete_queue(queue)  # stopped workers do not block it
        assert await (await admin.get_workers()).count() == 0


async def test_purge_old_workers(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        await producer.register()
    async with Admin(dsn) as admin:
        assert await admin.purge_old_workers(3600) == 0
        await asyncio.sleep(0.2)
        assert await admin.purge_old_workers(0.1) == 1


async def test_consume_archives_successes_and_dead_letters_failures(dsn: str, queue: str,
                                                                  admin: Admin) -> None:
    await admin.update_queue(queue, max_read_ct=3)  # the queue's threshold decides
    async with Producer(dsn, queue, "p", 1) as producer:
        await producer.enqueue_batch([{"i": i, "fail": i % 3 == 0} for i in range(12)])
    attempts: dict[int, list[float]] = {}

    async def handler(message: QueueMessage) -> None:
        attempts.setdefault(message.id, []).append(asyncio.get_running_loop().time())
        if message.payload["fail"]:
            raise ValueError("boom")

    async with Consumer(dsn, queue, "c", 2) as consumer:
        stop = asyncio.Event()

        async def stop_when_settled() -> None:
            while True:
                await asyncio.sleep(0.05)
                if all(len(v) == 3 for k, v in attempts.items() if len(v) and k % 3 == 1):
                    async with Admin(dsn) as admin:
                        if await (await admin.get_messages()).count() == 0:
                            stop.set()
                            return

        watcher = asyncio.create_task(stop_when_settled())
        done = await consumer.consume(handler, batch_size=4, concurrency=4, poll_interval=0.05,
                                      backoff_base=0.1, stop=stop)
        await watcher
    assert done == 8
    failing = [mid for mid, times in attempts.items() if len(times) > 1]
    assert len(failing) == 4
    for mid in failing:
        times = attempts[mid]
        assert len(times) == 3  # the queue's max_read_ct, then dead-lettered
        assert times[1] - times[0] >= 0.1 and times[2] - times[1] >= 0.2  # backoff doubles
    async with Admin(dsn) as admin:
        archive = await admin.get_archive()
        assert await archive.count(dead=False) == 8
        assert await archive.dlq_count() == 4


async def test_long_handler_gets_its_lease_extended(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        await producer.enqueue({"slow": True})

    async with Consumer(dsn, queue, "c", 2, visibility_timeout=0.4) as consumer, \
            Consumer(dsn, queue, "thief", 3) as thief:
        stolen: list[int] = []

        async def handler(message: QueueMessage) -> None:
            for _ in range(6):
                await asyncio.sleep(0.2)
                stolen.extend(m.id for m in await thief.dequeue())

        done = await consumer.consume(handler, poll_interval=0.05, stop_when_idle=True)
    assert done == 1 and stolen == []


def _spawn(mode: str, dsn: str, queue: str, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER_PROC), mode, dsn, queue, str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.timeout(60)
async def test_sigkilled_consumer_work_comes_back_exactly_once(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        await producer.enqueue_batch([{"i": i} for i in range(50)])
    proc = _spawn("hold", dsn, queue, 4242)
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    assert line.strip() == "HELD 10", proc.stderr.read() if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    await asyncio.sleep(0.8)  # its heartbeat goes stale
    async with Admin(dsn) as admin:
        assert await admin.reclaim_messages(queue, older_than=0.6) == 10
        (dead,) = [w for w in await (await admin.get_workers()).list() if w.port == 4242]
        assert dead.status is WorkerStatus.STOPPED

    async def handler(message: QueueMessage) -> None:
        return None

    async with Consumer(dsn, queue, "rescuer", 5) as rescuer:
        assert await rescuer.consume(handler, poll_interval=0.05, stop_when_idle=True) == 50
    rows = await sql(dsn, "SELECT original_msg_id, read_ct FROM pgqrs_archive")
    assert len(rows) == 50 and len({r[0] for r in rows}) == 50
    assert sorted(r[1] for r in rows).count(2) == 10
    async with Consumer(dsn, queue, "crashy", 4242) as restarted:
        assert await restarted.register() == dead.id  # takes its old row over


@pytest.mark.timeout(60)
async def test_sigterm_stops_gracefully_and_loses_nothing(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        await producer.enqueue_batch([{"i": i} for i in range(300)])
    proc = _spawn("consume", dsn, queue, 4343)
    assert proc.stdout is not None
    assert (await asyncio.to_thread(proc.stdout.readline)).strip() == "READY"
    await asyncio.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, err
    done = int(out.split()[1])
    assert 0 < done < 300
    archived = await sql(dsn, "SELECT original_msg_id FROM pgqrs_archive")
    live = await sql(dsn, "SELECT id, consumer_worker_id FROM pgqrs_messages")
    assert len(archived) == done and len({r[0] for r in archived}) == done
    assert len(archived) + len(live) == 300
    assert all(r[1] is None for r in live)  # nothing left leased to the stopped worker
    status = await sql(dsn, "SELECT status::text FROM pgqrs_workers WHERE port = 4343")
    assert status[0][0] == "stopped"


async def test_a_replaced_worker_learns_it_and_stops(dsn: str, queue: str) -> None:
    old = Consumer(dsn, queue, "same", 5, heartbeat_interval=60)
    worker_id = await old.register()
    await sql(dsn, "UPDATE pgqrs_workers SET heartbeat_at = now() - interval '1 hour'")
    async with Consumer(dsn, queue, "same", 5) as new:
        assert await new.register() == worker_id  # took the stale row over
        with pytest.raises(StateError, match="taken over by another process"):
            await old.heartbeat()
        with pytest.raises(StateError):
            await old.dequeue()
        assert await new.status() is WorkerStatus.READY
    await old._db.dispose()


async def test_consume_pauses_while_suspended_from_outside(dsn: str, queue: str) -> None:
    seen: list[int] = []

    async def handler(message: QueueMessage) -> None:
        seen.append(message.payload["i"])

    async with (Producer(dsn, queue, "p", 1) as producer,
                Consumer(dsn, queue, "c", 2, poll_interval=0.05) as consumer,
                Admin(dsn) as admin):
        stop = asyncio.Event()
        loop = asyncio.create_task(consumer.consume(handler, stop=stop))
        await producer.enqueue({"i": 1})
        while seen != [1]:
            await asyncio.sleep(0.02)
        worker_id = consumer.worker_id
        assert worker_id is not None
        await admin.set_worker_status(worker_id, WorkerStatus.SUSPENDED)
        await producer.enqueue({"i": 2})
        await asyncio.sleep(0.5)
        assert seen == [1] and not loop.done()  # paused, not dead
        await admin.set_worker_status(worker_id, WorkerStatus.READY)
        while seen != [1, 2]:
            await asyncio.sleep(0.02)
        stop.set()
        assert await asyncio.wait_for(loop, 10) == 2


async def test_consume_rides_out_killed_connections(dsn: str, queue: str) -> None:
    seen: list[int] = []

    async def handler(message: QueueMessage) -> None:
        seen.append(message.payload["i"])

    async with (Producer(dsn, queue, "p", 1) as producer,
                Consumer(dsn, queue, "c", 2, poll_interval=0.05) as consumer):
        stop = asyncio.Event()
        loop = asyncio.create_task(consumer.consume(handler, stop=stop))
        await producer.enqueue({"i": 1})
        while len(seen) < 1:
            await asyncio.sleep(0.02)
        await sql(dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        for i in range(2, 6):
            # The producer's held connection died too: if the driver has not noticed yet,
            # its next call fails once (never retried by pgqrs: a statement is never sent
            # twice), and the one after reconnects.
            try:
                await producer.enqueue({"i": i})
            except DatabaseUnavailableError:
                await producer.enqueue({"i": i})
        async with asyncio.timeout(20):
            while sorted(seen) != [1, 2, 3, 4, 5]:
                await asyncio.sleep(0.05)
        stop.set()
        assert await asyncio.wait_for(loop, 10) == 5  # the loop never died


async def test_stop_when_idle_waits_for_scheduled_retries(dsn: str, queue: str) -> None:
    async with Producer(dsn, queue, "p", 1) as producer:
        await producer.enqueue_batch([{"i": i} for i in range(3)])

    async def handler(message: QueueMessage) -> None:
        if message.read_ct == 1:
            raise RuntimeError("first attempt fails")

    async with Consumer(dsn, queue, "c", 2) as consumer:
        done = await consumer.consume(handler, backoff_base=0.3, poll_interval=0.05,
                                      stop_when_idle=True)
    assert done == 3


async def test_an_ack_queued_during_a_flush_is_not_left_behind(dsn: str, queue: str) -> None:
    """Regression: a handler finishing while the loop flushed acks (right before going
    idle) had its ack wait out the idle period, and the message was delivered again."""
    async with Producer(dsn, queue, "p", 1) as producer:
        first, second = await producer.enqueue_batch([{"n": 1}, {"n": 2}])
    flushing = asyncio.Event()

    async def handler(message: QueueMessage) -> None:
        if message.id == second:
            await flushing.wait()  # finish exactly while the first ack is being written

    async with Consumer(dsn, queue, "c", 2, visibility_timeout=60) as consumer:
        real_archive_batch = consumer.archive_batch

        async def archive_batch(ids: list[int]) -> list[bool]:
            flushing.set()
            await asyncio.sleep(0.05)  # the second handler completes meanwhile
            return await real_archive_batch(ids)

        consumer.archive_batch = archive_batch  # type: ignore[method-assign]
        stop = asyncio.Event()
        loop = asyncio.create_task(consumer.consume(handler, batch_size=10, concurrency=3,
                                                    poll_interval=0.05, stop=stop))
        async with asyncio.timeout(5):  # far less than the 60 s lease
            while await sql(dsn, "SELECT 1 FROM pgqrs_messages LIMIT 1"):
                await asyncio.sleep(0.05)
        stop.set()
        assert await asyncio.wait_for(loop, 10) == 2
    archived = await sql(dsn, "SELECT original_msg_id, read_ct FROM pgqrs_archive")
    assert sorted((r[0], r[1]) for r in archived) == [(first, 1), (second, 1)]
