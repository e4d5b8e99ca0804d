"""Retention, the maintenance lease and round, and recurring messages, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from _sql import sql

import pgqrs
from pgqrs import Admin, Consumer, Maintenance, Producer, ValidationError
from pgqrs import maintenance as maintenance_module


async def archive_rows(dsn: str, queue: str, ages_days: list[float], *,
                       dead: bool = False) -> None:
    """Archive rows of ``queue`` archived that many days ago."""
    await sql(dsn, """
        INSERT INTO pgqrs_archive (original_msg_id, queue_id, payload, enqueued_at, read_ct,
                                   archived_at, dead_letter)
        SELECT 0, q.id, '{}', now(), 1, now() - make_interval(secs => a * 86400), $3
        FROM pgqrs_queues q, unnest($2::float8[]) AS a WHERE q.queue_name = $1
    """, queue, ages_days, dead)


async def archived_ages(dsn: str, queue: str) -> list[int]:
    rows = await sql(dsn, """
        SELECT round(extract(epoch FROM now() - archived_at) / 86400)::int AS d
        FROM pgqrs_archive a JOIN pgqrs_queues q ON q.id = a.queue_id
        WHERE q.queue_name = $1 ORDER BY 1""", queue)
    return [r["d"] for r in rows]


# -- retention -------------------------------------------------------------------------------


async def test_purge_follows_each_queues_retention_and_keeps_forever_queues(
        admin: Admin, dsn: str) -> None:
    await admin.create_queue("week", retention=timedelta(days=7))
    await admin.create_queue("day", retention=86400)
    await admin.create_queue("forever")  # retention None
    for name in ("week", "day", "forever"):
        await archive_rows(dsn, name, [0, 2, 8, 30])
    async with Producer(admin, "week", "p", 1) as producer:
        live = await producer.enqueue({"live": True})

    assert await admin.purge_archive(dry_run=True) == 2 + 3
    assert await archived_ages(dsn, "week") == [0, 2, 8, 30]  # a dry run deletes nothing
    assert await admin.purge_archive() == 5
    assert await archived_ages(dsn, "week") == [0, 2]
    assert await archived_ages(dsn, "day") == [0]
    assert await archived_ages(dsn, "forever") == [0, 2, 8, 30]
    assert (await (await admin.get_messages()).get(live)) is not None  # live untouched
    assert await admin.purge_archive() == 0

    # An explicit age applies to every queue, forever ones included, or to one queue.
    assert await admin.purge_archive(queue="forever", older_than=timedelta(days=20)) == 1
    assert await admin.purge_archive(older_than=1.5 * 86400) == 3  # week: 2; forever: 2, 8
    assert await archived_ages(dsn, "forever") == [0]


async def test_purge_runs_in_batches_keeps_young_rows_and_can_spare_dead_letters(
        admin: Admin, dsn: str) -> None:
    await admin.create_queue("q")
    await archive_rows(dsn, "q", [10.0] * 250)
    await archive_rows(dsn, "q", [10.0] * 5, dead=True)
    await archive_rows(dsn, "q", [0.0] * 7)  # young: archived after the old ones
    await archive_rows(dsn, "q", [10.0] * 3)  # old, archived out of order
    totals: list[int] = []

    deleted = await admin.purge_archive(queue="q", older_than=86400, batch_size=100,
                                        dead_letters=False, on_batch=totals.append)
    assert deleted == 253
    assert totals == [100, 200, 253]  # one call per committed batch, a running total
    dead = await sql(dsn, "SELECT count(*) AS n FROM pgqrs_archive WHERE dead_letter")
    assert dead[0]["n"] == 5
    assert await admin.purge_archive(queue="q", older_than=86400) == 5
    assert await archived_ages(dsn, "q") == [0] * 7


async def test_purge_stops_at_a_window_of_young_rows(admin: Admin, dsn: str) -> None:
    await admin.create_queue("q")
    await archive_rows(dsn, "q", [10.0] * 10)
    await archive_rows(dsn, "q", [0.0] * 10)
    await archive_rows(dsn, "q", [10.0] * 2)  # beyond the young edge: left for later
    assert await admin.purge_archive(older_than=86400, batch_size=5, dry_run=True) == 12
    assert await admin.purge_archive(older_than=86400, batch_size=5) == 10
    assert await archived_ages(dsn, "q") == [0] * 10 + [10] * 2


async def test_purge_is_interruptible_between_batches(admin: Admin, dsn: str) -> None:
    await admin.create_queue("q")
    await archive_rows(dsn, "q", [3.0] * 500)
    seen: list[int] = []

    def stop_after_two(total: int) -> None:
        seen.append(total)
        if len(seen) == 2:
            raise KeyboardInterrupt  # what Ctrl-C does between two batches

    with pytest.raises(KeyboardInterrupt):
        await admin.purge_archive(older_than=86400, batch_size=100, on_batch=stop_after_two)
    assert len(await archived_ages(dsn, "q")) == 300  # two batches committed, the rest kept
    assert await admin.purge_archive(older_than=86400, batch_size=100) == 300


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"older_than": 0}, "older_than"), ({"older_than": -1}, "older_than"),
    ({"older_than": "7d"}, "older_than"), ({"older_than": float("nan")}, "older_than"),
    ({"batch_size": 0}, "batch_size"), ({"batch_size": True}, "batch_size"),
    ({"queue": ""}, "Queue name"),
])
async def test_purge_validates_its_options(admin: Admin, kwargs: dict[str, object],
                                           match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        await admin.purge_archive(**kwargs)  # type: ignore[arg-type]


async def test_purge_of_an_unknown_queue(admin: Admin) -> None:
    with pytest.raises(pgqrs.QueueNotFoundError):
        await admin.purge_archive(queue="nope")


def purge_sql() -> str:
    from sqlalchemy.dialects import postgresql

    from pgqrs.repositories import archive

    compiled = archive._PURGE_BATCH.compile(dialect=postgresql.dialect())
    params = {"p_queue_id": 1, "p_after": 0, "p_limit": 1000, "p_dead": True,
              "p_cutoff": "now()"}
    text = str(compiled)
    for name, value in params.items():
        text = text.replace(f"%({name})s", str(value))
    return text


def test_the_purge_batch_walks_the_queue_index(dsn: str) -> None:
    async def plan() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SET enable_seqscan = off")  # a tiny table: ask what it can
            rows = await conn.fetch("EXPLAIN " + purge_sql())
            return "\n".join(r[0] for r in rows)
        finally:
            await conn.close()

    text = asyncio.run(plan())
    assert "ix_pgqrs_archive_queue_id_id" in text, text


# -- counts that stay cheap ------------------------------------------------------------------


async def test_archive_counts_are_exact_below_the_limit(admin: Admin, dsn: str) -> None:
    await admin.create_queue("a")
    await admin.create_queue("b")
    await archive_rows(dsn, "a", [1.0] * 30)
    await archive_rows(dsn, "b", [1.0] * 12)
    assert (await admin.queue_metrics("a")).archived_messages == 30
    assert [m.archived_messages for m in await admin.all_queues_metrics()] == [30, 12]
    assert (await admin.system_stats()).archived_messages == 42


async def test_archive_counts_are_estimated_above_the_limit(admin: Admin, dsn: str) -> None:
    from pgqrs import repositories

    await admin.create_queue("big")
    await archive_rows(dsn, "big", [1.0] * 3000)
    await sql(dsn, "ANALYZE pgqrs_archive")
    archive = repositories.for_schema("public").archive
    async with admin._db.transaction() as conn:
        exact = await archive.approximate_count(conn, exact_limit=5000)
        estimated = await archive.approximate_count(conn, exact_limit=1000)
        per_queue = await archive.approximate_count(conn, queue_id=1, exact_limit=1000)
    assert exact == 3000
    assert 2700 <= estimated <= 3300 and 2700 <= per_queue <= 3300


# -- the lease --------------------------------------------------------------------------------


async def test_one_runner_leads_and_another_takes_over_when_it_goes(dsn: str) -> None:
    async with Maintenance(dsn, interval=1, name="a") as a, \
            Maintenance(dsn, interval=1, name="b") as b:
        assert await a._acquire() and a.leading
        assert not await b._acquire()
        assert (await a.run_once()) is not None  # run_once gives the lease up after
        assert await b._acquire()
        assert not await a._acquire()
        # b stops renewing (as if it died): once its lease runs out, a takes over...
        await sql(dsn, "UPDATE pgqrs_maintenance SET lease_until = clock_timestamp()")
        assert await a._acquire()
        # ...and b, which believes it still leads, acts no more.
        with pytest.raises(maintenance_module._LostLease):
            async with b._fenced():
                pass
        row = await sql(dsn, "SELECT holder FROM pgqrs_maintenance")
        assert row[0]["holder"] == "a"


async def test_a_round_does_each_job_and_logs_counts(admin: Admin, dsn: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    await admin.create_queue("q", retention=86400, max_read_ct=2)
    await archive_rows(dsn, "q", [2.0] * 3)
    async with Producer(admin, "q", "p", 1) as producer:
        await producer.enqueue_batch([{"n": i} for i in range(3)])
    zombie = Consumer(dsn, "q", "zombie", 2, visibility_timeout=600)
    (held,) = await zombie.dequeue(1)
    await sql(dsn, "UPDATE pgqrs_messages SET read_ct = 2 WHERE id = (SELECT max(id) "
                   "FROM pgqrs_messages)")  # delivered twice, lease over: a dead letter
    await sql(dsn, "UPDATE pgqrs_workers SET heartbeat_at = now() - interval '1 hour' "
                   "WHERE hostname = 'zombie'")
    await sql(dsn, "INSERT INTO pgqrs_workers (hostname, port, status, heartbeat_at) "
                   "VALUES ('old', 9, 'stopped', now() - interval '30 days')")
    caplog.set_level(logging.INFO, logger="pgqrs.maintenance")

    async with Maintenance(dsn, interval=60, name="runner") as runner:
        report = await runner.run_once()
    assert report is not None
    assert (report.reclaimed_workers, report.reclaimed_messages, report.dead_lettered,
            report.purged_workers, report.purged_archive) == (1, 1, 1, 1, 3)
    assert any("1 zombie worker(s) stopped and 1 of their message(s) released, 1 dead "
               "letter(s) archived, 1 stopped worker(s) deleted, 3 archived row(s) purged"
               in r.getMessage() for r in caplog.records)
    released = await (await admin.get_messages()).get(held.id)
    assert released is not None and released.consumer_worker_id is None
    lease = await sql(dsn, "SELECT holder, last_round_at FROM pgqrs_maintenance")
    assert lease[0]["holder"] is None and lease[0]["last_round_at"] is not None
    await zombie.close()


async def test_run_once_does_nothing_while_another_runner_leads(dsn: str) -> None:
    async with Maintenance(dsn, name="a") as a, Maintenance(dsn, name="b") as b:
        assert await a._acquire()
        assert await b.run_once() is None


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"interval": 0}, "interval"), ({"lease": -1}, "lease"), ({"batch_size": 0}, "batch"),
    ({"purge_workers_after": 0}, "purge_workers_after"), ({"name": ""}, "name"),
])
def test_runner_options_are_validated(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        Maintenance("postgresql://localhost/x", **kwargs)  # type: ignore[arg-type]


async def test_consume_runs_the_runner_for_its_duration(admin: Admin, dsn: str) -> None:
    await admin.create_queue("q")
    await admin.schedule("q", "every-second", cron="* * * * * *", payload={"tick": True})
    seen: list[dict[str, object]] = []
    stop = asyncio.Event()

    async def handle(message: pgqrs.QueueMessage) -> None:
        seen.append(message.payload)
        if len(seen) == 2:
            stop.set()

    async with Consumer(dsn, "q", "w", 1) as consumer:
        await asyncio.wait_for(consumer.consume(handle, stop=stop, maintenance=0.5,
                                                handle_signals=False), 10)
    assert seen == [{"tick": True}] * 2
    lease = await sql(dsn, "SELECT holder FROM pgqrs_maintenance")
    assert lease[0]["holder"] is None  # given up when consume() returned
    with pytest.raises(ValidationError, match="interval"):
        async with Consumer(dsn, "q", "w2", 2) as consumer:
            await consumer.consume(handle, maintenance=-1, handle_signals=False)


# -- schedules --------------------------------------------------------------------------------


async def test_schedule_define_list_redefine_remove(admin: Admin, dsn: str) -> None:
    await admin.create_queue("reports")
    info = await admin.schedule("reports", "nightly", cron="0 2 * * *",
                                payload={"report": "daily"}, headers={"tenant": "a"},
                                timezone="Europe/Paris")
    assert (info.name, info.queue_name, info.cron, info.timezone, info.payload,
            info.headers, info.catch_up) == ("nightly", "reports", "0 2 * * *",
                                             "Europe/Paris", {"report": "daily"},
                                             {"tenant": "a"}, True)
    paris = info.next_run.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris"))
    assert (paris.hour, paris.minute, paris.second) == (2, 0, 0)
    assert info.next_run > datetime.now(UTC)

    # Same ticks: the next run is kept; other ticks: recomputed.
    await sql(dsn, "UPDATE pgqrs_schedules SET next_run = next_run + interval '1 day'")
    kept = await admin.schedule("reports", "nightly", cron="0  2 * * *", payload={"v": 2},
                                timezone="Europe/Paris")
    assert kept.next_run == info.next_run + timedelta(days=1) and kept.payload == {"v": 2}
    moved = await admin.schedule("reports", "nightly", cron="30 2 * * *", payload={"v": 3})
    assert moved.next_run != kept.next_run and moved.timezone == "UTC"

    await admin.schedule("reports", "hourly", cron="0 * * * *", payload={})
    assert [s.name for s in await admin.list_schedules()] == ["hourly", "nightly"]
    assert [s.name for s in await admin.list_schedules("reports")] == ["hourly", "nightly"]
    assert (await admin.get_schedule("hourly")) is not None
    assert await admin.unschedule("hourly") is True
    assert await admin.unschedule("hourly") is False
    assert await admin.get_schedule("hourly") is None


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"cron": "not cron"}, "cron"), ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "0 0 30 2 *"}, "never matches|cron"), ({"cron": ""}, "cron"),
    ({"timezone": "Mars/Base"}, "time zone"), ({"payload": [1]}, "Payload"),
    ({"payload": {"x": float("nan")}}, "NaN"), ({"headers": {"a": 1}}, "header"),
    ({"name": ""}, "Schedule name"),
])
async def test_schedule_validates_its_input(admin: Admin, kwargs: dict[str, object],
                                            match: str) -> None:
    await admin.create_queue("q")
    args: dict[str, object] = {"name": "s", "cron": "* * * * *", "payload": {}}
    args.update(kwargs)
    name = args.pop("name")
    with pytest.raises(ValidationError, match=match):
        await admin.schedule("q", name, **args)  # type: ignore[arg-type]
    assert await admin.list_schedules() == []


async def test_schedule_on_an_unknown_queue(admin: Admin) -> None:
    with pytest.raises(pgqrs.QueueNotFoundError):
        await admin.schedule("nope", "s", cron="* * * * *", payload={})


async def test_deleting_the_queue_removes_its_schedules(admin: Admin) -> None:
    await admin.create_queue("q")
    await admin.schedule("q", "s", cron="* * * * *", payload={})
    await admin.delete_queue("q")
    assert await admin.list_schedules() == []


async def messages_of(dsn: str) -> list[dict[str, object]]:
    rows = await sql(dsn, "SELECT payload::text AS p FROM pgqrs_messages ORDER BY id")
    return [__import__("json").loads(r["p"]) for r in rows]


@pytest.mark.parametrize("catch_up", [True, False])
async def test_missed_ticks_are_each_enqueued_once_or_skipped(
        admin: Admin, dsn: str, catch_up: bool, caplog: pytest.LogCaptureFixture) -> None:
    await admin.create_queue("q")
    await admin.schedule("q", "s", cron="*/5 * * * *", payload={"k": 1}, catch_up=catch_up)
    # Nothing ran for over an hour: the ticks since then came due.
    start = (await sql(dsn, "UPDATE pgqrs_schedules SET next_run = date_trunc('hour', now()) "
                            "- interval '1 hour' RETURNING next_run, now() AS now"))[0]
    due = int((start["now"] - start["next_run"]).total_seconds() // 300) + 1
    caplog.set_level(logging.INFO, logger="pgqrs.maintenance")
    async with Maintenance(dsn, name="r") as runner:
        report = await runner.run_once()
    assert report is not None
    expected = due if catch_up else 1  # or only the latest
    assert len(await messages_of(dsn)) == report.scheduled == expected
    assert report.skipped_ticks == due - expected
    (info,) = await admin.list_schedules()
    now = (await sql(dsn, "SELECT now() AS n"))[0]["n"]
    assert now < info.next_run <= now + timedelta(minutes=5)  # back on its ticks
    assert info.last_message_id is not None
    skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()
             and "tick(s) from" in r.getMessage()]
    assert len(skips) == (0 if catch_up else 1), skips


async def test_a_long_outage_enqueues_only_the_latest_ticks(admin: Admin, dsn: str) -> None:
    await admin.create_queue("q")
    await admin.schedule("q", "s", cron="* * * * * *", payload={})
    await sql(dsn, "UPDATE pgqrs_schedules SET next_run = date_trunc('second', now()) "
                   "- interval '3000 seconds'")
    async with Maintenance(dsn, name="r") as runner:
        report = await runner.run_once()
    assert report is not None
    # The latest 1,000 ticks (and those that came due meanwhile), the 2,000 before skipped.
    assert 1000 <= report.scheduled <= 1100
    assert 1990 <= report.skipped_ticks <= 2010


async def test_a_due_tick_is_enqueued_once_by_racing_runners(admin: Admin, dsn: str) -> None:
    await admin.create_queue("q")
    for i in range(20):
        await admin.schedule("q", f"s{i}", cron="*/5 * * * *", payload={"s": i})
    await sql(dsn, "UPDATE pgqrs_schedules SET next_run = now() - interval '1 second'")
    from pgqrs import repositories

    repos = repositories.for_schema("public")
    # Two runners that both believe they lead (the lease aside): the compare-and-set on
    # next_run alone lets each tick through once.
    runners = [Maintenance(dsn, name=f"r{i}") for i in range(2)]
    try:
        async def drain(runner: Maintenance) -> None:
            while True:
                async with runner._db.transaction() as conn:
                    due = await repos.schedules.next_due(conn)
                    if due is None:
                        return
                    await runner._tick(conn, due)

        async def racing_cas() -> int:
            # The slow path too: the same due tick offered twice after one commit.
            async with runners[0]._db.transaction() as conn:
                due = await repos.schedules.next_due(conn)
            assert due is not None
            done = 0
            for runner in runners:
                async with runner._db.transaction() as conn:
                    done += await repos.schedules.advance(
                        conn, repos.messages, schedule_id=due["id"], due=due["next_run"],
                        next_run=due["next_run"] + timedelta(minutes=5),
                        enqueue=True) is not None
            return done

        assert await racing_cas() == 1
        await asyncio.gather(*(drain(r) for r in runners))
    finally:
        for runner in runners:
            await runner.close()
    payloads = await messages_of(dsn)
    assert sorted(p["s"] for p in payloads) == list(range(20))  # type: ignore[type-var]
