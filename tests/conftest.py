"""Test fixtures: pgqrs's own pytest plugin (``pgqrs.testing``), under the names the suite uses.

The plugin gives the server (``PGQRS_TEST_DSN`` / ``DATABASE_URL``, else a throw-away
one), a template database with pgqrs installed, and a fresh clone of it for every test. The
fixtures below are thin aliases, so the suite exercises exactly what host applications get.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import unquote, urlsplit

import pytest

from pgqrs import Admin

# Registered here, not through an entry point: see pgqrs/testing/plugin.py.
pytest_plugins = ["pgqrs.testing"]


@pytest.fixture(scope="session")
def server_dsn(pgqrs_server_dsn: str) -> str:
    """A maintenance DSN: PGQRS_TEST_DSN / DATABASE_URL, else a throw-away server."""
    return pgqrs_server_dsn


@pytest.fixture(scope="session")
def template_name(pgqrs_template: str) -> str:
    """Name of the database with pgqrs installed that every test database is cloned from."""
    return unquote(urlsplit(pgqrs_template).path.lstrip("/"))


@pytest.fixture
def dsn(pgqrs_dsn: str) -> str:
    """DSN of a fresh database with pgqrs installed (cloned from the template)."""
    return pgqrs_dsn


@pytest.fixture
def empty_dsn(pgqrs_empty_dsn: str) -> str:
    """DSN of a fresh, empty database (for install and migration tests)."""
    return pgqrs_empty_dsn


@pytest.fixture
async def admin(dsn: str) -> AsyncIterator[Admin]:
    async with Admin(dsn) as a:
        yield a


@pytest.fixture
async def queue(admin: Admin) -> str:
    await admin.create_queue("tasks")
    return "tasks"
