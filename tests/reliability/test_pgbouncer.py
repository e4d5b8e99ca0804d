"""Scenario 5: pgqrs behind pgbouncer in transaction-pooling mode (``pgbouncer=True``).

The ``pgbouncer`` fixture runs Debian's pgbouncer (``apt-get install -y pgbouncer``) as an
unprivileged user with ``pool_mode = transaction`` and ``default_pool_size = 3`` in front
of the session's server, so many pgqrs clients share three server connections. The whole
public API runs through it, in ``public`` and in another schema, next to a client that
poisons the shared server connections' ``search_path``; ``dequeue(wait=...)`` polls.

Without pgbouncer on ``PATH`` these tests skip with that install command as the reason; with
``CI`` set they fail instead (``tests/_programs.py``). ``pgbouncer`` comes before
``server_dsn`` in the tests' arguments so that a missing pgbouncer starts no server.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from pgqrs import (
    Admin,
    Consumer,
    PgqrsError,
    Producer,
    QueueNotFoundError,
    StateError,
    WorkerStatus,
)

from .support import Bouncer, connect, execute, find_pgbouncer, scalar, sql, with_netloc

OPTS: dict[str, Any] = {"pgbouncer": True}


@pytest.mark.timeout(10)
def test_pgbouncer_is_installed() -> None:
    """Names the command to run when pgbouncer is missing: skipped locally, failed in CI."""
    assert os.access(find_pgbouncer(), os.X_OK)


async def fresh_database(server_dsn: str, name: str) -> str:
    await sql(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await sql(server_dsn, f'CREATE DATABASE "{name}"')
    return with_netloc(server_dsn, database=name)


async def poison_search_path(bouncer_dsn: str) -> None:
    """Leave ``search_path = rogue`` on pgbouncer's server connections (session state
    leaks between clients in transaction mode), with decoy tables named like pgqrs's."""
    conns = [await connect(bouncer_dsn) for _ in range(6)]
    try:
        for _ in range(5):
            await asyncio.gather(*(c.execute("SET search_path = rogue") for c in conns))
    finally:
        for c in conns:
            await c.close()


