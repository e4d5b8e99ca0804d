"""Revision pgqrs_0005 (lean hot path): data kept, dropped online, restored, reviewable.

Upgrading from pgqrs_0004 drops the three foreign keys of ``pgqrs_messages`` and five
single-column indexes; the online path (``prepare_online``, whenever pgqrs owns the
connection) drops the indexes ``CONCURRENTLY``, the in-transaction path plainly. The
downgrade restores them all (foreign keys ``NOT VALID`` then validated). The revision id is
imported from the revision file, so renumbering touches nothing here but the RELEASED list.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from test_0002_queue_policy import (
    PER_PRODUCER,
    PRODUCERS,
    ROOT,
    SEED_0001,
    STALL_BOUND,
    migrate_to,
    offline,
    snapshot,
    sql,
    upgrade_under_load,
)

from pgqrs import Admin, Consumer, Producer, migrate


def revision_module() -> Any:
    from alembic.script import ScriptDirectory

    for rev in ScriptDirectory(str(migrate.MIGRATIONS_DIR)).walk_revisions():
        if Path(rev.path).name.endswith("_lean_hot_path.py"):
            return rev.module
    raise AssertionError("no lean hot path revision")


MODULE = revision_module()
REVISION: str = MODULE.revision
PREVIOUS: str = MODULE.down_revision
FOREIGN_KEYS = {name for name, _, _, _ in MODULE.FOREIGN_KEYS}
INDEXES = {name for name, _, _ in MODULE.INDEXES}
HELD = MODULE.HELD_INDEX[0]


async def foreign_keys(dsn: str) -> dict[str, bool]:
    """The revision's foreign keys present, and whether each is validated."""
    rows = await sql(dsn, "SELECT conname, convalidated FROM pg_constraint WHERE contype = 'f' "
                          "AND conrelid = 'pgqrs_messages'::regclass")
    return {r["conname"]: r["convalidated"] for r in rows if r["conname"] in FOREIGN_KEYS}


async def indexes(dsn: str, names: set[str] = INDEXES) -> dict[str, bool]:
    """The revision's dropped indexes present, and whether each is valid."""
    rows = await sql(dsn, "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON "
                          "c.oid = i.indexrelid")
    return {r["relname"]: r["indisvalid"] for r in rows if r["relname"] in names}


async def at_head(dsn: str) -> bool:
    """The schema as this revision leaves it: no foreign key, no dropped index, held built."""
    return (await foreign_keys(dsn) == {} and await indexes(dsn) == {}
            and await indexes(dsn, {HELD}) == {HELD: True})


async def at_previous(dsn: str) -> bool:
    """The schema of the previous revision: every foreign key and index, all valid."""
    return (await foreign_keys(dsn) == dict.fromkeys(FOREIGN_KEYS, True)
            and await indexes(dsn) == dict.fromkeys(INDEXES, True)
            and await indexes(dsn, {HELD}) == {})


async def seeded(dsn: str) -> dict[str, list[dict[str, Any]]]:
    await migrate_to(dsn, "pgqrs_0001")
    await sql(dsn, SEED_0001)
    await migrate_to(dsn, PREVIOUS)
    return await snapshot(dsn)


