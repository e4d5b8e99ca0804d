"""The pgqrs pytest plugin: one PostgreSQL per session, a fresh pgqrs database per test.

Enable it with ``pytest -p pgqrs.testing``, ``addopts = ["-p", "pgqrs.testing"]`` in your
pytest configuration, or ``pytest_plugins = ["pgqrs.testing"]`` in your root
``conftest.py``. pgqrs registers no ``pytest11`` entry point, so the plugin never loads
unless asked for.

Fixtures (all lazy: a test that uses none of them starts nothing):

* ``pgqrs_server_dsn`` (session): a maintenance DSN (``postgresql://``). ``--pgqrs-dsn``,
  else ``PGQRS_TEST_DSN``, else ``DATABASE_URL`` (the role needs ``CREATEDB``); otherwise a
  throw-away server (:class:`~pgqrs.testing.EphemeralPostgres`, configured by
  ``PGQRS_PG_BINDIR``, ``PGQRS_PG_TMPDIR`` and ``PGQRS_PG_USER``) started on first use and
  removed at the end of the session.
* ``pgqrs_schema`` (session): the schema pgqrs is installed in: ``--pgqrs-schema``, else the
  ``pgqrs_schema`` ini option, else ``public``.
* ``pgqrs_template`` (session): DSN of a database with pgqrs installed, the template of every
  ``pgqrs_dsn``. Override it in your conftest (requesting the original) to add your own
  tables once per session.
* ``pgqrs_dsn`` (function): DSN of a fresh clone of the template, dropped after the test.
* ``pgqrs_empty_dsn`` (function): DSN of a fresh, empty database, dropped after the test.
* ``pgqrs_engine`` (function, async): an ``AsyncEngine`` (asyncpg) on ``pgqrs_dsn``,
  disposed after the test. Needs pytest-asyncio.

Database names are ``pgqrs_tmpl_<pid>_<random>`` and ``pgqrs_t_<pid>_<random>``, so parallel
runs (pytest-xdist workers, several checkouts) can share one server.

PYTEST_DONT_REWRITE: this module asserts nothing; the marker keeps pytest from warning when
a host imported it before registering it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import os
import sys
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pgqrs import _dsn
from pgqrs.admin import Admin
from pgqrs.errors import ConfigurationError

from .server import EphemeralPostgres, EphemeralPostgresError

_DSN_VARIABLES = ("PGQRS_TEST_DSN", "DATABASE_URL")
_MAINTENANCE_TIMEOUT = 30.0
_T = TypeVar("_T")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--pgqrs-dsn``, ``--pgqrs-schema`` and the ``pgqrs_schema`` ini option."""
    group = parser.getgroup("pgqrs", "pgqrs test databases (pgqrs.testing)")
    group.addoption(
        "--pgqrs-dsn", dest="pgqrs_dsn", metavar="DSN", default=None,
        help="PostgreSQL server for the pgqrs fixtures (a role with CREATEDB); default: "
             "PGQRS_TEST_DSN, else DATABASE_URL, else a throw-away server",
    )
    group.addoption(
        "--pgqrs-schema", dest="pgqrs_schema", metavar="NAME", default=None,
        help="schema pgqrs is installed in (default: the pgqrs_schema ini option, else public)",
    )
    parser.addini("pgqrs_schema", "schema pgqrs is installed in by the pgqrs fixtures",
                  default="")


# -- helpers ------------------------------------------------------------------------------------


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run maintenance SQL from a synchronous fixture, on a private event loop.

    Not ``asyncio.run``: that would replace the thread's current loop, which
    pytest-asyncio may have set. If a loop is already running in this thread (a fixture
    requested with ``getfixturevalue`` inside an async test), run in another thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
            return runner.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _plain(dsn: str) -> str:
    """``dsn`` with a ``+asyncpg`` driver suffix dropped (libpq form), checked by pgqrs."""
    try:
        _dsn.parse(dsn)
    except ConfigurationError as exc:
        pytest.fail(f"pgqrs.testing: the server DSN is unusable: {exc}", pytrace=False)
    scheme, sep, rest = dsn.strip().partition("://")
    return scheme.split("+", 1)[0] + sep + rest


def _with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database of the same server."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


def _database_of(dsn: str) -> str:
    return unquote(urlsplit(dsn).path.lstrip("/"))


