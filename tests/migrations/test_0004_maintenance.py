"""Revision pgqrs_0004 (maintenance): data kept, round trip, reviewable offline, online-safe.

The revision id is imported from the revision file (``REVISION``), so renumbering the file
touches nothing here but its name in the RELEASED list of test_0002_queue_policy.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from test_0002_queue_policy import SEED_0001, migrate_to, offline, snapshot, sql

from pgqrs import Admin, Maintenance, migrate

ROOT = Path(__file__).resolve().parents[2]


def revision_module() -> Any:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrate.MIGRATIONS_DIR))
    for rev in script.walk_revisions():
        if Path(rev.path).name.endswith("_maintenance.py"):
            return rev.module
    raise AssertionError("no maintenance revision")


MODULE = revision_module()
REVISION: str = MODULE.revision
PREVIOUS: str = MODULE.down_revision


async def reloptions(dsn: str, table: str) -> list[str]:
    rows = await sql(dsn, "SELECT coalesce(reloptions, '{}') AS o FROM pg_class "
                          f"WHERE relname = '{table}'")
    return sorted(rows[0]["o"])


async def tables(dsn: str) -> set[str]:
    rows = await sql(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def test_upgrade_with_data_in_place_then_round_trip(empty_dsn: str) -> None:
    await migrate_to(empty_dsn, "pgqrs_0001")
    await sql(empty_dsn, SEED_0001)
    await migrate_to(empty_dsn, PREVIOUS)
    before = await snapshot(empty_dsn)

    await migrate_to(empty_dsn, REVISION)
    assert await snapshot(empty_dsn) == before  # nothing lost, nothing changed
    assert {"pgqrs_schedules", "pgqrs_maintenance"} <= await tables(empty_dsn)
    assert await reloptions(empty_dsn, "pgqrs_messages") == sorted(
        f"{k}={v}" for k, v in MODULE.MESSAGES_STORAGE)
    assert await reloptions(empty_dsn, "pgqrs_archive") == sorted(
        f"{k}={v}" for k, v in MODULE.ARCHIVE_STORAGE)
    lease = await sql(empty_dsn, "SELECT id, holder FROM pgqrs_maintenance")
    assert [tuple(r) for r in lease] == [(1, None)]
    async with Admin(empty_dsn) as admin:
        if migrate.head_revision() == REVISION:
            assert await admin.verify() == REVISION
        await admin.schedule("a", "s", cron="*/5 * * * *", payload={"x": 1})
        # The old rows work with the new code: retention, and the runner's round.
        assert await admin.purge_archive(older_than=0.001, dry_run=True) == 2
        async with Maintenance(empty_dsn, name="r") as runner:
            report = await runner.run_once()
        assert report is not None and report.dead_lettered == 1  # the exhausted one
        assert await admin.purge_archive(older_than=0.001) == 3
    before_down = await snapshot(empty_dsn)

    await migrate_to(empty_dsn, PREVIOUS, down=True)
    assert not {"pgqrs_schedules", "pgqrs_maintenance"} & await tables(empty_dsn)
    assert await reloptions(empty_dsn, "pgqrs_messages") == []
    assert await reloptions(empty_dsn, "pgqrs_archive") == []
    assert await snapshot(empty_dsn) == before_down
    version = await sql(empty_dsn, "SELECT version_num FROM pgqrs_alembic_version")
    assert [r["version_num"] for r in version] == [PREVIOUS]

    await migrate_to(empty_dsn, "head")
    assert await snapshot(empty_dsn) == before_down
    env = {**os.environ, "PGQRS_DSN": empty_dsn}
    env.pop("DATABASE_URL", None)
    check = subprocess.run([sys.executable, "-m", "alembic", "check"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr  # models == migrated schema


def test_offline_sql_is_reviewable_ddl() -> None:
    up = offline("upgrade", f"{PREVIOUS}:{REVISION}")
    lines = [line for line in up.splitlines() if line and not line.startswith("--")]
    assert lines[0] == "BEGIN;" and lines[-1] == "COMMIT;"
    assert lines[1] == "SET LOCAL lock_timeout = '1s';"  # before any DDL
    assert "CREATE TABLE public.pgqrs_schedules (" in lines
    assert "CREATE TABLE public.pgqrs_maintenance (" in lines
    assert "INSERT INTO public.pgqrs_maintenance (id) VALUES (1);" in lines
    assert ("ALTER TABLE public.pgqrs_messages SET (fillfactor = 85, "
            "autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_scale_factor = 0.01, "
            "autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_threshold = 1000, "
            "autovacuum_analyze_scale_factor = 0.05);") in lines
    # No index and no rewrite on the hot table; nothing but storage settings touch it.
    assert not [line for line in lines if "pgqrs_messages" in line
                and not line.startswith("ALTER TABLE public.pgqrs_messages SET (")]
    assert f"SET version_num='{REVISION}'" in up

    down = offline("downgrade", f"{REVISION}:{PREVIOUS}")
    assert "SET LOCAL lock_timeout = '1s';" in down
    assert "ALTER TABLE public.pgqrs_messages RESET (fillfactor" in down
    assert "DROP TABLE public.pgqrs_schedules;" in down

    jobs = offline("-x", "schema=jobs", "upgrade", f"{PREVIOUS}:{REVISION}")
    assert "ALTER TABLE jobs.pgqrs_messages SET (" in jobs
    assert "public." not in jobs


async def test_a_policy_change_in_flight_makes_the_upgrade_retry(
        empty_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    # The foreign key to pgqrs_queues needs SHARE ROW EXCLUSIVE there, which an open
    # policy change (ROW EXCLUSIVE) blocks; enqueues (ROW SHARE) never do.
    await migrate_to(empty_dsn, PREVIOUS)
    await sql(empty_dsn, "INSERT INTO pgqrs_queues (queue_name) VALUES ('a')")
    holder = await asyncpg.connect(empty_dsn)
    probe = await asyncpg.connect(empty_dsn)
    caplog.set_level(logging.WARNING, logger="pgqrs.migrations")
    try:
        await holder.execute("BEGIN")
        await holder.execute("UPDATE pgqrs_queues SET paused = false")

        async def enqueue_meanwhile() -> float:
            await asyncio.sleep(0.3)
            start = asyncio.get_running_loop().time()
            await probe.execute("INSERT INTO pgqrs_messages (queue_id, payload) "
                                "VALUES (1, '{}')")
            return asyncio.get_running_loop().time() - start

        async def release() -> None:
            await asyncio.sleep(2.5)
            await holder.execute("COMMIT")

        _, waited, _ = await asyncio.gather(migrate_to(empty_dsn, REVISION),
                                            enqueue_meanwhile(), release())
    finally:
        await holder.close()
        await probe.close()
    assert any("lock not available" in r.getMessage() for r in caplog.records)
    assert waited < 1.5  # an enqueue waits at most one lock timeout
    version = await sql(empty_dsn, "SELECT version_num FROM pgqrs_alembic_version")
    assert [r["version_num"] for r in version] == [REVISION]
