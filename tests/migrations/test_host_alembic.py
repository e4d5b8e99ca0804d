"""pgqrs next to a host application's own Alembic history: modes A, B and C."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg

from pgqrs import Admin, migrate

HOST_APP = Path(__file__).with_name("host_app")


def host_project(tmp_path: Path) -> Path:
    project = tmp_path / "host"
    shutil.copytree(HOST_APP, project)
    return project


def alembic(project: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOST_DSN": dsn, "PGQRS_DSN": dsn}
    env.pop("DATABASE_URL", None)
    result = subprocess.run([sys.executable, "-m", "alembic", *args], cwd=project, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


async def versions(dsn: str, table: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return sorted(r[0] for r in await conn.fetch(f"SELECT version_num FROM {table}"))
    finally:
        await conn.close()


async def test_mode_a_install_beside_host_history_and_autogenerate_stays_empty(
        tmp_path: Path, empty_dsn: str) -> None:
    project = host_project(tmp_path)
    alembic(project, empty_dsn, "upgrade", "head")
    async with Admin(empty_dsn) as admin:
        await admin.install()
    assert await versions(empty_dsn, "alembic_version") == ["host_0001"]
    assert await versions(empty_dsn, "pgqrs_alembic_version") == [migrate.head_revision()]

    # With pgqrs.migrate.include_name the host's autogenerate sees nothing to do...
    alembic(project, empty_dsn, "revision", "--autogenerate", "--rev-id", "host_9", "-m", "x")
    revision_file = project / "host_migrations" / "versions" / "host_9_x.py"
    generated = revision_file.read_text()
    assert "op.drop_table" not in generated and "op.create_table" not in generated
    revision_file.unlink()
    # ...and without it, it would propose dropping pgqrs (which is why the filter exists).
    alembic(project, empty_dsn, "-x", "filter=off", "revision", "--autogenerate",
            "--rev-id", "host_10", "-m", "y")
    unfiltered = (project / "host_migrations" / "versions" / "host_10_y.py").read_text()
    assert "op.drop_table('pgqrs_messages')" in unfiltered


async def test_mode_b_pgqrs_section_in_host_ini(tmp_path: Path, empty_dsn: str) -> None:
    project = host_project(tmp_path)
    alembic(project, empty_dsn, "upgrade", "head")
    alembic(project, empty_dsn, "--name", "pgqrs", "upgrade", "head")
    assert await versions(empty_dsn, "alembic_version") == ["host_0001"]
    assert await versions(empty_dsn, "pgqrs_alembic_version") == [migrate.head_revision()]
    async with Admin(empty_dsn) as admin:
        await admin.install()  # already at head: a no-op
        assert await admin.verify() == migrate.head_revision()
    sql = alembic(project, empty_dsn, "--name", "pgqrs", "upgrade", "head", "--sql").stdout
    assert "CREATE TABLE public.pgqrs_queues" in sql


async def test_mode_c_multiple_bases_in_the_host_version_table(tmp_path: Path,
                                                               empty_dsn: str) -> None:
    project = host_project(tmp_path)
    shutil.move(project / "host_0002_order_queue.py.mode_c",
                project / "host_migrations" / "versions" / "host_0002_order_queue.py")
    ini = project / "alembic.ini"
    pgqrs_versions = str(migrate.MIGRATIONS_DIR / "versions").replace("%", "%%")
    ini.write_text(ini.read_text().replace(
        "script_location = %(here)s/host_migrations\n",
        "script_location = %(here)s/host_migrations\n"
        f"version_locations = %(here)s/host_migrations/versions{os.pathsep}{pgqrs_versions}\n",
        1))
    alembic(project, empty_dsn, "upgrade", "heads")
    # host_0002 depends on pgqrs_0001, not on pgqrs's later revisions: the table records
    # both heads, the host's and pgqrs's.
    head = migrate.head_revision()
    assert head != "pgqrs_0001"
    assert await versions(empty_dsn, "alembic_version") == ["host_0002", head]
    history = alembic(project, empty_dsn, "heads").stdout
    assert "host_0002" in history and head in history
    conn = await asyncpg.connect(empty_dsn)
    try:
        fk = await conn.fetchval("SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
                                 "AND conrelid = 'orders'::regclass")
        assert fk == 1
        assert await conn.fetchval("SELECT to_regclass('pgqrs_alembic_version')") is None
        assert await conn.fetchval("SELECT to_regclass('pgqrs_messages')") is not None
        # pgqrs_0002 ran through the host's env too (its lock-timeout retry included).
        assert await conn.fetchval(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = "
            "'pgqrs_queues' AND column_name IN ('max_read_ct', 'paused')") == 2
    finally:
        await conn.close()