@pytest.mark.timeout(120)
async def test_public_api_through_pgbouncer(pgbouncer: Bouncer, server_dsn: str) -> None:
    direct = await fresh_database(server_dsn, "pgqrs_bouncer_api")
    dsn = pgbouncer.dsn_for(direct)
    try:
        async with Admin(dsn, max_read_ct=2, **OPTS) as admin:
            await admin.install()  # Alembic, through the pooler
            await admin.install()  # idempotent
            revision = await admin.verify()
            await execute(direct, "CREATE SCHEMA rogue; "
                          "CREATE TABLE rogue.pgqrs_messages (LIKE public.pgqrs_messages); "
                          "CREATE TABLE rogue.pgqrs_queues (LIKE public.pgqrs_queues); "
                          "CREATE TABLE rogue.pgqrs_workers (LIKE public.pgqrs_workers); "
                          "CREATE TABLE rogue.pgqrs_archive (LIKE public.pgqrs_archive)")
            await poison_search_path(dsn)
            await admin.ping()
            await admin.create_queue("tasks")
            await admin.create_queue("other")
            assert [q.queue_name for q in await admin.list_queues()] == ["tasks", "other"]
            assert (await admin.get_queue("tasks")).queue_name == "tasks"
            with pytest.raises(QueueNotFoundError):
                await admin.get_queue("nope")

            async with Producer(dsn, "tasks", "bp", 1, **OPTS) as producer, \
                    Consumer(dsn, "tasks", "bc", 2, visibility_timeout=30, max_read_ct=2,
                             poll_interval=0.1, **OPTS) as consumer:
                one = await producer.enqueue({"k": 1})
                batch = await producer.enqueue_batch([{"k": i} for i in range(2, 12)])
                await producer.enqueue_delayed({"k": "later"}, 0.3)
                assert await producer.status() is WorkerStatus.READY
                assert await producer.is_healthy(60)
                await producer.heartbeat()
                await producer.suspend()
                await producer.resume()

                got = await consumer.dequeue(3)
                assert [m.id for m in got] == [one, *batch[:2]]
                assert await consumer.held_count() == 3
                assert await consumer.archive(one) is True
                assert await consumer.delete(batch[0]) is True
                assert await consumer.extend_visibility(batch[1], 60) is True
                assert await consumer.release([batch[1]]) == 1
                got = await consumer.dequeue_batch(4)
                # Oldest visible first: the released one became visible last.
                assert [m.id for m in got] == batch[2:6]
                assert await consumer.archive_batch([m.id for m in got]) == [True] * 4
                got = await consumer.dequeue_batch_with_delay(2, 5)
                assert await consumer.delete_batch([m.id for m in got]) == [True, True]

                metrics = await admin.queue_metrics("tasks")
                assert metrics.total_messages == 4 and metrics.archived_messages == 5
                assert {m.queue_name for m in await admin.all_queues_metrics()} == {"tasks",
                                                                                   "other"}
                stats = await admin.system_stats()
                assert stats.total_queues == 2 and stats.schema_revision == revision
                assert (await admin.worker_health_stats(60))[0].ready_workers == 2
                assert await admin.worker_health_stats(60, group_by_queue=True)

                # A failing message becomes a dead letter, is archived dead and replayed.
                async def fail(message: Any) -> None:
                    raise RuntimeError("boom")

                await asyncio.sleep(0.3)  # the delayed message is due
                while (await admin.queue_metrics("tasks")).total_messages:
                    assert await consumer.consume(fail, poll_interval=0.05, backoff_base=0.01,
                                                  stop_when_idle=True) == 0
                    await asyncio.sleep(0.02)
                archive = await admin.get_archive()
                assert await archive.dlq_count() == 4
                dead = await archive.list_dlq_messages()
                new_id = await admin.replay_dlq(dead[0].id)
                assert new_id is not None

                async def ok(message: Any) -> None:
                    return None

                assert await consumer.consume(ok, poll_interval=0.05,
                                              stop_when_idle=True) == 1
                # Exhausted but not yet archived: dlq() picks it up.
                await producer.enqueue({"k": "dlq"})
                for _ in range(2):
                    (_m,) = await consumer.dequeue(1, visibility_timeout=0.05)
                    await asyncio.sleep(0.1)
                assert len(await admin.dlq("tasks")) == 1

                messages = await admin.get_messages()
                workers = await admin.get_workers()
                queues = await admin.get_queues()
                assert await messages.count() == 0 and await queues.count() == 2
                assert await workers.count("tasks") == 2
                assert len(await workers.list(queue="tasks")) == 2
                assert (await workers.get(consumer.worker_id or 0)).hostname == "bc"
                assert await archive.count() == 10
                assert len(await archive.list(limit=5)) == 5
                assert await archive.count_by_worker(consumer.worker_id or 0) >= 1
                worker_id = consumer.worker_id or 0
                assert await admin.get_worker_messages(worker_id) == []
                assert await admin.release_worker_messages(worker_id) == 0
                waiting = await producer.enqueue({"k": "suspended"})
                await admin.set_worker_status(worker_id, WorkerStatus.SUSPENDED)
                assert await consumer.dequeue(1) == []  # noticed at once, via the pooler
                assert await consumer.status() is WorkerStatus.SUSPENDED
                with pytest.raises(StateError):
                    await consumer.dequeue(1)
                await admin.set_worker_status(worker_id, WorkerStatus.READY)
                assert await consumer.status() is WorkerStatus.READY
                (m,) = await consumer.dequeue(1)
                assert m.id == waiting and await consumer.archive(m.id)
                assert await admin.reclaim_messages("tasks", older_than=3600) == 0

            assert await admin.purge_queue("tasks") == 11
            assert await admin.purge_old_workers(0) == 2  # both stopped on leaving
            await admin.delete_queue("tasks")
        # Nothing ever landed in the decoy tables that the poisoned search_path points at.
        for table in ("pgqrs_messages", "pgqrs_queues", "pgqrs_workers", "pgqrs_archive"):
            assert await scalar(direct, f"SELECT count(*) FROM rogue.{table}") == 0
    finally:
        await sql(server_dsn, 'DROP DATABASE IF EXISTS "pgqrs_bouncer_api" WITH (FORCE)')


