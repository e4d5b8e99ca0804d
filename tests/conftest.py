"""Test fixtures: a real PostgreSQL (the given DSN or a throw-away server), a migrated
template database, and a fresh clone of it for every test."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from pgqrs import Admin


def with_database(dsn: str, database: str) -> str:
    """Return ``dsn`` pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


def _plain(dsn: str) -> str:
    return dsn.replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A maintenance DSN: PGQRS_TEST_DSN / DATABASE_URL, else a throw-away server."""
    given = os.environ.get("PGQRS_TEST_DSN") or os.environ.get("DATABASE_URL")
    if given:
        yield _plain(given)
        return
    from pgqrs._ephemeral import EphemeralPostgres

    with EphemeralPostgres() as server:
        print(f"\npgqrs tests: throw-away PostgreSQL {server.version} from {server.bindir}",
              file=sys.stderr)
        yield server.dsn


async def _admin_sql(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _unique(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def template_name(server_dsn: str) -> Iterator[str]:
    """A database with pgqrs installed, used as the template of every test database."""
    name = _unique("pgqrs_tmpl")
    asyncio.run(_admin_sql(server_dsn, f'CREATE DATABASE "{name}"'))

    async def install() -> None:
        async with Admin(with_database(server_dsn, name)) as admin:
            await admin.install()

    asyncio.run(install())
    yield name
    asyncio.run(_admin_sql(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _database(server_dsn: str, template: str | None) -> Iterator[str]:
    name = _unique("pgqrs_t")
    clause = f' TEMPLATE "{template}"' if template else ""
    asyncio.run(_admin_sql(server_dsn, f'CREATE DATABASE "{name}"{clause}'))
    try:
        yield with_database(server_dsn, name)
    finally:
        asyncio.run(_admin_sql(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def dsn(server_dsn: str, template_name: str) -> Iterator[str]:
    """DSN of a fresh database with pgqrs installed (cloned from the template)."""
    yield from _database(server_dsn, template_name)


@pytest.fixture
def empty_dsn(server_dsn: str) -> Iterator[str]:
    """DSN of a fresh, empty database (for install and migration tests)."""
    yield from _database(server_dsn, None)


@pytest.fixture
async def admin(dsn: str) -> AsyncIterator[Admin]:
    async with Admin(dsn) as a:
        yield a


@pytest.fixture
async def queue(admin: Admin) -> str:
    await admin.create_queue("tasks")
    return "tasks"
