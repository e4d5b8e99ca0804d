"""Revision pgqrs_0002 (queue policy): data kept, online under load, reviewable, frozen.

The first upgrade real users run on a live queue. See "How to write a pgqrs migration" in
docs/guides/alembic.md for the rules these tests hold it to.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import pytest
from sqlalchemy import Connection, exc, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from pgqrs import Admin, Consumer, migrate

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = migrate.MIGRATIONS_DIR / "versions"
OLD_CLIENT = Path(__file__).with_name("old_client.py")

# Released revisions never change: a release ships them, and databases out there record
# that they ran. Fix a released revision with a NEW revision instead. Add a file here (with
# `sha256sum`) when the release that ships it is cut.
RELEASED = [
    ("pgqrs_0001_initial.py",
     "c61a7bd20eb2039cb970339e5531cef6a928fadc5468bf091d9bde33980a9316"),
    ("pgqrs_0002_queue_policy.py",
     "507e0bf682f3d9c06d11799721b1d9b91391962bee8b1df30105d41d3e175eee"),
    ("pgqrs_0003_message_options.py",
     "f9cf2406db955aa665e5680dcd12eba94ba0f47a11ea2ebc48707e6f3ee4c57e"),
    ("pgqrs_0004_maintenance.py",
     "9aaa79b46c18161b42311d57f0b95a20a4443ec3ba40297ce387d2fd7e44ddc4"),
    ("pgqrs_0005_lean_hot_path.py",
     "2241c2073d46a1a25facf4b534f8385ff5401d65465652883b96bf50be8a167e"),
]

POLICY_DEFAULTS = {"max_read_ct": 5, "visibility_timeout": timedelta(seconds=30),
                   "retry_backoff_base": timedelta(seconds=1),
                   "retry_backoff_max": timedelta(minutes=5), "retention": None,
                   "paused": False}
OLD_QUEUE_COLUMNS = ("id", "queue_name", "created_at")

SEED_0001 = """
INSERT INTO pgqrs_queues (queue_name) VALUES ('a'), ('b');
INSERT INTO pgqrs_workers (hostname, port, queue_id, status) VALUES
  ('prod', 1, 1, 'ready'), ('cons', 2, 1, 'ready'), ('gone', 3, 2, 'stopped');
INSERT INTO pgqrs_messages (queue_id, payload, vt, read_ct, dequeued_at, producer_worker_id,
                            consumer_worker_id) VALUES
  (1, '{"state": "live"}', now() - interval '1 s', 0, NULL, 1, NULL),
  (1, '{"state": "leased"}', now() + interval '10 min', 1, now(), 1, 2),
  (1, '{"state": "delayed"}', now() + interval '1 hour', 0, NULL, 1, NULL),
  (1, '{"state": "exhausted"}', now() - interval '1 s', 5, now() - interval '31 s', 1, 2),
  (2, '{"state": "live-b"}', now() - interval '1 s', 2, NULL, NULL, NULL);
INSERT INTO pgqrs_archive (original_msg_id, queue_id, payload, enqueued_at, vt, read_ct,
                           dequeued_at, producer_worker_id, consumer_worker_id,
                           dead_letter) VALUES
  (100, 1, '{"state": "done"}', now() - interval '1 day', now(), 1, now(), 1, 2, false),
  (101, 2, '{"state": "dead"}', now() - interval '1 day', now(), 5, now(), NULL, 3, true);
"""


def revision_module() -> Any:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrate.MIGRATIONS_DIR)).get_revision("pgqrs_0002")
    assert script is not None
    return script.module


async def migrate_to(dsn: str, revision: str, *, down: bool = False) -> None:
    """Upgrade (or downgrade) to ``revision`` the way install() does: one locked transaction."""
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
                                 poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate.lock_sync)
            step = migrate.downgrade_sync if down else migrate.upgrade_sync
            await conn.run_sync(step, "public", revision)
    finally:
        await engine.dispose()


async def sql(dsn: str, statement: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        if args or statement.lstrip().upper().startswith("SELECT"):
            return await conn.fetch(statement, *args)
        await conn.execute(statement)
        return []
    finally:
        await conn.close()


# Columns later revisions add (pgqrs_0003: message options); head has them too.
LATER_COLUMNS = {"priority", "parked", "dedup_key", "group_key", "headers"}


async def snapshot(dsn: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the four tables, limited to their pgqrs_0001 columns."""
    out = {}
    for table in ("pgqrs_queues", "pgqrs_workers", "pgqrs_messages", "pgqrs_archive"):
        rows = [dict(r) for r in await sql(dsn, f"SELECT * FROM {table} ORDER BY id")]
        if table == "pgqrs_queues":
            rows = [{k: r[k] for k in OLD_QUEUE_COLUMNS} for r in rows]
        out[table] = [{k: v for k, v in r.items() if k not in LATER_COLUMNS} for r in rows]
    return out