@pytest.mark.timeout(60)
async def test_wait_falls_back_to_polling(pgbouncer: Bouncer, server_dsn: str) -> None:
    direct = await fresh_database(server_dsn, "pgqrs_bouncer_wait")
    dsn = pgbouncer.dsn_for(direct)
    try:
        async with Admin(dsn, **OPTS) as admin:
            await admin.install()
            await admin.create_queue("tasks")
        async with Producer(dsn, "tasks", "wp", 1, **OPTS) as producer, \
                Consumer(dsn, "tasks", "wc", 2, poll_interval=0.2, **OPTS) as consumer:
            began = time.monotonic()
            assert await consumer.dequeue(1, wait=0.5) == []
            assert 0.45 <= time.monotonic() - began < 3

            async def later() -> int:
                await asyncio.sleep(0.5)
                return await producer.enqueue({"late": True})

            began = time.monotonic()
            task = asyncio.create_task(later())
            got = await consumer.dequeue(1, wait=5)
            took = time.monotonic() - began
            assert [m.id for m in got] == [await task]
            assert took < 2.0, f"the poll did not pick the message up in time ({took:.2f}s)"
            # No LISTEN was attempted through the pooler.
            listening = await sql(direct, "SELECT 1 FROM pg_stat_activity WHERE query "
                                          "ILIKE 'LISTEN%'")
            assert listening == []

            handled: list[int] = []

            async def handler(message: Any) -> None:
                handled.append(message.id)

            stop = asyncio.Event()
            loop = asyncio.create_task(consumer.consume(handler, poll_interval=0.1,
                                                        stop=stop))
            await asyncio.sleep(0.3)  # idle, polling
            mid = await producer.enqueue({"x": 1})
            for _ in range(40):
                if handled:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(loop, 10)
            assert handled == [mid]
    finally:
        await sql(server_dsn, 'DROP DATABASE IF EXISTS "pgqrs_bouncer_wait" WITH (FORCE)')


