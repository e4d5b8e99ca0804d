"""Maintenance under load and across processes (docs/reliability.md, "Maintenance").

* Retention purges a large archive in batches while four consumer processes drain a
  queue: every consumer call is timed, nothing live (or young) is touched.
* Two ``pgqrs maintain`` processes and three ``consume(maintenance=...)`` processes
  compete for the lease while a schedule fires every second; the leader is SIGKILLed
  mid-run. The server itself records every transaction that touches the lease row
  (triggers: the first change, and the commit, with ``clock_timestamp()``), so the test
  sees from the database that no two runners' actions ever overlapped and how soon a new
  runner took over; and every tick became exactly one message.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from pgqrs import Admin, Maintenance, Producer

from .support import Bouncer
from .test_pgbouncer import fresh_database

HERE = Path(__file__).resolve().parent
PROC = HERE / "maintenance_proc.py"

ARCHIVED = 200_000
"""Old archive rows the purge test deletes (docs/benchmarks.md has the 1,000,000 run)."""
LIVE = 60_000
STALL_BOUND = 2.0
"""Seconds any consumer call may take while the purge runs (measured: see the docs)."""


async def sql(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        if ";" in query.strip().rstrip(";"):  # a script
            await conn.execute(query)
            return []
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def python(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    with (tmp_path / f"{args[1]}-{args[4]}.err").open("wb") as err:
        return subprocess.Popen([sys.executable, *args], stderr=err)


def errors_of(tmp_path: Path) -> str:
    return "\n".join(p.read_text() for p in tmp_path.glob("*.err"))


@pytest.mark.timeout(120)
async def test_purge_in_batches_while_four_consumers_drain(dsn: str, tmp_path: Path) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("work")
        async with Producer(admin, "work", "producer", 1) as producer:
            for start in range(0, LIVE, 5000):
                await producer.enqueue_batch([{"n": n} for n in range(start, start + 5000)])
    await sql(dsn, f"""INSERT INTO pgqrs_archive (original_msg_id, queue_id, payload,
        enqueued_at, read_ct, archived_at)
        SELECT -i, 1, '{{"old": true}}', now() - interval '9 days', 1,
               now() - interval '8 days' + i * interval '1 ms'
        FROM generate_series(1, {ARCHIVED}) i""")
    await sql(dsn, "VACUUM ANALYZE pgqrs_archive")
    done = tmp_path / "done"
    procs = [python(tmp_path, str(PROC), "drain", dsn, "work", str(10 + i),
                    str(tmp_path / f"{i}.json"), str(done)) for i in range(4)]
    try:
        await asyncio.sleep(1.5)  # the consumers are draining
        async with Admin(dsn) as admin:
            started = time.time()
            batches: list[float] = []
            purged = await admin.purge_archive(older_than=timedelta(days=7), batch_size=1000,
                                               on_batch=lambda _: batches.append(time.time()))
            ended = time.time()
        done.touch()
        for proc in procs:
            assert proc.wait(timeout=60) == 0, errors_of(tmp_path)
    finally:
        done.touch()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()

    results = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(4)]
    during = [seconds for r in results for start, seconds, _ in r["calls"]
              if start <= ended and start + seconds >= started]
    calls = [seconds for r in results for _, seconds, _ in r["calls"]]
    archived_live = sum(r["archived"] for r in results)
    gaps = [b - a for a, b in zip([started, *batches], batches, strict=False)]
    figures = {
        "purged": purged, "purge_seconds": round(ended - started, 2),
        "batches": len(batches), "max_batch_seconds": round(max(gaps), 3),
        "consumer_calls_during_purge": len(during),
        "max_consumer_call_during_purge": round(max(during), 3),
        "p99_consumer_call_during_purge": round(
            statistics.quantiles(during, n=100)[98], 4),
        "median_call": round(statistics.median(calls), 4),
        "archived_by_consumers": archived_live,
    }
    print("\npurge while draining:", json.dumps(figures))
    assert purged == ARCHIVED
    assert len(during) > 100  # the consumers really were working throughout
    # Nothing live or young was touched: every message is in the queue or was archived by
    # a consumer, exactly once, and all those archive rows are still there.
    rows = await sql(dsn, """SELECT (SELECT count(*) FROM pgqrs_messages) AS live,
        (SELECT count(*) FROM pgqrs_archive) AS archived,
        (SELECT count(DISTINCT original_msg_id) FROM pgqrs_archive) AS distinct_ids,
        (SELECT count(*) FROM pgqrs_archive WHERE original_msg_id < 0) AS old""")
    assert rows[0]["old"] == 0
    assert rows[0]["archived"] == rows[0]["distinct_ids"] == archived_live
    assert rows[0]["live"] + archived_live == LIVE
    assert max(during) < STALL_BOUND, figures


# -- one runner at a time, across processes -----------------------------------------------------

OBSERVE = """
CREATE TABLE lease_log (txid bigint, holder text, at timestamptz, kind text);
CREATE FUNCTION log_lease() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO lease_log VALUES (txid_current(), coalesce(NEW.holder, OLD.holder),
                                  clock_timestamp(), TG_ARGV[0]);
    RETURN NULL;
END $$;
CREATE TRIGGER lease_change AFTER UPDATE ON pgqrs_maintenance
    FOR EACH ROW EXECUTE FUNCTION log_lease('change');
