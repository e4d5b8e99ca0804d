"""The queue-state exporter: a scrape of known contents returns exactly those numbers."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from sqlalchemy.ext.asyncio import create_async_engine

from pgqrs import Admin, ConfigurationError, Consumer, Producer, ValidationError
from pgqrs.prometheus import QueueCollector, asgi_app, serve

from .prom import exporter, parse, queue_values, scrape, value, workers


@dataclasses.dataclass
class Known:
    """What the ``known`` fixture put in the database."""

    pending: int = 3
    leased: int = 3
    delayed: int = 3  # two delayed enqueues and one retry waiting out its backoff
    dead: int = 1
    archived: int = 7  # six successes and one dead letter moved by Admin.dlq()
    oldest_pending_age: float = 3600.0  # set back by an hour, below
    workers: tuple[int, int, int] = (3, 1, 1)  # ready, suspended, stopped
    stale: int = 1
    max_read_ct: int = 3  # the queue's own threshold decides what counts as dead


async def _exhaust(consumer: Consumer, message_id: int) -> None:
    """Deliver a message until it has used the queue's deliveries, leaving its lease over."""
    for _ in range(Known.max_read_ct):
        (claimed,) = await consumer.dequeue(visibility_timeout=0.05)
        assert claimed.id == message_id
        await asyncio.sleep(0.1)


@pytest.fixture
async def known(dsn: str) -> AsyncIterator[Known]:
    """Queue ``jobs`` with messages and workers in every state; queue ``idle`` empty and
    paused."""
    async with Admin(dsn) as admin:
        await admin.create_queue("jobs", max_read_ct=Known.max_read_ct)
        await admin.create_queue("idle")
        await admin.pause_queue("idle")
        async with (Producer(dsn, "jobs", "producer", 1) as producer,
                    Consumer(dsn, "jobs", "consumer", 1) as consumer,
                    Consumer(dsn, "jobs", "suspended", 1) as suspended):
            # Six processed (archived), one dead-lettered then moved to the archive.
            await producer.enqueue_batch([{"done": i} for i in range(6)])
            for message in await consumer.dequeue(limit=6, visibility_timeout=3600):
                assert await consumer.archive(message.id)
            await _exhaust(consumer, await producer.enqueue({"doomed": 1}))
            assert len(await admin.dlq("jobs")) == 1
            # One dead letter left in the live queue.
            await _exhaust(consumer, await producer.enqueue({"doomed": 2}))
            # Seven visible: four claimed under a long lease, one of them given back with a
            # backoff (delayed), three left pending.
            ids = await producer.enqueue_batch([{"work": i} for i in range(7)])
            claimed = await consumer.dequeue(limit=4, visibility_timeout=3600)
            assert [m.id for m in claimed] == ids[:4]
            assert await consumer.release([claimed[0].id], delay=3600) == 1
            await producer.enqueue_batch([{"later": i} for i in range(2)], delay=3600)
            # Workers: producer, consumer and a crashed one ready; one suspended; one stopped.
            await suspended.suspend()
            async with Consumer(dsn, "jobs", "finished", 1) as finished:
                await finished.status()  # registers; closing marks it stopped
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(
                    "INSERT INTO pgqrs_workers (hostname, port, queue_id, status, heartbeat_at)"
                    " SELECT 'crashed', 1, id, 'ready', now() - interval '1 hour'"
                    " FROM pgqrs_queues WHERE queue_name = 'jobs'")
                # The pending messages have waited an hour (the age is then deterministic).
                await conn.execute("UPDATE pgqrs_messages SET vt = vt - interval '1 hour'"
                                   " WHERE id = ANY($1::bigint[])", ids[4:])
            finally:
                await conn.close()
            yield Known()


def _check(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], known: Known) -> None:
    jobs = queue_values(samples, "jobs")
    age = jobs.pop("queue_oldest_pending_age_seconds")
    assert jobs == {
        "messages_pending": known.pending, "messages_leased": known.leased,
        "messages_delayed": known.delayed, "messages_dead": known.dead,
        "messages_archived": known.archived, "workers_stale": known.stale,
        "queue_paused": 0,
    }
    assert known.oldest_pending_age <= age < known.oldest_pending_age + 60
    ready, suspended, stopped = known.workers
    assert workers(samples, "jobs") == {"ready": ready, "suspended": suspended,
                                        "stopped": stopped}
    # An empty queue is exported too, all zeros but its paused flag: its series never vanish.
    idle = queue_values(samples, "idle")
    assert idle.pop("queue_paused") == 1
    assert set(idle.values()) == {0.0}
    assert workers(samples, "idle") == {"ready": 0, "suspended": 0, "stopped": 0}
    assert value(samples, "pgqrs_schema_info", revision=_head()) == 1
    assert value(samples, "pgqrs_up") == 1


def _head() -> str:
    from pgqrs import migrate

    return migrate.head_revision()


async def test_exporter_process_scrape_returns_the_known_counts(dsn: str, known: Known,
                                                                 ) -> None:
    # The flag of 0.1 is still accepted, and ignored: the queue's threshold (3) decides.
    with exporter(dsn, "--max-read-ct", "9") as running:
        url = running.url
        samples, text = await scrape(url)
        _check(samples, known)
        assert "# TYPE pgqrs_messages_pending gauge" in text
        # A second scrape reads again: a message archived in between shows at once.
        async with Consumer(dsn, "jobs", "late", 1) as late:
            (message,) = await late.dequeue()
            assert await late.archive(message.id)
        samples, _ = await scrape(url)
        assert value(samples, "pgqrs_messages_pending", queue="jobs") == known.pending - 1
        assert value(samples, "pgqrs_messages_archived", queue="jobs") == known.archived + 1
    assert "--max-read-ct is deprecated and ignored" in running.stderr


