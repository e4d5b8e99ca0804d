"""Revision pgqrs_0003 (message options): data kept, indexes built online, reviewable.

Its indexes are built ``CONCURRENTLY`` before the upgrade's transaction whenever pgqrs owns
the connection (``migrate.prepare_sync``), plainly inside it otherwise; both are tested,
and so is the re-run after an interrupted concurrent build. The upgrade-under-load test
is pgqrs_0002's, run from pgqrs_0002 with 0.2-era clients.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from test_0002_queue_policy import (
    PER_PRODUCER,
    POLICY_DEFAULTS,
    PRODUCERS,
    ROOT,
    SEED_0001,
    STALL_BOUND,
    migrate_to,
    offline,
    policies,
    sql,
    upgrade_under_load,
)

from pgqrs import Admin, Consumer, Producer, migrate

INDEXES = {"ix_pgqrs_messages_claim", "uq_pgqrs_messages_dedup_key", "ix_pgqrs_messages_parked"}
NEW_MESSAGE_COLUMNS = {"priority", "parked", "dedup_key", "group_key", "headers"}
NEW_ARCHIVE_COLUMNS = {"priority", "dedup_key", "group_key", "headers"}
OWN = "pgqrs migration pgqrs_0003:"
"""This revision's log lines (an upgrade to head also logs later revisions' steps)."""


def revision_module() -> Any:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrate.MIGRATIONS_DIR)).get_revision("pgqrs_0003")
    assert script is not None
    return script.module


async def indexes(dsn: str) -> dict[str, bool]:
    """The revision's indexes present on pgqrs_messages, and whether each is valid."""
    rows = await sql(dsn, "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON "
                          "c.oid = i.indexrelid WHERE i.indrelid = 'pgqrs_messages'::regclass")
    return {r["relname"]: r["indisvalid"] for r in rows if r["relname"] in INDEXES}


async def columns(dsn: str, table: str) -> set[str]:
    rows = await sql(dsn, "SELECT column_name FROM information_schema.columns "
                          "WHERE table_name = $1", table)
    return {r["column_name"] for r in rows}


async def old_rows(dsn: str) -> dict[str, list[dict[str, Any]]]:
    """Every message and archive row, without the columns pgqrs_0003 adds."""
    out = {}
    for table, new in (("pgqrs_messages", NEW_MESSAGE_COLUMNS),
                       ("pgqrs_archive", NEW_ARCHIVE_COLUMNS)):
        rows = await sql(dsn, f"SELECT * FROM {table} ORDER BY id")
        out[table] = [{k: v for k, v in dict(r).items() if k not in new} for r in rows]
    return out


async def seeded_0002(dsn: str) -> dict[str, list[dict[str, Any]]]:
    await migrate_to(dsn, "pgqrs_0002")
    await sql(dsn, SEED_0001)
    await sql(dsn, "UPDATE pgqrs_queues SET max_read_ct = 7 WHERE queue_name = 'b'")
    return await old_rows(dsn)