def alembic_check(dsn: str) -> None:
    env = {**os.environ, "PGQRS_DSN": dsn}
    env.pop("DATABASE_URL", None)
    check = subprocess.run([sys.executable, "-m", "alembic", "check"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr  # models == migrated schema


async def test_upgrade_from_0004_keeps_every_row_and_drops_online(
        empty_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    before = await seeded(empty_dsn)
    assert await at_previous(empty_dsn)
    caplog.set_level(logging.INFO, logger="pgqrs.migrations")
    async with Admin(empty_dsn) as admin:
        await admin.install()  # the path users take: pgqrs owns the connection
        assert await admin.verify() == migrate.head_revision()
        assert await snapshot(empty_dsn) == before  # nothing lost, nothing changed
        assert await at_head(empty_dsn)
        dropped = [r.getMessage() for r in caplog.records
                   if "dropping index" in r.getMessage() and "concurrently" in r.getMessage()]
        assert len(dropped) == len(INDEXES), dropped
        # The old rows work with the new code: claimed, acknowledged, counted.
        async with Consumer(empty_dsn, "a", "new-code", 9) as consumer:
            (claimed,) = await consumer.dequeue(10)
            assert claimed.payload == {"state": "live"}
            assert await consumer.archive(claimed)
        async with Producer(empty_dsn, "a", "new-producer", 10) as producer:
            await producer.enqueue({"new": 1})
        metrics = await admin.queue_metrics("a")
        assert (metrics.pending_messages, metrics.leased_messages, metrics.delayed_messages,
                metrics.dead_messages) == (1, 1, 1, 1)
    alembic_check(empty_dsn)


async def test_upgrade_inside_a_lent_transaction_drops_in_it(empty_dsn: str) -> None:
    before = await seeded(empty_dsn)
    engine = create_async_engine(empty_dsn.replace("postgresql://", "postgresql+asyncpg://"),
                                 poolclass=NullPool)
    try:
        async with Admin(empty_dsn) as admin:
            async with engine.connect() as conn:
                await admin.install(connection=conn)
                await conn.rollback()  # the caller's transaction: nothing stays
            assert await at_previous(empty_dsn)
            async with engine.begin() as conn:
                await admin.install(connection=conn)
            assert await admin.verify() == migrate.head_revision()
    finally:
        await engine.dispose()
    assert await at_head(empty_dsn)
    assert await snapshot(empty_dsn) == before


async def test_an_interrupted_concurrent_drop_is_finished_by_the_next_install(
        empty_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    before = await seeded(empty_dsn)
    # A DROP INDEX CONCURRENTLY cancelled after its first transaction leaves the index
    # marked invalid (and not ready), then the process died before upgrade() ran.
    await sql(empty_dsn, "ALTER TABLE pgqrs_messages DROP CONSTRAINT "
                         "fk_pgqrs_messages_queue_id_pgqrs_queues")
    await sql(empty_dsn, "UPDATE pg_index SET indisvalid = false, indisready = false "
                         "WHERE indexrelid = 'ix_pgqrs_archive_consumer_worker_id'::regclass")
    assert (await indexes(empty_dsn))["ix_pgqrs_archive_consumer_worker_id"] is False
    # And a CREATE INDEX CONCURRENTLY of the replacement that failed half way.
    await sql(empty_dsn, MODULE._held_statement("public", concurrently=True))
    await sql(empty_dsn, "UPDATE pg_index SET indisvalid = false "
                         f"WHERE indexrelid = '{HELD}'::regclass")
    caplog.set_level(logging.WARNING, logger="pgqrs.migrations")
    async with Admin(empty_dsn) as admin:
        await admin.install()
        assert await admin.verify() == migrate.head_revision()
        await admin.install()  # and again: nothing left to do
    finished = [r.getMessage() for r in caplog.records if "interrupted drop" in r.getMessage()]
    assert finished == [f"pgqrs migration {REVISION}: finishing the interrupted drop of index "
                        "ix_pgqrs_archive_consumer_worker_id"]
    rebuilt = [r.getMessage() for r in caplog.records if "unfinished index" in r.getMessage()]
    assert len(rebuilt) == 1 and HELD in rebuilt[0]
    assert await at_head(empty_dsn)
    assert await snapshot(empty_dsn) == before


async def test_alembic_upgrade_head_from_the_command_line_drops_online_too(
        empty_dsn: str) -> None:
    await seeded(empty_dsn)
    # An interrupted drop left an INVALID index: only the online step says it finishes
    # it, so its warning shows that `alembic upgrade head` took that path.
    await sql(empty_dsn, "UPDATE pg_index SET indisvalid = false "
                         "WHERE indexrelid = 'ix_pgqrs_messages_consumer_worker_id'::regclass")
    env = {**os.environ, "PGQRS_DSN": empty_dsn}
    env.pop("DATABASE_URL", None)
    up = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    assert ("finishing the interrupted drop of index ix_pgqrs_messages_consumer_worker_id"
            in up.stderr)
    assert await at_head(empty_dsn)


async def test_downgrade_restores_everything_and_round_trips_with_data(
        empty_dsn: str) -> None:
    await seeded(empty_dsn)
    async with Admin(empty_dsn) as admin:
        await admin.install()
        async with Producer(empty_dsn, "a", "p", 11) as producer:
            await producer.enqueue_batch([{"n": i} for i in range(3)])
        # A worker deleted by hand (not through pgqrs, which would forget its ids): the
        # downgrade clears what the old ON DELETE SET NULL would have.
        await sql(empty_dsn, "DELETE FROM pgqrs_workers WHERE hostname = 'cons'")
    before = await snapshot(empty_dsn)
    assert any(m["consumer_worker_id"] == 2 for m in before["pgqrs_messages"])

    await migrate_to(empty_dsn, PREVIOUS, down=True)
    assert await at_previous(empty_dsn)
    after = await snapshot(empty_dsn)
    expected = [{**m, "consumer_worker_id": None if m["consumer_worker_id"] == 2
                 else m["consumer_worker_id"]} for m in before["pgqrs_messages"]]
    assert after["pgqrs_messages"] == expected  # every row kept, the dangling id cleared
    assert after["pgqrs_archive"] == before["pgqrs_archive"]
    assert after["pgqrs_queues"] == before["pgqrs_queues"]
    version = await sql(empty_dsn, "SELECT version_num FROM pgqrs_alembic_version")
    assert [r["version_num"] for r in version] == [PREVIOUS]

    await migrate_to(empty_dsn, "head")  # the in-transaction path this time
    assert await snapshot(empty_dsn) == after
    assert await at_head(empty_dsn)
    alembic_check(empty_dsn)


async def test_restore_online_does_the_downgrades_work_first(empty_dsn: str) -> None:
    await seeded(empty_dsn)
    async with Admin(empty_dsn) as admin:
        await admin.install()
    before = await snapshot(empty_dsn)
    engine = create_async_engine(empty_dsn.replace("postgresql://", "postgresql+asyncpg://"),
                                 poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.run_sync(MODULE.restore_online, "public")
            await auto.run_sync(MODULE.restore_online, "public")  # re-runnable
    finally:
        await engine.dispose()
    assert await at_previous(empty_dsn)
    await migrate_to(empty_dsn, PREVIOUS, down=True)  # finds it all in place
    assert await snapshot(empty_dsn) == before
    await migrate_to(empty_dsn, "head")
    assert await at_head(empty_dsn)


def test_offline_sql_is_reviewable_ddl() -> None:
    up = offline("upgrade", f"{PREVIOUS}:{REVISION}")
    lines = [line for line in up.splitlines() if line and not line.startswith("--")]
    assert lines[0] == "BEGIN;" and lines[-1] == "COMMIT;"
    assert lines[1] == "SET LOCAL lock_timeout = '1s';"  # before any DDL
    for name in FOREIGN_KEYS:
        assert (f'ALTER TABLE public.pgqrs_messages DROP CONSTRAINT IF EXISTS "{name}";'
                in lines)
    assert 'DROP INDEX IF EXISTS public."ix_pgqrs_messages_consumer_worker_id";' in lines
    assert 'DROP INDEX IF EXISTS public."ix_pgqrs_archive_original_msg_id";' in lines
    assert (f'CREATE INDEX IF NOT EXISTS "{HELD}" ON public.pgqrs_messages '
            "(consumer_worker_id) WHERE consumer_worker_id IS NOT NULL;") in lines
    assert "CONCURRENTLY" not in up  # a script runs in one transaction
    assert up.count("CREATE ") == 1
    assert not any(w in up for w in ("UPDATE public.pgqrs_messages",
                                     "ALTER COLUMN"))  # no rewrite, no backfill
    assert f"SET version_num='{REVISION}'" in up

    down = offline("downgrade", f"{REVISION}:{PREVIOUS}")
    assert "SET LOCAL lock_timeout = '1s';" in down
    assert ('CREATE INDEX IF NOT EXISTS "ix_pgqrs_messages_producer_worker_id" ON '
            "public.pgqrs_messages (producer_worker_id);") in down
    assert ("FOREIGN KEY (consumer_worker_id) REFERENCES public.pgqrs_workers (id) ON DELETE "
            "SET NULL NOT VALID") in down
    assert ('ALTER TABLE public.pgqrs_messages VALIDATE CONSTRAINT '
            '"fk_pgqrs_messages_queue_id_pgqrs_queues";') in down
    assert f'DROP INDEX IF EXISTS public."{HELD}";' in down

    jobs = offline("-x", "schema=jobs", "upgrade", f"{PREVIOUS}:{REVISION}")
    assert "ALTER TABLE jobs.pgqrs_messages DROP CONSTRAINT" in jobs
    assert "public." not in jobs


# -- upgrade under load ----------------------------------------------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("long_transaction", [False, True], ids=["plain", "long-transaction"])
async def test_upgrade_while_producers_and_consumers_run(
        empty_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        long_transaction: bool) -> None:
    await migrate_to(empty_dsn, PREVIOUS)
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
    assert await at_head(empty_dsn)
    dropped = [r for r in caplog.records if "dropping index" in r.getMessage()]
    assert len(dropped) == len(INDEXES)
    retries = [r for r in caplog.records if "lock not available" in r.getMessage()]
    if long_transaction:
        # The concurrent build of the held index waits the transaction out (blocking no
        # one), so the foreign key drops that follow usually find their locks free.
        assert upgrade_end - upgrade_start >= 2.0
    else:
        assert retries == []

    during = [(seconds, op) for r in results.values() for start, seconds, op in r["calls"]
              if start <= upgrade_end and start + seconds >= upgrade_start]
    worst = max(during)
    figures = {
        "messages": len(produced), "in_flight_at_upgrade": in_flight,
        "upgrade_seconds": round(upgrade_end - upgrade_start, 2),
        "lock_retries": len(retries), "calls_during_upgrade": len(during),
        "max_call_during_upgrade": [round(worst[0], 3), worst[1]],
    }
    print(f"\nupgrade {PREVIOUS}->{REVISION} under load ({long_transaction=}):",
          json.dumps(figures))
    assert worst[0] < STALL_BOUND, figures