async def policies(dsn: str) -> list[dict[str, Any]]:
    rows = await sql(dsn, "SELECT * FROM pgqrs_queues ORDER BY id")
    return [{k: r[k] for k in POLICY_DEFAULTS} for r in rows]


async def policy_columns(dsn: str) -> set[str]:
    rows = await sql(dsn, "SELECT column_name FROM information_schema.columns "
                          "WHERE table_name = 'pgqrs_queues'")
    return {r["column_name"] for r in rows} - set(OLD_QUEUE_COLUMNS)


async def test_upgrade_keeps_every_row_and_reproduces_the_old_behaviour(empty_dsn: str) -> None:
    await migrate_to(empty_dsn, "pgqrs_0001")
    await sql(empty_dsn, SEED_0001)
    before = await snapshot(empty_dsn)
    assert len(before["pgqrs_messages"]) == 5 and len(before["pgqrs_archive"]) == 2

    async with Admin(empty_dsn) as admin:
        await admin.install()  # the path users take: 0001 -> head
        assert await admin.verify() == migrate.head_revision()
        assert await snapshot(empty_dsn) == before  # nothing lost, nothing changed
        assert await policies(empty_dsn) == [POLICY_DEFAULTS, POLICY_DEFAULTS]

        # And the old rows behave as they did: the live message is claimable, the leased
        # and delayed ones are not, the one delivered 5 times is a dead letter.
        metrics = await admin.queue_metrics("a")
        assert (metrics.total_messages, metrics.pending_messages, metrics.leased_messages,
                metrics.delayed_messages, metrics.dead_messages,
                metrics.archived_messages) == (4, 1, 1, 1, 1, 1)
        async with Consumer(empty_dsn, "a", "new-code", 9) as consumer:
            (claimed,) = await consumer.dequeue(10)
            assert claimed.payload == {"state": "live"} and claimed.read_ct == 1
            assert await consumer.archive(claimed.id)
        exhausted = [m["id"] for m in before["pgqrs_messages"]
                     if m["payload"] == '{"state": "exhausted"}']
        assert await admin.dlq() == exhausted