@pytest.mark.timeout(120)
async def test_many_clients_share_three_server_connections(pgbouncer: Bouncer,
                                                           server_dsn: str) -> None:
    direct = await fresh_database(server_dsn, "pgqrs_bouncer_load")
    dsn = pgbouncer.dsn_for(direct)
    per_producer, producers, consumers = 500, 4, 4
    try:
        async with Admin(dsn, **OPTS) as admin:
            await admin.install()
            await admin.create_queue("tasks")
        async with Admin(dsn, schema="jobs", **OPTS) as admin:
            await admin.install()
            await admin.create_queue("tasks")
        peak = 0
        stop_watch = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while not stop_watch.is_set():
                n = await scalar(direct, "SELECT count(*) FROM pg_stat_activity WHERE "
                                         "datname = current_database() AND "
                                         "application_name <> 'pgqrs-reliability-test'")
                peak = max(peak, int(n))
                await asyncio.sleep(0.05)

        async def produce(schema: str, i: int) -> list[int]:
            async with Producer(dsn, "tasks", f"p-{schema}", i, schema=schema,
                                **OPTS) as producer:
                ids: list[int] = []
                for start in range(0, per_producer, 50):
                    ids += await producer.enqueue_batch(
                        [{"s": schema, "n": n} for n in range(start, start + 50)])
                    await producer.enqueue({"s": schema, "single": start})
                    ids.append(-1)
                return ids

        async def consume(schema: str, i: int, stop: asyncio.Event) -> list[int]:
            seen: list[int] = []

            async def handler(message: Any) -> None:
                assert message.payload["s"] == schema
                seen.append(message.id)

            async with Consumer(dsn, "tasks", f"c-{schema}", 100 + i, schema=schema,
                                poll_interval=0.05, **OPTS) as consumer:
                await consumer.consume(handler, batch_size=10, concurrency=10,
                                       poll_interval=0.05, stop=stop)
            return seen

        watcher = asyncio.create_task(watch())
        stops = {s: asyncio.Event() for s in ("public", "jobs")}
        consumer_tasks = [asyncio.create_task(consume(s, i, stops[s]))
                          for s in stops for i in range(consumers)]
        produced = await asyncio.gather(*(produce(s, i) for s in stops
                                          for i in range(producers)))
        total_per_schema = producers * (per_producer + per_producer // 50)
        for schema in stops:
            table = f"{schema}.pgqrs_archive"
            deadline = time.monotonic() + 60
            while await scalar(direct, f"SELECT count(*) FROM {table}") < total_per_schema:
                assert time.monotonic() < deadline, f"{schema}: not everything was consumed"
                await asyncio.sleep(0.1)
            stops[schema].set()
        seen = await asyncio.gather(*consumer_tasks)
        stop_watch.set()
        await watcher
        assert sum(len(p) for p in produced) == 2 * total_per_schema
        for schema in stops:
            rows = await sql(direct, f"SELECT original_msg_id FROM {schema}.pgqrs_archive")
            ids = [r[0] for r in rows]
            assert len(ids) == len(set(ids)) == total_per_schema
        assert sum(len(s) for s in seen) == 2 * total_per_schema
        # 16 clients with their own pools, never more than pgbouncer's 3 server connections.
        assert 1 <= peak <= 3, peak
        print(f"\npgbouncer: clients=16 messages={2 * total_per_schema} "
              f"server_connections_peak={peak}")
    finally:
        await sql(server_dsn, 'DROP DATABASE IF EXISTS "pgqrs_bouncer_load" WITH (FORCE)')


@pytest.mark.timeout(60)
async def test_cli_through_pgbouncer(pgbouncer: Bouncer, server_dsn: str) -> None:
    direct = await fresh_database(server_dsn, "pgqrs_bouncer_cli")
    dsn = pgbouncer.dsn_for(direct)
    env = {**os.environ, "PGQRS_PGBOUNCER": "1", "PGQRS_DSN": dsn}
    pgqrs = [sys.executable, "-m", "pgqrs"]

    def run(*args: str) -> str:
        out = subprocess.run([*pgqrs, *args], env=env, capture_output=True, text=True,
                             timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout

    try:
        await asyncio.to_thread(run, "install")
        await asyncio.to_thread(run, "queue", "create", "tasks")
        await asyncio.to_thread(run, "message", "enqueue", "tasks", '{"a": 1}')
        assert "1" in await asyncio.to_thread(run, "message", "count", "tasks")
        assert "tasks" in await asyncio.to_thread(run, "queue", "list")
        await asyncio.to_thread(run, "stats")
    finally:
        await sql(server_dsn, 'DROP DATABASE IF EXISTS "pgqrs_bouncer_cli" WITH (FORCE)')


@pytest.mark.timeout(30)
def test_pgbouncer_errors_are_typed(pgbouncer: Bouncer) -> None:
    """A database pgbouncer cannot reach: a pgqrs error, not a driver exception."""
    dsn = f"postgresql://postgres@127.0.0.1:{pgbouncer.port}/pgqrs_no_such_database"

    async def go() -> None:
        async with Admin(dsn, connect_timeout=5, **OPTS) as admin:
            with pytest.raises(PgqrsError):
                await admin.ping()

    asyncio.run(go())