async def test_asgi_app_on_the_host_engine_serves_the_same_counts(dsn: str, known: Known,
                                                                  ) -> None:
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        registry = CollectorRegistry()
        app = asgi_app(engine, registry=registry)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.get("/metrics")
            assert response.status_code == 200
            _check(parse(response.text), known)
            # prometheus_client's own filter still works through the wrapper.
            response = await client.get("/metrics", params={"name[]": "pgqrs_messages_dead"})
            assert parse(response.text) == {
                ("pgqrs_messages_dead", frozenset({("queue", "jobs")})): 1.0,
                ("pgqrs_messages_dead", frozenset({("queue", "idle")})): 0.0}
        # A registry holds one queue-state collector.
        with pytest.raises(ValueError, match="Duplicated"):
            asgi_app(engine, registry=registry)
    finally:
        await engine.dispose()  # the host's engine: pgqrs never disposed it


async def test_collector_read_synchronously_inside_a_running_loop(dsn: str, known: Known,
                                                                  ) -> None:
    # A sync exposition (generate_latest) called from async code cannot await the running
    # loop: the collector reads on a loop of its own in a helper thread.
    registry = CollectorRegistry()
    registry.register(QueueCollector(dsn))
    _check(parse(generate_latest(registry).decode()), known)


async def test_archive_count_is_exact_below_the_limit_and_estimated_above(dsn: str) -> None:
    async with Admin(dsn) as admin:
        for name in ("big", "medium", "small"):
            await admin.create_queue(name)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("""
            INSERT INTO pgqrs_archive (original_msg_id, queue_id, payload, enqueued_at, read_ct)
            SELECT g, q.id, '{}', now(), 1
            FROM pgqrs_queues q,
                 generate_series(1, CASE q.queue_name WHEN 'big' THEN 400
                                                      WHEN 'medium' THEN 200 ELSE 30 END) g""")
        collector = QueueCollector(dsn, archive_exact_limit=100)
        # Never analysed: nothing to estimate from, so every queue is counted.
        before = {q.queue_name: (q.archived, q.archived_estimated)
                  for q in (await collector.snapshot()).queues}
        assert before == {"big": (400, False), "medium": (200, False), "small": (30, False)}
        await conn.execute("ANALYZE pgqrs_archive")
        # Analysed (the sample is the whole table here, so the estimate is exact): queues
        # at the limit are estimated from the statistics, the small one still counted.
        after = {q.queue_name: (q.archived, q.archived_estimated)
                 for q in (await collector.snapshot()).queues}
        assert after == {"big": (400, True), "medium": (200, True), "small": (30, False)}
        # The statement reads at most the limit's worth of index entries per queue.
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) "
            "SELECT count(*) FROM (SELECT 1 FROM pgqrs_archive WHERE queue_id = "
            "(SELECT id FROM pgqrs_queues WHERE queue_name = 'big') LIMIT 100) t"))
        assert "rows=100" in plan, plan
        await collector.close()
    finally:
        await conn.close()


async def test_unreadable_database_reports_pgqrs_up_0_and_recovers(empty_dsn: str) -> None:
    # No schema yet: the exporter starts anyway, says why on stderr, serves pgqrs_up 0...
    with exporter(empty_dsn) as running:
        url = running.url
        samples, _ = await scrape(url)
        assert value(samples, "pgqrs_up") == 0
        assert not any(name.startswith("pgqrs_messages") for name, _ in samples)
        # ... and recovers by itself once the database is there.
        async with Admin(empty_dsn) as admin:
            await admin.install()
            await admin.create_queue("late")
        samples, _ = await scrape(url)
        assert value(samples, "pgqrs_up") == 1
        assert value(samples, "pgqrs_messages_pending", queue="late") == 0
    err = running.stderr
    assert "cannot read the queue state yet" in err and "pgqrs install" in err, err


async def test_collector_on_a_host_engine_outside_its_loop_says_so(
        dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    registry = CollectorRegistry()
    registry.register(QueueCollector(engine))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        with caplog.at_level(logging.ERROR, logger="pgqrs"):
            samples, _ = await scrape(f"http://127.0.0.1:{server.server_port}/metrics")
        assert value(samples, "pgqrs_up") == 0
        assert "asgi_app(engine)" in caplog.text
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        await engine.dispose()


async def test_serve_in_process_and_bad_arguments(dsn: str) -> None:
    running = serve(dsn, port=0)
    try:
        samples, _ = await scrape(running.url)
        assert value(samples, "pgqrs_up") == 1
        # The port is taken: a pgqrs error naming the address, not a bare OSError.
        with pytest.raises(ConfigurationError, match=f"Cannot listen on 127.0.0.1:{running.port}"):
            serve(dsn, port=running.port)
    finally:
        running.stop()
        await running.collector.close()
    for bad in (-1, 65536, "9464", True):
        with pytest.raises(ConfigurationError, match="port"):
            serve(dsn, port=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="host"):
        serve(dsn, host="")
    with pytest.raises(ConfigurationError):
        QueueCollector(dsn, schema="no such schema")
    with pytest.raises(ValidationError):
        QueueCollector(dsn, archive_exact_limit=0)
    # The collector's own threshold is gone: each queue's decides (a warning says so).
    with pytest.warns(DeprecationWarning, match="each queue's own max_read_ct"):
        await QueueCollector(dsn, max_read_ct=2).close()
    with pytest.raises(ConfigurationError):
        QueueCollector("mysql://localhost/db")
