"""Engines and transactions: pgqrs's own engine from a DSN, or the host application's.

A DSN makes pgqrs create (and later dispose) its own engine. A host ``AsyncEngine`` is
shared and never disposed or reconfigured. A lent session or connection is joined as is:
pgqrs never commits, rolls back or closes it.

A Producer's or Consumer's own engine (``generic_plans=True``) sets ``plan_cache_mode =
force_generic_plan`` on each connection it opens (see ``GENERIC_PLANS``).

Clients reach the database through a ``Backend``: ``Database`` here (asyncio, asyncpg), or
the sync facade's ``pgqrs.sync._db.SyncDatabase``, which answers the same calls with the
application's synchronous ``Engine`` so that the one async implementation serves both.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import asyncpg
from sqlalchemy import Connection, Engine, Executable, Result
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from pgqrs import _dsn, errors
from pgqrs.repositories import Executor
from pgqrs.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")


class Backend(Protocol):
    """What a client runs on: ``Database``, or the sync facade's ``SyncDatabase``."""

    settings: Settings
    identity: str
    """Who the database is (URL with password), to share one LISTEN connection per server."""
    background_tasks: bool
    """True if tasks may run between calls (an asyncio application's event loop). False
    for the sync facade, whose loop runs only during a call: its workers beat on use."""

    def transaction(self, lent: Any = None,
                    **context: Any) -> AbstractAsyncContextManager[Executor]:
        """``lent`` as is, or a new transaction that commits on exit."""
        ...

    def statement(self, lent: Any = None) -> AbstractAsyncContextManager[Executor]:
        """An executor for one atomic statement: ``lent`` as is, else autocommit."""
        ...

    def lock(self) -> AbstractAsyncContextManager[Any]:
        """A lock for a client's shared state, right for the way calls run concurrently."""
        ...

    def autocommit(self) -> AbstractAsyncContextManager[Executor]:
        """A connection in autocommit mode for a few statements, given back on exit."""
        ...

    async def run_sync(self, executor: Executor, fn: Callable[Concatenate[Connection, P], T],
                       *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(connection, ...)`` on the synchronous face of ``executor`` (Alembic)."""
        ...

    async def detached_driver_connection(self) -> Any:
        """A connection of its own for LISTEN (asyncio only)."""
        ...

    async def dispose(self) -> None:
        """Free what the backend owns; never what it was lent."""
        ...


class Source(abc.ABC):
    """Stands in for a DSN to give a client another ``Backend`` (the sync facade's)."""

    @abc.abstractmethod
    def open(self, settings: Settings) -> Backend:
        """The backend for a client with ``settings``."""


GENERIC_PLANS = "SET plan_cache_mode = force_generic_plan"
"""Run once on each connection of a Producer's or Consumer's own engine.

PostgreSQL plans a prepared statement anew on every call (a custom plan) while its generic
plan's estimated cost exceeds the custom plans' average. For the claim (``_claim.DEQUEUE``,
the fused statements of ``_acks``; ``NEXT_DUE`` on big queues) that is always: blind to a
parameterised LIMIT (``p_limit``, and the ``LIMIT 1``s SQLAlchemy binds as parameters too),
the generic plan assumes 10% of the rows and is estimated at millions, against ~150. The
plans are the same, so planning every call (0.2-0.5 ms of server time) buys nothing; the claim's
round trip fell from 0.30 to 0.09 ms (``benchmarks/studies/plan_cache.py``). Acks and
enqueues run generic plans anyway. tests/integration/test_claim_plans.py checks the
generic plans of the claim shapes.

Not on a host's engine or lent connection (not pgqrs's to reconfigure), nor Admin's or
Maintenance's (occasional statements), nor with ``pgbouncer=True`` (a session setting does
not stick to a server connection there), nor before PostgreSQL 12. A SET, not a startup
parameter: pgbouncer refuses startup parameters it does not know, even in session mode.
"""


def open_backend(target: str | AsyncEngine | Source, settings: Settings, *,
                 pooled: bool = True, generic_plans: bool = False) -> Backend:
    """The backend for a client's ``dsn`` argument (see ``Database`` for the options).

    Raises:
        ConfigurationError: ``target`` is neither a PostgreSQL DSN nor an ``AsyncEngine``.
    """
    if isinstance(target, Source):
        return target.open(settings)
    return Database(target, settings, pooled=pooled, generic_plans=generic_plans)


def create_engine(dsn: str, settings: Settings, *, pooled: bool = True,
                  generic_plans: bool = False) -> AsyncEngine:
    """Create pgqrs's own engine for ``dsn`` (no I/O happens until first use).

    ``pooled=False`` opens a connection per transaction and keeps none, for clients like
    Admin whose users often never close them (the seed's examples don't).
    ``generic_plans=True`` runs ``GENERIC_PLANS`` on every new connection (not with
    ``settings.pgbouncer``, nor when ``settings.generic_plans`` is off), for the clients
    that run the hot statements.

    Raises:
        ConfigurationError: the DSN is not a PostgreSQL URL.
    """
    parsed = _dsn.parse(dsn)
    connect_timeout = parsed.connect_timeout or settings.connect_timeout
    generic_plans = generic_plans and settings.generic_plans and not settings.pgbouncer

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(
            parsed.libpq_url,
            timeout=connect_timeout,
            command_timeout=settings.statement_timeout,
            # Behind pgbouncer's transaction pooling a named statement may land on another
            # server connection, so prepared statements must not be reused there.
            statement_cache_size=0 if settings.pgbouncer else 256,
        )
        if generic_plans and conn.get_server_version() >= (12,):
            try:
                await conn.execute(GENERIC_PLANS)
            except BaseException:
                conn.terminate()
                raise
        return conn

    def creator() -> Any:
        dbapi: Any = engine.dialect.dbapi
        return dbapi.connect(
            async_creator_fn=connect,
            prepared_statement_cache_size=0 if settings.pgbouncer else 256,
            prepared_statement_name_func=_unique_statement_name if settings.pgbouncer else None,
        )

    pool: dict[str, Any] = (
        {"pool_size": settings.pool_size, "max_overflow": settings.max_overflow,
         "pool_timeout": connect_timeout, "pool_recycle": 3600}
        if pooled else {"poolclass": NullPool}
    )
    engine = create_async_engine("postgresql+asyncpg://", creator=creator, **pool)
    return engine


def _unique_statement_name() -> str:
    return f"__pgqrs_{uuid.uuid4().hex}__"


class DriverConnection:
    """An autocommit pooled connection, plus its asyncpg driver connection for hot paths."""

    def __init__(self, conn: AsyncConnection, driver: Any) -> None:
        self.conn = conn
        self.driver = driver
        self.dialect = conn.dialect
        # ``lost`` runs before every held statement: ask the synchronous connection
        # directly rather than through the async proxy's property chain.
        sync = conn.sync_connection
        self._state: Connection | AsyncConnection = sync if sync is not None else conn

    @classmethod
    async def wrap(cls, conn: AsyncConnection) -> DriverConnection:
        """Wrap ``conn``; the driver fast path is used only with asyncpg."""
        driver = None
        # The compiled statements use $n placeholders (see repositories.Statement.compile).
        if conn.dialect.driver == "asyncpg" and conn.dialect.paramstyle == "numeric_dollar":
            driver = (await conn.get_raw_connection()).driver_connection
        return cls(conn, driver)

    @property
    def lost(self) -> bool:
        """True if the connection was invalidated or its driver connection closed."""
        return self._state.invalidated or (self.driver is not None and self.driver.is_closed())

    async def execute(self, statement: Executable, parameters: Any = None, *,
                      execution_options: Any = None) -> Result[Any]:
        """Run ``statement`` through SQLAlchemy on this connection."""
        return await self.conn.execute(statement, parameters,
                                       execution_options=execution_options)


class _HeldStatement:
    """``Database.statement()`` on the held connection (a pooled one while it is busy).

    A class rather than an ``asynccontextmanager``: this runs around every hot-path call,
    and a generator-based context manager, with an ``asyncio.Lock``, cost several times
    as much. A flag replaces the lock: nothing ever waited on it (a call finding it taken
    borrows a pooled connection instead), and the event loop runs one task at a time.
    """

    __slots__ = ("_borrowed", "_db", "_held")

    def __init__(self, db: Database) -> None:
        self._db = db
        self._held: DriverConnection | None = None
        self._borrowed: AbstractAsyncContextManager[Executor] | None = None

    async def __aenter__(self) -> Executor:
        db = self._db
        if db._held_busy:
            self._borrowed = db._borrowed()
            return await self._borrowed.__aenter__()
        db._held_busy = True
        held = db._held
        if held is None or held.lost:
            try:
                held = await db._take_held()
            except BaseException:
                db._held_busy = False
                raise
        self._held = held
        return held

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        if self._borrowed is not None:
            return await self._borrowed.__aexit__(exc_type, exc, tb)
        db = self._db
        try:
            if exc is None:
                return None
            if not isinstance(exc, errors.PgqrsError) \
                    or isinstance(exc, errors.DatabaseUnavailableError) \
                    or (self._held is not None and self._held.lost):
                # Unreachable, closed, or cancelled mid-statement (the connection's state is
                # unknown): replace it.
                await db._release_held(invalidate=True)
            return None
        finally:
            db._held_busy = False


class Database:
    """The engine a pgqrs client uses, and whether pgqrs owns it."""

    background_tasks = True

    def __init__(self, target: str | AsyncEngine, settings: Settings, *,
                 pooled: bool = True, generic_plans: bool = False) -> None:
        self.settings = settings
        if isinstance(target, AsyncEngine):
            self.engine = target
            self.owned = False
            self.identity = target.url.render_as_string(hide_password=False)
        elif isinstance(target, Engine):
            raise errors.ConfigurationError(
                "pgqrs's async API needs an AsyncEngine (create_async_engine with the asyncpg "
                "driver); for a synchronous Engine use pgqrs.sync"
            )
        elif isinstance(target, str):
            self.engine = create_engine(target, settings, pooled=pooled,
                                        generic_plans=generic_plans)
            self.owned = True
            self.identity = _dsn.parse(target).libpq_url
        else:
            raise errors.ConfigurationError(
                f"Expected a DSN string or an AsyncEngine, got {type(target).__name__}"
            )
        if self.engine.dialect.name != "postgresql":
            raise errors.ConfigurationError(
                f"pgqrs needs PostgreSQL, not {self.engine.dialect.name!r}"
            )
        # A derived view sharing the pool; the host's engine object is not modified.
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._held: DriverConnection | None = None
        self._held_busy = False
        """True while a statement uses ``_held`` (or connects it): others borrow."""

    @contextlib.asynccontextmanager
    async def transaction(
        self, lent: Executor | None = None, **context: Any
    ) -> AsyncIterator[Executor]:
        """Yield ``lent`` as is, or a connection in a new transaction that commits on exit.

        Any database error inside the block surfaces as a pgqrs error.
        """
        if lent is not None:
            if isinstance(lent, AsyncSession | AsyncConnection):
                with errors.translate_db_errors(**context):
                    yield lent
                return
            raise errors.ConfigurationError(
                f"session= must be an AsyncSession and connection= an AsyncConnection, "
                f"got {type(lent).__name__}"
            )
        with errors.translate_db_errors(**context):
            async with self.engine.begin() as conn:
                yield conn

    def statement(self, lent: Executor | None = None) -> AbstractAsyncContextManager[Executor]:
        """An executor for ONE atomic statement: ``lent`` as is, else autocommit.

        A single statement is its own transaction, so skipping BEGIN/COMMIT saves two round
        trips on every hot-path call (enqueue, dequeue, ack). The client keeps one pooled
        connection checked out for these calls (no pool round trip per call); a call made
        while that one is busy (concurrent tasks) borrows another from the pool.
        """
        if lent is not None or self.settings.pgbouncer:
            # Behind pgbouncer's transaction pooling, a statement's protocol messages must
            # stay inside one transaction to stay on one server connection.
            return self.transaction(lent)
        return _HeldStatement(self)

    @contextlib.asynccontextmanager
    async def _borrowed(self) -> AsyncIterator[Executor]:
        """A pooled autocommit connection for one statement, while the held one is busy."""
        with errors.translate_db_errors():
            async with self._autocommit.connect() as conn:
                yield await DriverConnection.wrap(conn)

    async def _take_held(self) -> DriverConnection:
        """The held connection, (re)connected if need be (the caller set ``_held_busy``)."""
        held = self._held
        if held is not None and held.lost:
            # Closed while idle (server restart, idle timeout): reconnect before use,
            # a free "pre-ping" since the driver already noticed.
            await self._release_held(invalidate=True)
            held = None
        if held is None:
            with errors.translate_db_errors():
                conn = self._autocommit.connect()
                await conn.start()
                held = self._held = await DriverConnection.wrap(conn)
        return held

    def lock(self) -> asyncio.Lock:
        """An asyncio lock: a client's calls run as tasks of one event loop."""
        return asyncio.Lock()

    @contextlib.asynccontextmanager
    async def autocommit(self) -> AsyncIterator[Executor]:
        """A pooled connection in autocommit mode, given back on exit (never held).

        For statements that must run outside a transaction (``CREATE INDEX CONCURRENTLY``
        in ``migrate.prepare_sync``).
        """
        with errors.translate_db_errors():
            async with self._autocommit.connect() as conn:
                yield conn

    async def run_sync(self, executor: Executor, fn: Callable[Concatenate[Connection, P], T],
                       *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(connection, ...)`` on the synchronous connection under ``executor``."""
        if isinstance(executor, AsyncSession):
            executor = await executor.connection()
        if not isinstance(executor, AsyncConnection):
            raise TypeError(f"run_sync needs a connection, got {type(executor).__name__}")
        return await executor.run_sync(fn, *args, **kwargs)

    async def _release_held(self, *, invalidate: bool = False) -> None:
        held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(Exception):
                if invalidate:
                    await held.conn.invalidate()
                await held.conn.close()

    async def detached_driver_connection(self) -> Any:
        """A connection taken out of the engine's pool for good (pgqrs closes it itself).

        Used for LISTEN: it keeps every connect option of the engine (SSL, creators, ...)
        and, once detached, no longer counts against the pool.
        """
        pooled = await self.engine.raw_connection()
        driver = pooled.driver_connection  # read it first: detaching drops the record
        pooled.detach()
        return driver

    async def dispose(self) -> None:
        """Return the held connection; dispose the engine if pgqrs created it."""
        await self._release_held()
        if self.owned:
            with contextlib.suppress(Exception):
                await self.engine.dispose()

