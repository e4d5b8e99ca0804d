"""The sync facade's backend: the async core's database calls, answered synchronously.

``SyncDatabase`` has the interface of ``pgqrs._db.Database``; its executors' ``execute``
is a coroutine that runs the statement on the application's synchronous ``Connection``
or ``Session`` and returns at once. The async clients run on it unchanged, their
coroutines driven by a real event loop (``_loop``), so a core that one day awaits
something else (a sleep, a lock) still works here.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, Executable, Result
from sqlalchemy.orm import Session

from pgqrs import _db, errors
from pgqrs.repositories import Executor
from pgqrs.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")


class SyncExecutor:
    """An executor for the repositories, on a synchronous connection or session."""

    driver = None  # never the asyncpg fast path

    def __init__(self, target: Connection | Session) -> None:
        self.target = target

    async def execute(self, statement: Executable, parameters: Mapping[str, Any] | None = None,
                      *, execution_options: Mapping[str, Any] | None = None) -> Result[Any]:
        """Run ``statement`` on the synchronous target (blocking; nothing else runs)."""
        return self.target.execute(statement, parameters,
                                   execution_options=execution_options or {})

    def connection(self) -> Connection:
        """The connection under the target (a session's, inside its transaction)."""
        if isinstance(self.target, Session):
            return self.target.connection()
        return self.target


class ThreadLock:
    """A ``threading.Lock`` used with ``async with``: sync calls run in parallel threads.

    Acquiring blocks the calling thread. That is safe here because each thread runs its
    own event loop, one call at a time, and nothing under the lock suspends for another
    task of that loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    async def __aenter__(self) -> None:
        self._lock.acquire()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._lock.release()


class SyncDatabase:
    """The application's synchronous ``Engine`` behind the ``Backend`` interface.

    The engine is the application's: pgqrs never disposes or reconfigures it, and a lent
    ``Session``/``Connection`` is joined, never committed, rolled back or closed.
    """

    background_tasks = False

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.identity = engine.url.render_as_string(hide_password=False)
        # A derived view sharing the pool; the application's engine is not modified.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @contextlib.asynccontextmanager
    async def transaction(self, lent: Any = None, **context: Any) -> AsyncIterator[Executor]:
        """Yield ``lent`` as is, or a connection in a new transaction that commits on exit."""
        if lent is not None:
            if not isinstance(lent, Session | Connection):
                raise errors.ConfigurationError(
                    f"session= must be a Session and connection= a Connection, "
                    f"got {type(lent).__name__}"
                )
            with errors.translate_db_errors(**context):
                yield SyncExecutor(lent)
            return
        with errors.translate_db_errors(**context), self.engine.begin() as conn:
            yield SyncExecutor(conn)

    @contextlib.asynccontextmanager
    async def statement(self, lent: Any = None) -> AsyncIterator[Executor]:
        """Yield an executor for ONE atomic statement: ``lent`` as is, else autocommit.

        As in ``Database.statement``: a single statement is its own transaction, so its
        BEGIN and COMMIT round trips are skipped (not behind pgbouncer).
        """
        if lent is not None or self.settings.pgbouncer:
            async with self.transaction(lent) as executor:
                yield executor
            return
        with errors.translate_db_errors(), self._autocommit.connect() as conn:
            yield SyncExecutor(conn)

    @contextlib.asynccontextmanager
    async def autocommit(self) -> AsyncIterator[Executor]:
        """A connection in autocommit mode, given back on exit (as ``Database.autocommit``)."""
        with errors.translate_db_errors(), self._autocommit.connect() as conn:
            yield SyncExecutor(conn)

    def lock(self) -> ThreadLock:
        """A thread lock: one sync client may be shared by the threads of a web server."""
        return ThreadLock()

    async def run_sync(self, executor: Executor, fn: Callable[Concatenate[Connection, P], T],
                       *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(connection, ...)`` on the connection under ``executor``."""
        if not isinstance(executor, SyncExecutor):
            raise TypeError(f"run_sync needs a sync executor, got {type(executor).__name__}")
        return fn(executor.connection(), *args, **kwargs)

    async def detached_driver_connection(self) -> Any:
        """Not available: LISTEN needs pgqrs's asyncio API."""
        raise errors.ConfigurationError(
            "waiting for messages (LISTEN) needs the async API: use pgqrs.Consumer"
        )

    async def dispose(self) -> None:
        """Nothing to free: the engine is the application's."""


class EngineSource(_db.Source):
    """Passed to an async client in place of a DSN: run it on ``SyncDatabase``."""

    def __init__(self, engine: Engine) -> None:
        if not isinstance(engine, Engine):
            raise errors.ConfigurationError(
                f"pgqrs.sync needs a synchronous SQLAlchemy Engine, got {type(engine).__name__}"
                " (use the async classes in pgqrs for an AsyncEngine)"
            )
        if engine.dialect.name != "postgresql":
            raise errors.ConfigurationError(f"pgqrs needs PostgreSQL, not {engine.dialect.name}")
        self.engine = engine

    def open(self, settings: Settings) -> SyncDatabase:
        """A ``SyncDatabase`` on the engine."""
        return SyncDatabase(self.engine, settings)


def as_dsn(engine: Engine) -> Any:
    """``engine`` as the ``dsn`` argument of an async client.

    That parameter is typed ``str | AsyncEngine`` for users; the facade is the one caller
    that passes a ``Source`` instead (checked by ``open_backend``).
    """
    return EngineSource(engine)


def lent(value: Session | Connection | None) -> Any:
    """A lent ``Session``/``Connection`` for the async core's ``session=``/``connection=``.

    Those parameters are typed for asyncio; ``SyncDatabase`` checks the synchronous types.
    """
    return value