def _ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (a host's template may have any name)."""
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _unique(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


async def _execute(dsn: str, *statements: str) -> None:
    parsed = _dsn.parse(dsn)
    conn = await asyncpg.connect(parsed.libpq_url,
                                 timeout=parsed.connect_timeout or _MAINTENANCE_TIMEOUT)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _create(server_dsn: str, template: str | None, prefix: str = "pgqrs_t") -> str:
    """Create a uniquely named database (a clone of ``template``, if given); its name."""
    name = _unique(prefix)
    statements = []
    if template:
        # CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template (an
        # engine an overriding pgqrs_template left open): end such sessions first, as
        # pytest-postgresql's janitor does. Only our own role's, which needs no privilege.
        statements.append(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = {_literal(template)} AND pid <> pg_backend_pid() "
            "AND usename = current_user"
        )
    clause = f" TEMPLATE {_ident(template)}" if template else ""
    statements.append(f"CREATE DATABASE {_ident(name)}{clause}")
    try:
        _run(_execute(server_dsn, *statements))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"pgqrs.testing: could not create a test database on {_dsn.redact(server_dsn)}: "
            f"{type(exc).__name__}: {exc} (the server must be reachable, PostgreSQL 13 or "
            "later, and the role needs CREATEDB)",
            pytrace=False,
        )
    return name


def _drop(server_dsn: str, name: str) -> None:
    _run(_execute(server_dsn, f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)"))


def _fresh(server_dsn: str, template: str | None) -> Iterator[str]:
    name = _create(server_dsn, template)
    try:
        yield _with_database(server_dsn, name)
    finally:
        _drop(server_dsn, name)


async def _install(dsn: str, schema: str) -> None:
    async with Admin(dsn, schema=schema) as admin:
        await admin.install()


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pgqrs_server_dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    """A maintenance DSN (``postgresql://``) of the server the pgqrs fixtures use.

    ``--pgqrs-dsn``, else ``PGQRS_TEST_DSN``, else ``DATABASE_URL`` (the role needs
    ``CREATEDB``); otherwise a throw-away PostgreSQL started on first use and removed when
    the session ends.
    """
    given = request.config.getoption("pgqrs_dsn") or next(
        (os.environ[name] for name in _DSN_VARIABLES if os.environ.get(name)), None)
    if given:
        yield _plain(given)
        return
    try:
        server = EphemeralPostgres.from_env().start()
    except EphemeralPostgresError as exc:
        pytest.fail(
            f"pgqrs.testing: could not start a throw-away PostgreSQL: {exc}\n"
            "Or use an existing server: --pgqrs-dsn / PGQRS_TEST_DSN (a role with CREATEDB).",
            pytrace=False,
        )
    try:
        print(f"\npgqrs.testing: throw-away PostgreSQL {server.version} from {server.bindir}",
              file=sys.stderr)
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pgqrs_schema(request: pytest.FixtureRequest) -> str:
    """The schema pgqrs is installed in: ``--pgqrs-schema``, ini ``pgqrs_schema``, ``public``.

    Pass it as ``schema=`` to the pgqrs objects your code builds in tests.
    """
    option = request.config.getoption("pgqrs_schema")
    ini = request.config.getini("pgqrs_schema")
    return str(option or ini or "public")


@pytest.fixture(scope="session")
def pgqrs_template(pgqrs_server_dsn: str, pgqrs_schema: str) -> Iterator[str]:
    """DSN of a database with pgqrs installed (``Admin.install``), cloned by ``pgqrs_dsn``.

    Created once per session and dropped at its end. To add your own tables once, override
    it in your ``conftest.py`` with a session fixture of the same name that requests it,
    creates them, closes its connections and returns the DSN.
    """
    name = _create(pgqrs_server_dsn, None, "pgqrs_tmpl")
    try:
        dsn = _with_database(pgqrs_server_dsn, name)
        _run(_install(dsn, pgqrs_schema))
        yield dsn
    finally:
        _drop(pgqrs_server_dsn, name)


@pytest.fixture
def pgqrs_dsn(pgqrs_server_dsn: str, pgqrs_template: str) -> Iterator[str]:
    """DSN of a fresh database with pgqrs installed (a clone of ``pgqrs_template``).

    Dropped after the test (``WITH (FORCE)``, so connections left open do not matter).
    """
    yield from _fresh(pgqrs_server_dsn, _database_of(pgqrs_template))


@pytest.fixture
def pgqrs_empty_dsn(pgqrs_server_dsn: str) -> Iterator[str]:
    """DSN of a fresh, empty database (for install and migration tests), dropped after."""
    yield from _fresh(pgqrs_server_dsn, None)


async def _pgqrs_engine(pgqrs_dsn: str) -> AsyncIterator[AsyncEngine]:
    """An ``AsyncEngine`` (asyncpg) on ``pgqrs_dsn``, disposed after the test.

    Share it with your code and with ``Producer``/``Consumer``/``Admin`` as you would in
    production; its event loop is the test's.
    """
    engine = create_async_engine(make_url(pgqrs_dsn).set(drivername="postgresql+asyncpg"))
    try:
        yield engine
    finally:
        await engine.dispose()


def _pgqrs_engine_unavailable() -> None:
    """An ``AsyncEngine`` on ``pgqrs_dsn``; needs pytest-asyncio, which is not installed."""
    pytest.fail("pgqrs.testing: the pgqrs_engine fixture is async and needs pytest-asyncio "
                "(pip install pytest-asyncio)", pytrace=False)


pgqrs_engine: Any
if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    pgqrs_engine = pytest_asyncio.fixture(_pgqrs_engine, name="pgqrs_engine")
else:  # pragma: no cover - pgqrs's own tests always have pytest-asyncio
    pgqrs_engine = pytest.fixture(_pgqrs_engine_unavailable, name="pgqrs_engine")