CREATE CONSTRAINT TRIGGER lease_commit AFTER UPDATE ON pgqrs_maintenance
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION log_lease('commit');
"""
RUN_SECONDS = 24
KILL_AT = 9


@pytest.mark.timeout(120)
async def test_one_runner_acts_at_a_time_and_each_tick_is_one_message(
        dsn: str, tmp_path: Path) -> None:
    async with Admin(dsn) as admin:
        await admin.create_queue("ticks")
        await sql(dsn, OBSERVE)
        info = await admin.schedule("ticks", "every-second", cron="* * * * * *",
                                    payload={"tick": True})
    env = {**os.environ, "PGQRS_DSN": dsn}
    procs: dict[int, subprocess.Popen[bytes]] = {}
    for _ in range(2):
        p = subprocess.Popen([sys.executable, "-m", "pgqrs", "maintain", "--interval", "1s"],
                             env=env, stderr=subprocess.DEVNULL)
        procs[p.pid] = p
    for port in range(3):
        p = python(tmp_path, str(PROC), "consume", dsn, "ticks", str(20 + port), "1.0")
        procs[p.pid] = p
    try:
        await asyncio.sleep(KILL_AT)
        holder = (await sql(dsn, "SELECT holder FROM pgqrs_maintenance"))[0]["holder"]
        leader = int(holder.split(":")[1])
        assert leader in procs, holder
        procs[leader].kill()  # SIGKILL: no clean-up, its lease must run out
        killed_at = (await sql(dsn, "SELECT clock_timestamp() AS t"))[0]["t"]
        await asyncio.sleep(RUN_SECONDS - KILL_AT)
        for pid, p in procs.items():
            if pid != leader:
                p.send_signal(signal.SIGTERM)
        for pid, p in procs.items():
            expected = (0,) if pid != leader else (-signal.SIGKILL,)
            assert p.wait(timeout=30) in expected, errors_of(tmp_path)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()

    log = await sql(dsn, """SELECT txid, min(holder) AS holder, count(DISTINCT holder) AS n,
                                   min(at) FILTER (WHERE kind = 'change') AS start,
                                   max(at) FILTER (WHERE kind = 'commit') AS commit
                            FROM lease_log GROUP BY txid ORDER BY start""")
    assert len(log) > 100
    assert all(r["n"] == 1 and r["commit"] is not None for r in log)
    # No two transactions on the lease row overlap (each begins after the previous one
    # committed): every action of every runner ran alone.
    overlaps = [(a["holder"], b["holder"]) for a, b in itertools.pairwise(log)
                if b["start"] < a["commit"]]
    assert overlaps == []
    holders = [r["holder"] for r in log]
    segments = [h for i, h in enumerate(holders) if i == 0 or holders[i - 1] != h]
    assert str(leader) == holder.split(":")[1] and holder in segments
    after_kill = [r for r in log if r["start"] > killed_at]
    assert after_kill and all(r["holder"] != holder for r in after_kill)
    takeover = (after_kill[0]["start"] - killed_at).total_seconds()

    # Every tick from the first to the last one enqueued is exactly one message.
    state = await sql(dsn, "SELECT last_run_at FROM pgqrs_schedules")
    ticks = int((state[0]["last_run_at"] - info.next_run).total_seconds()) + 1
    messages = await sql(dsn, """SELECT count(*) AS n FROM (
        SELECT id FROM pgqrs_messages WHERE payload ? 'tick'
        UNION ALL SELECT id FROM pgqrs_archive WHERE payload ? 'tick') t""")
    figures = {"lease_transactions": len(log), "leaders": len(set(segments)),
               "handovers": len(segments) - 1,
               "takeover_seconds_after_kill": round(takeover, 3), "ticks": ticks,
               "messages": messages[0]["n"]}
    print("\nrunners:", json.dumps(figures))
    assert ticks >= RUN_SECONDS - 5
    assert messages[0]["n"] == ticks
    assert takeover < 3.0, figures  # lease 0.75 s + a poll of 0.25 s, with slack for CI


# -- through pgbouncer (transaction pooling) -------------------------------------------------


@pytest.mark.timeout(120)
async def test_runners_through_pgbouncer_share_the_lease(pgbouncer: Bouncer,
                                                         server_dsn: str) -> None:
    # The lease is rows and row locks, so it holds through transaction pooling, where two
    # runners' transactions take turns on the same three server connections.
    direct = await fresh_database(server_dsn, "pgqrs_bouncer_maintenance")
    dsn = pgbouncer.dsn_for(direct)
    async with Admin(dsn, pgbouncer=True) as admin:
        await admin.install()
        await admin.create_queue("ticks")
        await sql(direct, OBSERVE)
        info = await admin.schedule("ticks", "every-second", cron="* * * * * *",
                                    payload={"tick": True})
    stop = asyncio.Event()
    runners = [Maintenance(dsn, interval=0.5, name=f"r{i}", pgbouncer=True) for i in range(2)]
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    await asyncio.sleep(3.5)
    leader = next(r for r in runners if r.leading)
    await leader._release()  # hand over mid-run (the runner stands by, then leads again)
    await asyncio.sleep(3.0)
    stop.set()
    await asyncio.gather(*tasks)
    for runner in runners:
        await runner.close()
    log = await sql(direct, """SELECT txid, min(at) FILTER (WHERE kind = 'change') AS start,
                                      max(at) FILTER (WHERE kind = 'commit') AS commit
                               FROM lease_log GROUP BY txid ORDER BY start""")
    assert len(log) > 20
    assert [a for a, b in itertools.pairwise(log) if b["start"] < a["commit"]] == []
    state = await sql(direct, "SELECT last_run_at FROM pgqrs_schedules")
    ticks = int((state[0]["last_run_at"] - info.next_run).total_seconds()) + 1
    messages = await sql(direct, "SELECT count(*) AS n FROM pgqrs_messages")
    assert ticks >= 5 and messages[0]["n"] == ticks