async def test_downgrade_and_upgrade_again_round_trip_with_data(empty_dsn: str) -> None:
    await migrate_to(empty_dsn, "pgqrs_0001")
    await sql(empty_dsn, SEED_0001)
    before = await snapshot(empty_dsn)
    await migrate_to(empty_dsn, "head")
    async with Admin(empty_dsn) as admin:
        await admin.update_queue("a", max_read_ct=2, retention=3600, paused=True)

    await migrate_to(empty_dsn, "pgqrs_0001", down=True)
    assert await policy_columns(empty_dsn) == set()
    constraints = await sql(empty_dsn, "SELECT conname FROM pg_constraint "
                                       "WHERE conname LIKE 'ck_pgqrs_queues_%'")
    assert constraints == []
    assert await snapshot(empty_dsn) == before
    revision = await sql(empty_dsn, "SELECT version_num FROM pgqrs_alembic_version")
    assert [r["version_num"] for r in revision] == ["pgqrs_0001"]

    await migrate_to(empty_dsn, "head")
    assert await snapshot(empty_dsn) == before
    assert await policies(empty_dsn) == [POLICY_DEFAULTS, POLICY_DEFAULTS]
    env = {**os.environ, "PGQRS_DSN": empty_dsn}
    env.pop("DATABASE_URL", None)
    check = subprocess.run([sys.executable, "-m", "alembic", "check"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr  # models == migrated schema


def offline(*args: str) -> str:
    env = {**os.environ, "PGQRS_DSN": "postgresql://reviewer@db.invalid/app"}
    env.pop("DATABASE_URL", None)
    result = subprocess.run([sys.executable, "-m", "alembic", *args, "--sql"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_offline_sql_is_reviewable_ddl() -> None:
    up = offline("upgrade", "pgqrs_0001:pgqrs_0002")
    lines = [line for line in up.splitlines() if line and not line.startswith("--")]
    assert lines[0] == "BEGIN;" and lines[-1] == "COMMIT;"
    assert lines[1] == "SET LOCAL lock_timeout = '1s';"  # before any ALTER
    assert ("ALTER TABLE public.pgqrs_queues ADD COLUMN max_read_ct INTEGER DEFAULT 5 "
            "NOT NULL;") in lines
    assert ("ALTER TABLE public.pgqrs_queues ADD COLUMN paused BOOLEAN DEFAULT false "
            "NOT NULL;") in lines
    assert "ALTER TABLE public.pgqrs_queues ADD COLUMN retention INTERVAL;" in lines
    assert ("ALTER TABLE public.pgqrs_queues ADD CONSTRAINT ck_pgqrs_queues_max_read_ct_positive"
            " CHECK (max_read_ct >= 1);") in lines
    alters = [line for line in lines if line.startswith("ALTER TABLE")]
    assert len(alters) == 11 and all("public.pgqrs_queues " in a for a in alters)
    assert not any(w in up for w in ("CREATE TABLE", "CREATE INDEX", "pgqrs_messages", "UPDATE "
                                     "public.pgqrs_queues"))  # no rewrite, no backfill
    assert ("UPDATE public.pgqrs_alembic_version SET version_num='pgqrs_0002' WHERE "
            "public.pgqrs_alembic_version.version_num = 'pgqrs_0001';") in lines

    down = offline("downgrade", "pgqrs_0002:pgqrs_0001")
    assert "SET LOCAL lock_timeout = '1s';" in down
    assert "ALTER TABLE public.pgqrs_queues DROP COLUMN max_read_ct;" in down
    assert "DROP CONSTRAINT ck_pgqrs_queues_retention_positive" in down

    jobs = offline("-x", "schema=jobs", "upgrade", "pgqrs_0001:pgqrs_0002")
    assert "ALTER TABLE jobs.pgqrs_queues ADD COLUMN max_read_ct" in jobs
    assert "public." not in jobs


def test_released_revisions_are_never_edited() -> None:
    for filename, expected in RELEASED:
        path = VERSIONS / filename
        assert path.exists(), f"released revision {filename} is gone; never delete one"
        content = path.read_bytes().replace(b"\r\n", b"\n")  # a Windows checkout is no edit
        actual = hashlib.sha256(content).hexdigest()
        assert actual == expected, (
            f"{filename} is a released migration and was edited (sha256 {actual}, released "
            f"as {expected}). Databases out there already ran it: add a new revision instead "
            "(see 'How to write a pgqrs migration' in docs/guides/alembic.md).")
    released = {name for name, _ in RELEASED}
    # Released revisions come first in the lineage: nothing unreleased sits below them.
    from alembic.script import ScriptDirectory

    chain = [r.path for r in ScriptDirectory(str(migrate.MIGRATIONS_DIR)).walk_revisions()]
    names = [Path(p).name for p in reversed(chain)]
    assert set(names[:len(released)]) == released, names


def hold_queue_lock_sql() -> str:
    # What an application's open transaction holds after an enqueue: the foreign key check
    # took a share lock on pgqrs_queues (ROW SHARE on the table, KEY SHARE on the row).
    return ("INSERT INTO pgqrs_messages (queue_id, payload) VALUES (1, '{\"held\": true}')")


async def test_a_long_transaction_makes_the_upgrade_retry_without_stalling_clients(
        empty_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    await migrate_to(empty_dsn, "pgqrs_0001")
    await sql(empty_dsn, "INSERT INTO pgqrs_queues (queue_name) VALUES ('a')")
    holder = await asyncpg.connect(empty_dsn)
    probe = await asyncpg.connect(empty_dsn)
    caplog.set_level(logging.WARNING, logger="pgqrs.migrations")
    try:
        await holder.execute("BEGIN")
        await holder.execute(hold_queue_lock_sql())

        async def probe_enqueues() -> list[float]:
            # A producer while the upgrade waits for its lock: queued behind the ALTER for
            # at most lock_timeout, never for the whole long transaction.
            latencies = []
            for _ in range(12):
                start = time.perf_counter()
                await probe.execute(hold_queue_lock_sql())
                latencies.append(time.perf_counter() - start)
                await asyncio.sleep(0.1)
            return latencies

        async def release_holder() -> None:
            await asyncio.sleep(3.0)
            await holder.execute("COMMIT")

        async with Admin(empty_dsn) as admin:
            started = time.perf_counter()
            _, latencies, _ = await asyncio.gather(admin.install(), probe_enqueues(),
                                                   release_holder())
            took = time.perf_counter() - started
            assert await admin.verify() == migrate.head_revision()
    finally:
        await holder.close()
        await probe.close()
    retries = [r for r in caplog.records if "lock not available" in r.getMessage()]
    assert retries, "the upgrade should have timed out on the lock and retried"
    assert took >= 3.0  # it had to wait for the long transaction...
    assert max(latencies) < 1.5, latencies  # ...but clients waited at most ~lock_timeout
    count = await sql(empty_dsn, "SELECT count(*) AS n FROM pgqrs_messages")
    assert count[0]["n"] == 13  # the holder's and the probe's messages, all there


async def test_retries_end_with_the_lock_timeout_error(empty_dsn: str) -> None:
    await migrate_to(empty_dsn, "pgqrs_0001")
    await sql(empty_dsn, "INSERT INTO pgqrs_queues (queue_name) VALUES ('a')")
    module = revision_module()
    holder = await asyncpg.connect(empty_dsn)
    engine = create_async_engine(empty_dsn.replace("postgresql://", "postgresql+asyncpg://"),
                                 poolclass=NullPool)
    try:
        await holder.execute("BEGIN")
        await holder.execute(hold_queue_lock_sql())

        def attempt(connection: Connection) -> tuple[str, str]:
            def step() -> None:
                connection.execute(text("ALTER TABLE pgqrs_queues ADD COLUMN x int"))

            with pytest.raises(exc.DBAPIError, match="lock timeout") as info:
                module.retry_on_lock_timeout(connection, step, attempts=2, pause=0.05)
            # The savepoint was rolled back: the transaction is still usable.
            setting = connection.execute(text("SHOW lock_timeout")).scalar_one()
            return module._sqlstate(info.value), setting

        async with engine.begin() as conn:
            await conn.execute(text("SET LOCAL lock_timeout = '7s'"))
            state, setting = await conn.run_sync(attempt)
        assert state == "55P03" and setting == "7s"
    finally:
        await holder.close()
        await engine.dispose()


# -- upgrade under load ----------------------------------------------------------------------

PRODUCERS, CONSUMERS, PER_PRODUCER = 2, 3, 3000
STALL_BOUND = 2.0
"""Seconds a client call may take during the upgrade: lock_timeout (1 s) + the step's hold."""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("long_transaction", [False, True], ids=["plain", "long-transaction"])
async def test_upgrade_while_producers_and_consumers_run(
        empty_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        long_transaction: bool) -> None:
    await migrate_to(empty_dsn, "pgqrs_0001")
    caplog.set_level(logging.WARNING, logger="pgqrs.migrations")
    load = await upgrade_under_load(empty_dsn, tmp_path, long_transaction=long_transaction)
    results, held, in_flight = load.results, load.held, load.in_flight
    upgrade_start, upgrade_end = load.upgrade_start, load.upgrade_end
    errors = [e for r in results.values() for e in r["errors"]]
    assert errors == []
    produced = [i for name, r in results.items() if name.startswith("producer")
                for i in r["ids"]] + [held]
    archived_by_clients = [i for name, r in results.items() if name.startswith("consumer")
                           for i in r["ids"]]
    archive = await sql(empty_dsn, "SELECT original_msg_id, payload FROM pgqrs_archive")
    archived = [r["original_msg_id"] for r in archive]
    assert len(produced) == PRODUCERS * PER_PRODUCER + 1
    assert sorted(archived) == sorted(produced) == sorted(archived_by_clients)  # none lost
    assert len(set(archived)) == len(archived)  # none archived twice
    assert await sql(empty_dsn, "SELECT id FROM pgqrs_messages") == []
    assert await policies(empty_dsn) == [POLICY_DEFAULTS]
    retries = [r for r in caplog.records if "lock not available" in r.getMessage()]
    assert bool(retries) is long_transaction

    during = [(seconds, op) for r in results.values() for start, seconds, op in r["calls"]
              if start <= upgrade_end and start + seconds >= upgrade_start]
    calls = [(seconds, op) for r in results.values() for _, seconds, op in r["calls"]]
    worst = max(during)
    figures = {
        "messages": len(produced), "in_flight_at_upgrade": in_flight,
        "upgrade_seconds": round(upgrade_end - upgrade_start, 2),
        "lock_retries": len(retries), "calls": len(calls), "calls_during_upgrade": len(during),
        "max_call_during_upgrade": [round(worst[0], 3), worst[1]],
        "max_claim_or_archive_during_upgrade": round(
            max(s for s, op in during if op != "enqueue"), 3),
        "median_call": round(statistics.median(s for s, _ in calls), 4),
    }
    print(f"\nupgrade under load ({long_transaction=}):", json.dumps(figures))
    assert worst[0] < STALL_BOUND, figures


class UnderLoad(NamedTuple):
    """What ``upgrade_under_load`` saw: each client's record and the upgrade's span."""

    results: dict[str, Any]
    """Per client file name: its ``ids``, ``errors`` and timed ``calls`` (old_client.py)."""
    held: int
    """The message enqueued by the transaction held open across the upgrade."""
    in_flight: int
    upgrade_start: float
    upgrade_end: float


async def upgrade_under_load(dsn: str, tmp_path: Path, *,
                             long_transaction: bool) -> UnderLoad:
    """``Admin.install()`` while old-schema producers and consumers run (OLD_CLIENT).

    The database is at the previous revision. The upgrade starts once a few thousand
    messages are waiting; with ``long_transaction`` an application transaction that
    enqueued stays open for 3 s across it (the worst case for the upgrade's locks).
    Returns when every client has finished and the queue is drained.
    """
    await sql(dsn, "INSERT INTO pgqrs_queues (queue_name) VALUES ('load')")
    workers = [("producer", i) for i in range(1, PRODUCERS + 1)] + [
        ("consumer", i) for i in range(PRODUCERS + 1, PRODUCERS + CONSUMERS + 1)]
    for _, worker_id in workers:
        await sql(dsn, f"INSERT INTO pgqrs_workers (id, hostname, port, queue_id) "
                       f"VALUES ({worker_id}, 'old', {worker_id}, 1)")
    done = tmp_path / "done"
    procs = []
    for role, worker_id in workers:
        out = tmp_path / f"{role}-{worker_id}.json"
        with (tmp_path / f"{role}-{worker_id}.err").open("w") as err:
            procs.append((role, out, subprocess.Popen(
                [sys.executable, str(OLD_CLIENT), role, dsn, str(worker_id), str(out),
                 str(done), str(PER_PRODUCER)], stderr=err)))
    holder = await asyncpg.connect(dsn)
    try:
        in_flight = await wait_for_backlog(dsn, at_least=2000)
        await holder.execute("BEGIN")
        held = await holder.fetchval(hold_queue_lock_sql() + " RETURNING id")

        async def release_holder() -> None:
            await asyncio.sleep(3.0 if long_transaction else 0)
            await holder.execute("COMMIT")

        async def upgrade() -> tuple[float, float]:
            await asyncio.sleep(0.3)
            async with Admin(dsn) as admin:
                start = time.time()
                await admin.install()
                return start, time.time()

        (upgrade_start, upgrade_end), _ = await asyncio.gather(upgrade(), release_holder())
        for role, _, proc in procs:
            if role == "producer":
                assert proc.wait(timeout=60) == 0, [p.read_text() for p in tmp_path.glob("*.err")]
        done.touch()
        for _, _, proc in procs:
            assert proc.wait(timeout=60) == 0, [p.read_text() for p in tmp_path.glob("*.err")]
    finally:
        done.touch()
        await holder.close()
        for _, _, proc in procs:
            if proc.poll() is None:
                proc.kill()
    results = {out.name: json.loads(out.read_text()) for _, out, _ in procs}
    return UnderLoad(results, held, in_flight, upgrade_start, upgrade_end)


async def wait_for_backlog(dsn: str, *, at_least: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while True:
        rows = await sql(dsn, "SELECT (SELECT count(*) FROM pgqrs_messages) AS live, "
                              "(SELECT count(*) FROM pgqrs_archive) AS archived")
        live, archived = rows[0]["live"], rows[0]["archived"]
        if live >= at_least and archived > 0:
            return int(live)
        assert time.monotonic() < deadline, (live, archived)
        await asyncio.sleep(0.05)