async def test_upgrade_from_0002_keeps_every_row_and_builds_online(
        empty_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    before = await seeded_0002(empty_dsn)
    caplog.set_level(logging.INFO, logger="pgqrs.migrations")
    async with Admin(empty_dsn) as admin:
        await admin.install()  # the path users take: pgqrs owns the connection
        assert await admin.verify() == migrate.head_revision()
        assert await old_rows(empty_dsn) == before  # nothing lost, nothing changed
        assert (await policies(empty_dsn))[0] == POLICY_DEFAULTS
        defaults = await sql(empty_dsn, "SELECT DISTINCT priority, parked, dedup_key, "
                                        "group_key, headers FROM pgqrs_messages")
        assert [tuple(r) for r in defaults] == [(0, False, None, None, None)]
        built = [r.getMessage() for r in caplog.records if "building index" in r.getMessage()
                 and OWN in r.getMessage()]
        assert len(built) == 3, built
        assert await indexes(empty_dsn) == dict.fromkeys(INDEXES, True)
        # The old rows behave as they did: the live one is claimed (and is the only one).
        async with Consumer(empty_dsn, "a", "new-code", 9) as consumer:
            (claimed,) = await consumer.dequeue(10)
            assert claimed.payload == {"state": "live"} and claimed.headers == {}
            assert await consumer.archive(claimed)
        async with Producer(empty_dsn, "a", "new-producer", 10) as producer:
            await producer.enqueue({"new": 1}, group="g", dedup_key="k", headers={"h": "v"})
        metrics = await admin.queue_metrics("a")
        assert (metrics.pending_messages, metrics.leased_messages, metrics.delayed_messages,
                metrics.dead_messages) == (1, 1, 1, 1)


async def test_upgrade_inside_a_lent_transaction_builds_in_it(
        empty_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    await seeded_0002(empty_dsn)
    # A big table: building inside the transaction holds writes back, and says so.
    await sql(empty_dsn, "INSERT INTO pgqrs_messages (queue_id, payload) SELECT 2, '{}' "
                         f"FROM generate_series(1, {revision_module().BIG_TABLE})")
    before = await old_rows(empty_dsn)
    caplog.set_level(logging.INFO, logger="pgqrs.migrations")
    engine = create_async_engine(empty_dsn.replace("postgresql://", "postgresql+asyncpg://"),
                                 poolclass=NullPool)
    try:
        async with Admin(empty_dsn) as admin:
            async with engine.connect() as conn:
                await admin.install(connection=conn)
                await conn.rollback()  # the caller's transaction: nothing stays
            assert await indexes(empty_dsn) == {}
            assert await columns(empty_dsn, "pgqrs_messages") & NEW_MESSAGE_COLUMNS == set()
            async with engine.begin() as conn:
                await admin.install(connection=conn)
            assert await admin.verify() == migrate.head_revision()
    finally:
        await engine.dispose()
    assert not any("building index" in r.getMessage() and OWN in r.getMessage()
                   for r in caplog.records)
    warned = [r.getMessage() for r in caplog.records if OWN in r.getMessage() and
              "inside this transaction" in
              r.getMessage()]
    assert warned and "pgqrs install" in warned[0]
    assert await indexes(empty_dsn) == dict.fromkeys(INDEXES, True)
    assert await old_rows(empty_dsn) == before


async def test_an_interrupted_concurrent_build_is_finished_by_the_next_install(
        empty_dsn: str) -> None:
    await seeded_0002(empty_dsn)
    module = revision_module()
    # A first try got the columns in, then its unique index build failed half way (here:
    # duplicate keys written meanwhile), leaving an INVALID index behind.
    await sql(empty_dsn, module._add_columns("public", "pgqrs_messages",
                                             module._MESSAGE_COLUMNS))
    await sql(empty_dsn, "UPDATE pgqrs_messages SET dedup_key = 'dup' WHERE id IN (1, 2)")
    with pytest.raises(asyncpg.UniqueViolationError):
        await sql(empty_dsn, module._index_statement(
            "public", "uq_pgqrs_messages_dedup_key", True,
            "(queue_id, dedup_key) WHERE dedup_key IS NOT NULL", concurrently=True))
    assert await indexes(empty_dsn) == {"uq_pgqrs_messages_dedup_key": False}
    await sql(empty_dsn, "UPDATE pgqrs_messages SET dedup_key = NULL")
    async with Admin(empty_dsn) as admin:
        await admin.install()
        assert await admin.verify() == migrate.head_revision()
        await admin.install()  # and again: nothing left to do
    assert await indexes(empty_dsn) == dict.fromkeys(INDEXES, True)


async def test_alembic_upgrade_head_from_the_command_line_builds_online_too(
        empty_dsn: str) -> None:
    await seeded_0002(empty_dsn)
    module = revision_module()
    # An interrupted build left an INVALID index: only the online step drops and rebuilds
    # it (and says so), so its warning shows that `alembic upgrade head` took that path.
    await sql(empty_dsn, module._add_columns("public", "pgqrs_messages",
                                             module._MESSAGE_COLUMNS))
    await sql(empty_dsn, "UPDATE pgqrs_messages SET dedup_key = 'dup' WHERE id IN (1, 2)")
    with pytest.raises(asyncpg.UniqueViolationError):
        await sql(empty_dsn, module._index_statement(
            "public", "ix_pgqrs_messages_claim", True, "(queue_id, dedup_key)",
            concurrently=True))
    await sql(empty_dsn, "UPDATE pgqrs_messages SET dedup_key = NULL")
    env = {**os.environ, "PGQRS_DSN": empty_dsn}
    env.pop("DATABASE_URL", None)
    up = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    assert "dropping the unfinished index ix_pgqrs_messages_claim" in up.stderr
    assert await indexes(empty_dsn) == dict.fromkeys(INDEXES, True)
    claim = await sql(empty_dsn, "SELECT pg_get_indexdef('ix_pgqrs_messages_claim'::regclass)")
    assert "priority DESC, vt, id" in claim[0][0]  # the real one, not the leftover


async def test_prepare_does_nothing_on_a_fresh_install_or_at_head(empty_dsn: str) -> None:
    engine = create_async_engine(empty_dsn.replace("postgresql://", "postgresql+asyncpg://"),
                                 poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.run_sync(migrate.prepare_sync, "public")  # no schema: nothing
            assert await sql(empty_dsn, "SELECT to_regclass('pgqrs_messages') AS t") == \
                   [(None,)]
        await migrate_to(empty_dsn, "pgqrs_0002")
        async with engine.begin() as conn:  # not autocommit: leaves it to the upgrade
            await conn.run_sync(migrate.prepare_sync, "public")
        assert await columns(empty_dsn, "pgqrs_messages") & NEW_MESSAGE_COLUMNS == set()
    finally:
        await engine.dispose()


async def test_downgrade_and_upgrade_again_round_trip_with_data(empty_dsn: str) -> None:
    before = await seeded_0002(empty_dsn)
    async with Admin(empty_dsn) as admin:
        await admin.install()
    async with Producer(empty_dsn, "a", "p", 11) as producer:
        await producer.enqueue_batch([{"g": i} for i in range(3)], group="g", priority=2,
                                     headers={"h": "1"})
        await producer.enqueue({"k": 1}, dedup_key="k")
    count = len((await old_rows(empty_dsn))["pgqrs_messages"])
    await migrate_to(empty_dsn, "pgqrs_0002", down=True)
    assert await columns(empty_dsn, "pgqrs_messages") & NEW_MESSAGE_COLUMNS == set()
    assert await columns(empty_dsn, "pgqrs_archive") & NEW_ARCHIVE_COLUMNS == set()
    assert await sql(empty_dsn, "SELECT to_regclass('pgqrs_groups') AS t") == [(None,)]
    assert await indexes(empty_dsn) == {}
    after = await old_rows(empty_dsn)
    assert len(after["pgqrs_messages"]) == count  # every row kept
    assert after["pgqrs_archive"] == before["pgqrs_archive"]
    revision = await sql(empty_dsn, "SELECT version_num FROM pgqrs_alembic_version")
    assert [r["version_num"] for r in revision] == ["pgqrs_0002"]
    await migrate_to(empty_dsn, "head")
    assert await old_rows(empty_dsn) == after
    assert await indexes(empty_dsn) == dict.fromkeys(INDEXES, True)
    env = {**os.environ, "PGQRS_DSN": empty_dsn}
    env.pop("DATABASE_URL", None)
    check = subprocess.run([sys.executable, "-m", "alembic", "check"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr  # models == migrated schema


def test_offline_sql_is_reviewable_ddl() -> None:
    up = offline("upgrade", "pgqrs_0002:pgqrs_0003")
    lines = [line for line in up.splitlines() if line and not line.startswith("--")]
    assert lines[0] == "BEGIN;" and lines[-1] == "COMMIT;"
    assert lines[1] == "SET LOCAL lock_timeout = '1s';"  # before any ALTER
    assert ("ALTER TABLE public.pgqrs_messages ADD COLUMN IF NOT EXISTS priority smallint "
            "DEFAULT 0 NOT NULL, ADD COLUMN IF NOT EXISTS parked boolean DEFAULT false NOT "
            "NULL, ADD COLUMN IF NOT EXISTS dedup_key text, ADD COLUMN IF NOT EXISTS "
            "group_key text, ADD COLUMN IF NOT EXISTS headers jsonb;") in lines
    assert any(line.startswith("CREATE TABLE IF NOT EXISTS public.pgqrs_groups (")
               for line in lines)
    assert ('CREATE INDEX IF NOT EXISTS "ix_pgqrs_messages_claim" ON public.pgqrs_messages '
            "(queue_id, priority DESC, vt, id) WHERE NOT parked;") in lines
    assert ('CREATE UNIQUE INDEX IF NOT EXISTS "uq_pgqrs_messages_dedup_key" ON '
            "public.pgqrs_messages (queue_id, dedup_key) WHERE dedup_key IS NOT NULL;") in lines
    assert "UPDATE" not in up.replace("UPDATE public.pgqrs_alembic_version", "")  # no backfill
    assert ("UPDATE public.pgqrs_alembic_version SET version_num='pgqrs_0003' WHERE "
            "public.pgqrs_alembic_version.version_num = 'pgqrs_0002';") in lines

    down = offline("downgrade", "pgqrs_0003:pgqrs_0002")
    assert "SET LOCAL lock_timeout = '1s';" in down
    assert 'DROP INDEX IF EXISTS public."ix_pgqrs_messages_claim";' in down
    assert "DROP TABLE IF EXISTS public.pgqrs_groups;" in down
    assert "DROP COLUMN IF EXISTS parked" in down

    jobs = offline("-x", "schema=jobs", "upgrade", "pgqrs_0002:pgqrs_0003")
    assert "ALTER TABLE jobs.pgqrs_messages ADD COLUMN IF NOT EXISTS priority" in jobs
    assert "public." not in jobs


# -- upgrade under load ----------------------------------------------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("long_transaction", [False, True], ids=["plain", "long-transaction"])
async def test_upgrade_while_producers_and_consumers_run(
        empty_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        long_transaction: bool) -> None:
    await migrate_to(empty_dsn, "pgqrs_0002")
    caplog.set_level(logging.INFO, logger="pgqrs.migrations")
    load = await upgrade_under_load(empty_dsn, tmp_path, long_transaction=long_transaction)
    results, held, in_flight = load.results, load.held, load.in_flight
    upgrade_start, upgrade_end = load.upgrade_start, load.upgrade_end
    assert [e for r in results.values() for e in r["errors"]] == []
    produced = [i for name, r in results.items() if name.startswith("producer")
                for i in r["ids"]] + [held]
    archived = [r["original_msg_id"] for r in await sql(
        empty_dsn, "SELECT original_msg_id FROM pgqrs_archive")]
    assert len(produced) == PRODUCERS * PER_PRODUCER + 1
    assert sorted(archived) == sorted(produced)  # none lost, none archived twice
    assert await sql(empty_dsn, "SELECT id FROM pgqrs_messages") == []
    assert await indexes(empty_dsn) == dict.fromkeys(INDEXES, True)
    built = [r for r in caplog.records if "building index" in r.getMessage()
             and OWN in r.getMessage()]
    assert len(built) == 3
    retries = [r for r in caplog.records if "lock not available" in r.getMessage()]
    assert bool(retries) is long_transaction

    during = [(seconds, op) for r in results.values() for start, seconds, op in r["calls"]
              if start <= upgrade_end and start + seconds >= upgrade_start]
    worst = max(during)
    figures = {
        "messages": len(produced), "in_flight_at_upgrade": in_flight,
        "upgrade_seconds": round(upgrade_end - upgrade_start, 2),
        "lock_retries": len(retries), "calls_during_upgrade": len(during),
        "max_call_during_upgrade": [round(worst[0], 3), worst[1]],
    }
    print(f"\nupgrade 0002->0003 under load ({long_transaction=}):", json.dumps(figures))
    assert worst[0] < STALL_BOUND, figures
