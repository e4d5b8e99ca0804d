from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from pgqrs import (
    Admin,
    Producer,
    SchemaNotInstalledError,
    SchemaVersionMismatchError,
    migrate,
)

ROOT = Path(__file__).resolve().parents[2]
ALEMBIC = [sys.executable, "-m", "alembic"]
PGQRS_OBJECTS = {"pgqrs_queues", "pgqrs_workers", "pgqrs_messages", "pgqrs_archive",
                 "pgqrs_schedules", "pgqrs_maintenance", "pgqrs_groups"}


async def fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def tables(dsn: str, schema: str = "public") -> set[str]:
    rows = await fetch(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
    return {r["tablename"] for r in rows}


async def enum_schemas(dsn: str) -> set[str]:
    rows = await fetch(dsn, "SELECT n.nspname FROM pg_type t JOIN pg_namespace n "
                            "ON n.oid = t.typnamespace WHERE t.typname = 'worker_status'")
    return {r["nspname"] for r in rows}


def alembic(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGQRS_DSN": dsn}
    env.pop("DATABASE_URL", None)
    return subprocess.run([*ALEMBIC, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


async def test_alembic_cli_from_repo_root_upgrade_downgrade_upgrade(empty_dsn: str) -> None:
    up = alembic(empty_dsn, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert await tables(empty_dsn) == PGQRS_OBJECTS | {"pgqrs_alembic_version"}
    assert await enum_schemas(empty_dsn) == {"public"}
    check = alembic(empty_dsn, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr
    down = alembic(empty_dsn, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    # Alembic keeps its (now empty) version table; everything of pgqrs's own is gone.
    assert await tables(empty_dsn) == {"pgqrs_alembic_version"}
    assert await enum_schemas(empty_dsn) == set()
    assert await fetch(empty_dsn, "SELECT * FROM pgqrs_alembic_version") == []
    again = alembic(empty_dsn, "upgrade", "head")
    assert again.returncode == 0, again.stderr
    async with Admin(empty_dsn) as admin:
        assert await admin.verify() == migrate.head_revision()


async def test_percent_in_password_and_offline_sql(empty_dsn: str) -> None:
    await fetch(empty_dsn, "CREATE ROLE pct_user LOGIN SUPERUSER PASSWORD 'p%40ss%'")
    dsn = empty_dsn.replace("postgres@", "pct_user:p%2540ss%25@", 1)
    up = alembic(dsn, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    offline = alembic(dsn, "upgrade", "head", "--sql")
    assert offline.returncode == 0, offline.stderr
    assert "CREATE TABLE public.pgqrs_messages" in offline.stdout
    assert "CREATE TYPE public.worker_status" in offline.stdout


def test_lineage_has_one_head_namespaced_ids_and_frozen_revisions() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrate.MIGRATIONS_DIR))
    assert len(script.get_heads()) == 1
    revisions = list(script.walk_revisions())
    assert all(r.revision.startswith("pgqrs_") for r in revisions)
    base = [r for r in revisions if r.down_revision is None]
    assert len(base) == 1 and base[0].branch_labels == {"pgqrs"}
    for path in (migrate.MIGRATIONS_DIR / "versions").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "pgqrs.models" not in imported, path
    assert (ROOT / "alembic" / "script.py.mako").read_text() == (
        migrate.MIGRATIONS_DIR / "script.py.mako").read_text()
    assert not (ROOT / "alembic" / "__init__.py").exists()


async def test_custom_schema_is_isolated_and_usable(empty_dsn: str) -> None:
    async with Admin(empty_dsn, schema="pgqrs_it") as admin:
        await admin.install()
        await admin.create_queue("q")
        assert await admin.verify() == migrate.head_revision()
    assert await tables(empty_dsn, "pgqrs_it") == PGQRS_OBJECTS | {"pgqrs_alembic_version"}
    rows = await fetch(empty_dsn, "SELECT relname FROM pg_class c JOIN pg_namespace n "
                                  "ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
                                  "AND relname LIKE 'pgqrs%'")
    assert rows == []
    assert await enum_schemas(empty_dsn) == {"pgqrs_it"}
    async with Producer(empty_dsn, "q", "h", 1, schema="pgqrs_it") as producer:
        assert await producer.enqueue({"a": 1}) == 1


async def _catalog(dsn: str) -> list[tuple[object, ...]]:
    rows = await fetch(dsn, "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
                            "ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1")
    return [tuple(r) for r in rows]


async def test_install_is_idempotent(empty_dsn: str) -> None:
    async with Admin(empty_dsn) as admin:
        await admin.install()
        before = await _catalog(empty_dsn)
        await admin.install()
        assert await _catalog(empty_dsn) == before
        assert len(await fetch(empty_dsn, "SELECT * FROM pgqrs_alembic_version")) == 1


async def test_concurrent_installs_from_engines_and_processes(empty_dsn: str) -> None:
    admins = [Admin(empty_dsn) for _ in range(5)]
    try:
        await asyncio.gather(*(a.install() for a in admins))
    finally:
        await asyncio.gather(*(a.close() for a in admins))
    env = {**os.environ, "PGQRS_DSN": empty_dsn}
    procs = [subprocess.Popen([sys.executable, "-m", "pgqrs", "install"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    versions = await fetch(empty_dsn, "SELECT version_num FROM pgqrs_alembic_version")
    assert [v["version_num"] for v in versions] == [migrate.head_revision()]


async def test_fresh_schema_concurrent_installs(empty_dsn: str) -> None:
    admins = [Admin(empty_dsn, schema="race") for _ in range(4)]
    try:
        await asyncio.gather(*(a.install() for a in admins))
    finally:
        await asyncio.gather(*(a.close() for a in admins))
    assert await tables(empty_dsn, "race") == PGQRS_OBJECTS | {"pgqrs_alembic_version"}


async def test_host_alembic_version_untouched_and_host_engine_not_disposed(
        empty_dsn: str) -> None:
    await fetch(empty_dsn, "CREATE TABLE alembic_version (version_num varchar(32) primary key)")
    await fetch(empty_dsn, "INSERT INTO alembic_version VALUES ('host_0007')")
    engine = create_async_engine(empty_dsn.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        async with Admin(engine) as admin:
            await admin.install()
        # the host's engine still works after Admin closed
        async with engine.connect() as conn:
            from sqlalchemy import text

            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()
    rows = await fetch(empty_dsn, "SELECT version_num FROM alembic_version")
    assert [r["version_num"] for r in rows] == ["host_0007"]


async def test_failed_install_leaves_nothing_behind(empty_dsn: str) -> None:
    # A conflicting object makes the last CREATE TABLE fail: the whole install rolls back.
    await fetch(empty_dsn, "CREATE TABLE pgqrs_archive (x int)")
    async with Admin(empty_dsn) as admin:
        with pytest.raises(Exception, match="already exists|pgqrs_archive") as info:
            await admin.install()
        assert isinstance(info.value, RuntimeError)
    assert await tables(empty_dsn) == {"pgqrs_archive"}
    assert await enum_schemas(empty_dsn) == set()


async def test_verify_reports_missing_partial_and_unknown(empty_dsn: str) -> None:
    async with Admin(empty_dsn) as admin:
        with pytest.raises(SchemaNotInstalledError, match="pgqrs install"):
            await admin.verify()
        await admin.install()
        assert await admin.verify() == migrate.head_revision()
        await fetch(empty_dsn, "UPDATE pgqrs_alembic_version SET version_num = 'pgqrs_9999'")
        with pytest.raises(SchemaVersionMismatchError, match="newer than the installed pgqrs"):
            await admin.verify()
        await fetch(empty_dsn, "UPDATE pgqrs_alembic_version SET version_num = $1",
                    migrate.head_revision())
        await fetch(empty_dsn, "DROP TABLE pgqrs_archive")
        with pytest.raises(SchemaNotInstalledError, match="partly installed.*pgqrs_archive"):
            await admin.verify()


async def test_operations_on_missing_schema_give_a_typed_error(empty_dsn: str) -> None:
    async with Admin(empty_dsn) as admin:
        with pytest.raises(SchemaNotInstalledError, match="pgqrs install"):
            await admin.create_queue("q")


def test_wheel_ships_the_migrations(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                          "--outdir", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = tmp_path.glob("pgqrs-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "pgqrs/migrations/env.py" in names
    assert "pgqrs/migrations/script.py.mako" in names
    assert "pgqrs/migrations/versions/pgqrs_0001_initial.py" in names
    assert "pgqrs/py.typed" in names
    assert not any(n.startswith("alembic/") for n in names)
